"""A toy setup that needs no download: tiny random CLIP and XLM-R checkpoints and a multilingual shapes dataset.

It lets both stages run end to end on a CPU in seconds (the README's tiny run, the tests). The images are
drawn here (coloured circles, squares, triangles); the captions exist in five languages; the student uses
XLM-R's real tokenizer, the tiny CLIP teacher a word-level tokenizer over the English captions.
"""

import argparse
import json
import random
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaModel,
)

from altclip.common.cli_errors import one_line_parser_errors
from altclip.common.constants import CLIP_CONTEXT_LENGTH
from altclip.common.records import write_jsonl
from modeling_altclip.assets import load_xlmr_tokenizer

IMAGE_SIZE = 32
COLORS = {  # English, German (masc., neut.), French, Spanish, Chinese, RGB
    "red": ("roter", "rotes", "rouge", "rojo", "红色", (220, 30, 30)),
    "green": ("grüner", "grünes", "vert", "verde", "绿色", (30, 170, 60)),
    "blue": ("blauer", "blaues", "bleu", "azul", "蓝色", (30, 70, 220)),
    "yellow": ("gelber", "gelbes", "jaune", "amarillo", "黄色", (240, 210, 30)),
    "purple": ("lila", "lila", "violet", "morado", "紫色", (140, 50, 170)),
    "black": ("schwarzer", "schwarzes", "noir", "negro", "黑色", (20, 20, 20)),
}
SHAPES = {  # English, German noun and gender, French, Spanish, Chinese
    "circle": ("Kreis", "m", "cercle", "círculo", "圆形"),
    "square": ("Quadrat", "n", "carré", "cuadrado", "正方形"),
    "triangle": ("Dreieck", "n", "triangle", "triángulo", "三角形"),
}
LANGUAGES = ("en", "de", "fr", "es", "zh")


def caption(color: str, shape: str, language: str) -> str:
    """'a red circle' in one of `LANGUAGES`."""
    de_masc, de_neut, fr, es, zh, _ = COLORS[color]
    de_noun, gender, fr_noun, es_noun, zh_noun = SHAPES[shape]
    return {
        "en": f"a {color} {shape}",
        "de": f"ein {de_masc if gender == 'm' else de_neut} {de_noun}",
        "fr": f"un {fr_noun} {fr}",
        "es": f"un {es_noun} {es}",
        "zh": f"一个{zh}的{zh_noun}",
    }[language]


