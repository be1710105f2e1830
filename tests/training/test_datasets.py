"""Parallel-text and image-caption datasets, shard streams, sources, collators: what is kept, skipped and counted."""

import io
import json
import tarfile

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from altclip.common.records import DataFormatError, Skipped
from altclip.training.data.image_text_data import ContrastiveCollator, ImageTextTable, PairDecoder, decode_shard_sample
from altclip.training.data.shard_stream import ShardStream
from altclip.training.data.sources import parse_source, parse_sources
from altclip.training.data.text_data import DistillationCollator, ParallelText


def parallel_text(paths, **kwargs):
    return ParallelText(parse_sources([str(path) for path in paths]), **kwargs)


def image_text_table(paths, image_processor, **kwargs):
    return ImageTextTable(parse_sources([str(path) for path in paths]), image_processor, **kwargs)


def stream_rows(specs, image_processor, **kwargs):
    """Every row of one pass over a shard stream (one reader, batches of 4)."""
    decode = PairDecoder(image_processor)
    stream = ShardStream(parse_sources(specs), lambda raw: decode_shard_sample(raw, decode), batch_size=4, **kwargs)
    return [row for batch in stream for row in batch]


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


def test_parallel_text_keeps_one_english_pair_per_sentence_and_marks_bad_lines(tmp_path):
    de = write_jsonl(
        tmp_path / "de.jsonl",
        [{"english": "a cat", "translation": "eine Katze"}, {"english": "a dog", "translation": ""}, "{broken"],
    )
    fr = write_jsonl(tmp_path / "fr.jsonl", [{"english": " a cat", "translation": "un chat"}])
    dataset = parallel_text([de, fr])
    rows = [dataset[i] for i in range(len(dataset))]
    students = sorted(row["student_text"] for row in rows if "skipped" not in row)
    assert students == ["a cat", "eine Katze", "un chat"]
    assert all(row["teacher_text"] == "a cat" for row in rows if "skipped" not in row)
    skipped = {row["skipped"].where: row["skipped"].reason.split(" (")[0] for row in rows if "skipped" in row}
    assert skipped == {f"{de}:2": "empty translation", f"{de}:3": "not valid JSON"}
    assert dataset.english_texts[rows[0]["teacher_index"]] == "a cat" and len(dataset.english_texts) == 1


def test_parallel_text_without_english_pairs(tmp_path):
    path = write_jsonl(tmp_path / "de.jsonl", [{"english": "a cat", "translation": "eine Katze"}])
    dataset = parallel_text([path], include_english_pairs=False)
    assert [dataset[i]["student_text"] for i in range(len(dataset))] == ["eine Katze"]


def test_invalid_utf8_and_wrong_types_are_skipped_with_their_line(tmp_path):
    path = tmp_path / "de.jsonl"
    path.write_bytes(
        b'{"english": "a cat", "translation": "eine Katze"}\n'
        b'{"english": "a dog", "translation": "ein Hund \xff"}\n'
        b'{"english": 3, "translation": "drei"}\n'
        b"[1, 2]\n"
    )
    dataset = parallel_text([path], include_english_pairs=False)
    reasons = [dataset[i].get("skipped") for i in range(len(dataset))]
    assert reasons[0] is None
    assert [(s.where, s.reason) for s in reasons[1:]] == [
        (f"{path}:2", "not UTF-8 text"),
        (f"{path}:3", "english is int, not text"),
        (f"{path}:4", "a JSON list, not an object"),
    ]


