"""Parallel-text and image-caption datasets, streaming readers, collators: what is kept, skipped and counted."""

import io
import json
import tarfile

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from training.image_text_data import ContrastiveCollator, ImageTextDataset, StreamingImageTextDataset
from training.records import DataFormatError, Skipped
from training.text_data import DistillationCollator, ParallelTextDataset, StreamingParallelText


@pytest.fixture(scope="module")
def image_processor():
    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def write_jsonl(path, rows):
    path.write_text(
        "".join((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n" for row in rows)
    )
    return path


def png_bytes(mode="RGB", size=(40, 30)):
    buffer = io.BytesIO()
    Image.new(mode, size, 120).save(buffer, format="PNG")
    return buffer.getvalue()


def test_parallel_text_keeps_one_english_pair_per_sentence_and_counts_skips(tmp_path):
    de = write_jsonl(
        tmp_path / "de.jsonl",
        [{"english": "a cat", "translation": "eine Katze"}, {"english": "a dog", "translation": ""}, "{broken"],
    )
    fr = write_jsonl(tmp_path / "fr.jsonl", [{"english": "a cat", "translation": "un chat"}])
    dataset = ParallelTextDataset([str(de), str(fr)])
    rows = [dataset[i] for i in range(len(dataset))]
    students = sorted(row["student_text"] for row in rows)
    assert students == ["a cat", "eine Katze", "un chat"]
    assert all(row["teacher_text"] == "a cat" for row in rows)
    assert dataset.skipped.by_reason == {"empty translation": 1, "not valid JSON": 1}
    assert dataset.english_texts[rows[0]["teacher_index"]] == "a cat"


def test_parallel_text_without_english_pairs(tmp_path):
    path = write_jsonl(tmp_path / "de.jsonl", [{"english": "a cat", "translation": "eine Katze"}])
    dataset = ParallelTextDataset([str(path)], include_english_pairs=False)
    assert [dataset[i]["student_text"] for i in range(len(dataset))] == ["eine Katze"]


def test_a_file_without_usable_pairs_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [{"english": "a", "translation": " "}])
    with pytest.raises(ValueError, match="empty.jsonl holds no usable"):
        ParallelTextDataset([str(path)])


def test_streaming_parallel_text_yields_the_same_rows_as_in_memory(tmp_path):
    rows = [{"english": f"sentence {i}", "translation": f"Satz {i}"} for i in range(7)]
    path = write_jsonl(tmp_path / "de.jsonl", rows + ["{broken"])
    streamed = list(StreamingParallelText([str(path)]))
    assert sum("skipped" in row for row in streamed) == 1
    kept = sorted(row["student_text"] for row in streamed if "skipped" not in row)
    in_memory = ParallelTextDataset([str(path)])
    assert kept == sorted(in_memory[i]["student_text"] for i in range(len(in_memory)))


def test_streaming_reader_checks_columns_before_training(tmp_path):
    path = write_jsonl(tmp_path / "de.jsonl", [{"en": "a cat", "de": "eine Katze"}])
    with pytest.raises(DataFormatError, match=r"de\.jsonl:1: missing column\(s\) english, translation"):
        StreamingParallelText([str(path)])


def test_distillation_collator_tokenizes_for_both_towers_and_passes_skips_on(xlmr_tokenizer):
    teacher_tokenizer = xlmr_tokenizer  # any tokenizer serves here
    collator = DistillationCollator(xlmr_tokenizer, teacher_tokenizer, max_length=8)
    skipped = Skipped("f:3", "empty translation")
    batch = collator(
        [
            {"student_text": "eine Katze", "teacher_text": "a cat"},
            {"skipped": skipped},
            {"student_text": "a cat " * 20, "teacher_text": "a cat"},
        ]
    )
    assert batch["input_ids"].shape == (2, 8) and batch["skipped"] == [skipped]
    assert batch["teacher_input_ids"].shape[0] == 2
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    cached = DistillationCollator(xlmr_tokenizer, None, teacher_features=features)(
        [{"student_text": "x", "teacher_text": "y", "teacher_index": 2}]
    )
    assert torch.equal(cached["teacher_features"], torch.tensor([[8.0, 9, 10, 11]]))
    with pytest.raises(ValueError, match="Every row of a batch was unusable, e.g. f:3: empty translation"):
        collator([{"skipped": skipped}])


def test_bad_images_and_empty_captions_are_skipped_not_fatal(tmp_path, image_processor, xlmr_tokenizer):
    (tmp_path / "ok.png").write_bytes(png_bytes())
    (tmp_path / "grey.png").write_bytes(png_bytes("L"))
    (tmp_path / "alpha.png").write_bytes(png_bytes("RGBA"))
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    table = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"image": "ok.png", "caption": "a grey square"},
            {"image": "grey.png", "caption": "ein graues Quadrat"},
            {"image": "alpha.png", "caption": "un carré gris"},
            {"image": "corrupt.png", "caption": "broken"},
            {"image": "missing.png", "caption": "missing"},
            {"image": "ok.png", "caption": ""},
        ],
    )
    dataset = ImageTextDataset([str(table)], image_processor)
    rows = [dataset[i] for i in range(len(dataset))]
    reasons = [row["skipped"].reason.split(" (")[0] for row in rows if "skipped" in row]
    assert sorted(reasons) == ["empty caption", "image file not found", "unreadable image"]
    batch = ContrastiveCollator(xlmr_tokenizer)(rows)
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["input_ids"].shape[0] == 3
    assert len(batch["skipped"]) == 3 and batch["skipped"][0].where.startswith(str(table))