def draw_shape(color: str, shape: str, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """One coloured shape at a random place and size on a light background."""
    background = tuple(rng.randint(215, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    extent = rng.randint(size // 2, size - 4)
    left, top = rng.randint(0, size - extent), rng.randint(0, size - extent)
    box = (left, top, left + extent, top + extent)
    fill = COLORS[color][5]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(left + extent / 2, top), (left, top + extent), (left + extent, top + extent)], fill=fill)
    return image


def write_shapes_dataset(folder: str | Path, images_per_class: int = 4, seed: int = 0) -> dict[str, Path]:
    """Writes ``parallel.jsonl`` (english, translation, language), ``images/*.png`` and ``captions.jsonl``
    (image, caption, language: every image captioned once per language)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    parallel, captions = [], []
    for color in COLORS:
        for shape in SHAPES:
            english = caption(color, shape, "en")
            parallel += [
                {"english": english, "translation": caption(color, shape, lang), "language": lang}
                for lang in LANGUAGES
                if lang != "en"
            ]
            for number in range(images_per_class):
                name = f"images/{color}_{shape}_{number}.png"
                draw_shape(color, shape, rng).save(folder / name)
                captions += [
                    {"image": name, "caption": caption(color, shape, lang), "language": lang} for lang in LANGUAGES
                ]
    return {
        "parallel": write_jsonl(folder / "parallel.jsonl", parallel),
        "captions": write_jsonl(folder / "captions.jsonl", captions),
        "shards": write_caption_shards(folder, captions, folder / "shards"),
    }


def write_caption_shards(root: Path, captions: list[dict], folder: Path, shards: int = 8) -> Path:
    """The image-caption pairs as webdataset shards (``shard-NNNN.tar``: ``key.png`` + ``key.txt``, written by
    webdataset's TarWriter) with the ``sizes.json`` that lets every rank plan an epoch; returns the brace spec."""
    import webdataset

    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for shard in range(shards):
        name = f"shard-{shard:04d}.tar"
        rows = captions[shard::shards]
        with webdataset.TarWriter(str(folder / name)) as writer:
            for number, row in enumerate(rows):
                key = f"{shard:04d}{number:05d}"
                writer.write({"__key__": key, "png": (root / row["image"]).read_bytes(), "txt": row["caption"]})
        sizes[name] = len(rows)
    (folder / "sizes.json").write_text(json.dumps(sizes, indent=1))
    return Path(f"{folder}/shard-{{0000..{shards - 1:04d}}}.tar")


def english_word_tokenizer(texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over English `texts` (default: the toy captions), standing in for CLIP's BPE in a
    teacher trained from scratch."""
    if texts is None:
        texts = [caption(color, shape, "en") for color in COLORS for shape in SHAPES]
    split = pre_tokenizers.Whitespace().pre_tokenize_str
    words = sorted({word for text in texts for word, _ in split(text.lower())})
    vocabulary = {"<pad>": 0, "<unk>": 1, **{word: index + 2 for index, word in enumerate(words)}}
    vocabulary["<|startoftext|>"] = len(vocabulary)
    vocabulary["<|endoftext|>"] = len(vocabulary)
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[(token, vocabulary[token]) for token in ("<|startoftext|>", "<|endoftext|>")],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=CLIP_CONTEXT_LENGTH,
    )


def write_tiny_clip(
    folder: str | Path,
    seed: int = 0,
    text_width: int = 32,
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    vision_width: int = 32,
    layers: int = 2,
    image_size: int = IMAGE_SIZE,
    projection_dim: int = 16,
) -> Path:
    """A small random CLIP (ViT, patch 8) with its tokenizer (default: the toy word-level one) and image
    processor."""
    torch.manual_seed(seed)
    tokenizer = tokenizer or english_word_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=text_width,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=2 * text_width,
            max_position_embeddings=CLIP_CONTEXT_LENGTH,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=2 * vision_width,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=projection_dim,
    )
    folder = Path(folder)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)
    return folder


def write_tiny_xlmr(folder: str | Path, seed: int = 0, width: int = 32, layers: int = 2) -> Path:
    """A small random XLM-R encoder over XLM-R's real 250,002-piece vocabulary, with that tokenizer."""
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=250002,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * width,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
    )
    folder = Path(folder)
    XLMRobertaModel(config).save_pretrained(folder)
    load_xlmr_tokenizer().save_pretrained(folder)
    return folder


def write_toy_setup(folder: str | Path, images_per_class: int = 4, seed: int = 0) -> dict[str, Path]:
    """Everything the tiny CPU run needs under `folder`: clip/, xlmr/ and data/."""
    folder = Path(folder)
    return {
        "clip": write_tiny_clip(folder / "clip", seed),
        "xlmr": write_tiny_xlmr(folder / "xlmr", seed + 1),
        **write_shapes_dataset(folder / "data", images_per_class, seed),
    }


def toy_setup_main(argv: list[str]) -> None:
    """``altclip-train toy-setup [FOLDER]``: writes the toy and prints what it wrote (``--help`` is help, not a
    folder name; a flag it does not know is one line)."""
    parser = argparse.ArgumentParser(
        prog="altclip-train toy-setup",
        description="Write tiny random CLIP and XLM-R checkpoints and a multilingual shapes dataset for a CPU run.",
    )
    parser.add_argument("folder", nargs="?", default="outputs/toy", help="where to write them (default outputs/toy)")
    one_line_parser_errors(parser, parser.prog)
    args = parser.parse_args(argv)
    for name, path in write_toy_setup(args.folder).items():
        print(f"{name}: {path}")