def test_csv_tsv_and_parquet_tables(tmp_path):
    (tmp_path / "a.csv").write_text("english,translation\na cat,eine Katze\n", encoding="utf-8")
    (tmp_path / "b.tsv").write_text("english\ttranslation\na dog\tun chien\nbroken\n", encoding="utf-8")
    datasets.Dataset.from_dict({"english": ["a fish"], "translation": ["un pez"]}).to_parquet(tmp_path / "c.parquet")
    dataset = parallel_text(
        [tmp_path / "a.csv", tmp_path / "b.tsv", tmp_path / "c.parquet"], include_english_pairs=False
    )
    rows = [dataset[i] for i in range(len(dataset))]
    assert [row.get("student_text") for row in rows] == ["eine Katze", "un chien", None, "un pez"]
    assert rows[2]["skipped"].where == f"{tmp_path / 'b.tsv'}:3"


def test_tables_starting_with_a_byte_order_mark(tmp_path):
    """The header check and the row reader skip a UTF-8 BOM (it made the first column 'missing')."""
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbfenglish,translation\na cat,eine Katze\n")
    (tmp_path / "b.jsonl").write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"english": "a dog", "translation": "un chien"}).encode()
    )
    dataset = parallel_text([tmp_path / "a.csv", tmp_path / "b.jsonl"], include_english_pairs=False)
    assert [dataset[i].get("student_text") for i in range(len(dataset))] == ["eine Katze", "un chien"]


def test_tables_are_checked_for_columns_before_training(tmp_path):
    path = write_jsonl(tmp_path / "de.jsonl", [{"en": "a cat", "de": "eine Katze"}])
    with pytest.raises(DataFormatError, match=r"de\.jsonl:1: missing column\(s\) english, translation"):
        parallel_text([path])
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("en,de\na,b\n")
    with pytest.raises(DataFormatError, match=r"x\.csv:1: the header lacks column\(s\) english, translation"):
        parallel_text([csv_path])


def test_a_table_without_a_usable_pair_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [{"english": " ", "translation": "x"}, "{broken"])
    with pytest.raises(DataFormatError, match="empty.jsonl holds no usable"):
        parallel_text([path])


def test_sources_expand_braces_globs_and_folders_and_name_what_is_wrong(tmp_path):
    for number in range(3):
        (tmp_path / f"s-{number}.tar").write_bytes(b"")
    assert parse_source(f"{tmp_path}/s-{{0..2}}.tar").urls == tuple(str(tmp_path / f"s-{n}.tar") for n in range(3))
    assert parse_source(f"{tmp_path}/s-*.tar").urls == parse_source(str(tmp_path)).urls
    assert parse_source("https://host/laion/{00000..00002}.tar").urls[-1] == "https://host/laion/00002.tar"
    assert parse_source("pipe:aws s3 cp s3://b/{0..1}.tar -").kind == "shards"
    assert parse_source("s3://bucket/x.jsonl").kind == "jsonl"
    with pytest.raises(DataFormatError, match=r"s-\{0\.\.5\}\.tar: .*s-3\.tar does not exist"):
        parse_source(f"{tmp_path}/s-{{0..5}}.tar")
    with pytest.raises(DataFormatError, match="matches no file"):
        parse_source(f"{tmp_path}/*.jsonl")
    with pytest.raises(DataFormatError, match="unknown data format '.txt'"):
        (tmp_path / "notes.txt").write_text("x")
        parse_source(str(tmp_path / "notes.txt"))
    (tmp_path / "t.jsonl").write_text("{}")
    with pytest.raises(DataFormatError, match="mixes webdataset shards and tables"):
        parse_sources([str(tmp_path / "s-0.tar"), str(tmp_path / "t.jsonl")])
    with pytest.raises(DataFormatError, match="2 values for 1 --train_files entries"):
        parse_sources([str(tmp_path / "t.jsonl")], [1, 2])


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
    long = "a cat " * 60  # ~120 tokens: CLIP's teacher reads 77 of them, a self teacher as many as the student
    assert collator([{"student_text": "x", "teacher_text": long}])["teacher_input_ids"].shape[1] == 77
    own = DistillationCollator(xlmr_tokenizer, xlmr_tokenizer, max_length=128, teacher_length=128)
    assert own([{"student_text": "x", "teacher_text": long}])["teacher_input_ids"].shape[1] > 77
    empty = collator([{"skipped": skipped}])  # every row bad: one placeholder row that the loss leaves out
    assert empty["input_ids"].shape[0] == 1 and empty["usable_rows"] == 0 and empty["keys"] == []
    assert empty["skipped"] == [skipped] and "usable_rows" not in batch


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
    dataset = image_text_table([table], image_processor)
    rows = [dataset[i] for i in range(len(dataset))]
    reasons = [row["skipped"].reason.split(" (")[0] for row in rows if "skipped" in row]
    assert sorted(reasons) == ["empty caption", "image file not found", "unreadable image"]
    collator = ContrastiveCollator(xlmr_tokenizer, image_shape=(3, 32, 32))
    batch = collator(rows)
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["input_ids"].shape[0] == 3
    assert len(batch["skipped"]) == 3 and batch["skipped"][0].where.startswith(str(table))
    empty = collator([row for row in rows if "skipped" in row])
    assert empty["pixel_values"].shape == (1, 3, 32, 32) and empty["usable_rows"] == 0 and len(empty["skipped"]) == 3