def write_shard(path, samples):
    with tarfile.open(path, "w") as archive:
        for name, payload in samples:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def test_webdataset_shards_stream_with_txt_or_json_captions(tmp_path, image_processor):
    shard = write_shard(
        tmp_path / "shard-0.tar",
        [
            ("0001.jpg", png_bytes()),
            ("0001.txt", "一只猫".encode()),
            ("0002.png", png_bytes()),
            ("0002.json", json.dumps({"caption": "a dog"}).encode()),
            ("0003.txt", b"no image here"),
            ("0004.jpg", b"corrupt"),
            ("0004.txt", b"broken image"),
            ("0005.jpg", png_bytes()),
        ],
    )
    rows = list(StreamingImageTextDataset([str(shard)], image_processor))
    kept = [row["caption"] for row in rows if "skipped" not in row]
    assert kept == ["一只猫", "a dog"]
    reasons = sorted(row["skipped"].reason.split(" (")[0] for row in rows if "skipped" in row)
    assert reasons == ["no caption", "no image among ['txt']", "unreadable image"]


def test_tar_shards_need_streaming(tmp_path, image_processor):
    shard = write_shard(tmp_path / "s.tar", [("1.jpg", png_bytes()), ("1.txt", b"x")])
    with pytest.raises(DataFormatError, match="pass --streaming true"):
        ImageTextDataset([str(shard)], image_processor)


def test_saved_dataset_with_an_image_column(tmp_path, image_processor):
    images = [Image.new("RGB", (40, 30), color) for color in ("red", "blue")]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": images, "caption": ["rot", "bleu"]}, features=features).save_to_disk(
        str(tmp_path / "saved")
    )
    dataset = ImageTextDataset([str(tmp_path / "saved")], image_processor)
    rows = [dataset[i] for i in range(len(dataset))]
    assert [row["caption"] for row in rows] == ["rot", "bleu"]
    assert rows[0]["pixel_values"][0].mean() > rows[1]["pixel_values"][0].mean()  # red has more red than blue


def test_relative_image_paths_can_start_from_an_image_root(tmp_path, image_processor):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png_bytes())
    table = write_jsonl(tmp_path / "pairs.jsonl", [{"img": "a.png", "text": "x"}])
    dataset = ImageTextDataset(
        [str(table)], image_processor, image_column="img", caption_column="text", image_root=str(tmp_path / "pics")
    )
    assert "pixel_values" in dataset[0]