def write_shard(path, samples):
    with tarfile.open(path, "w") as archive:
        for name, payload in samples:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def test_webdataset_shards_stream_with_txt_or_json_captions_and_count_bad_samples(tmp_path, image_processor):
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
            ("0006.jpg", png_bytes()),
            ("0006.json", b"{not json"),
            ("0007.jpg", png_bytes()),
            ("0007.txt", b"\xff\xfe broken"),
        ],
    )
    rows = stream_rows([str(shard)], image_processor, shuffle=False)
    kept = [row["caption"] for row in rows if "skipped" not in row]
    assert kept == ["一只猫", "a dog"]
    reasons = sorted(row["skipped"].reason.split(" (")[0] for row in rows if "skipped" in row)
    assert reasons == [
        "caption .json is not an object with 'caption'",
        "caption .txt is not UTF-8 text",
        "no caption",
        "no image among ['txt']",
        "unreadable image",
    ]
    assert {row["skipped"].where for row in rows if "skipped" in row} >= {f"{shard}:0003", f"{shard}:0007"}


def test_saved_dataset_with_an_image_column(tmp_path, image_processor):
    images = [Image.new("RGB", (40, 30), color) for color in ("red", "blue")]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": images, "caption": ["rot", "bleu"]}, features=features).save_to_disk(
        str(tmp_path / "saved")
    )
    dataset = image_text_table([tmp_path / "saved"], image_processor)
    rows = [dataset[i] for i in range(len(dataset))]
    assert [row["caption"] for row in rows] == ["rot", "bleu"]
    assert rows[0]["pixel_values"][0].mean() > rows[1]["pixel_values"][0].mean()  # red has more red than blue


def test_relative_image_paths_can_start_from_an_image_root(tmp_path, image_processor):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png_bytes())
    table = write_jsonl(tmp_path / "pairs.jsonl", [{"img": "a.png", "text": "x"}])
    dataset = image_text_table(
        [table], image_processor, image_column="img", caption_column="text", image_root=str(tmp_path / "pics")
    )
    assert "pixel_values" in dataset[0]


def test_gzipped_shards_stream_like_plain_ones(tmp_path, image_processor):
    plain = write_shard(tmp_path / "s.tar", [("1.png", png_bytes()), ("1.txt", b"eins"), ("2.png", png_bytes())])
    with tarfile.open(tmp_path / "s.tar.gz", "w:gz") as archive, tarfile.open(plain) as source:
        for member in source.getmembers():
            archive.addfile(member, source.extractfile(member))
    (tmp_path / "s.tar").unlink()
    rows = stream_rows([str(tmp_path / "s.tar.gz")], image_processor, shuffle=False)
    assert [row.get("caption") for row in rows] == ["eins", None]
    assert rows[1]["skipped"].reason == "no caption (.txt or .json)"
