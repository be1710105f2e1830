"""A small image collection in the three shapes the index reads (a folder with a subfolder and a broken file, a
Parquet table with captions, a webdataset shard with captions) and a fresh one-process index of it."""

import io
import tarfile

import pyarrow
import pyarrow.parquet
import pytest
from index_builds import build_flags
from tiny_models import random_images

from altclip.search.cli import index_main


@pytest.fixture(scope="session")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    folder = root / "photos"
    (folder / "holiday").mkdir(parents=True)
    for number, image in enumerate(random_images(7, seed=1)):
        image.save(folder / ("holiday" if number % 3 == 0 else "") / f"photo{number}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    more = root / "more"
    more.mkdir()
    for number, image in enumerate(random_images(3, seed=2)):
        image.save(more / f"extra{number}.jpg")
    pyarrow.parquet.write_table(
        pyarrow.table({"image": [f"extra{i}.jpg" for i in range(3)], "caption": ["ein Hund", "一只猫", "a rocket"]}),
        more / "table.parquet",
    )
    shard = root / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for number, image in enumerate(random_images(3, seed=3)):
            for suffix, payload in (("jpg", _jpeg(image)), ("txt", f"caption {number}".encode())):
                info = tarfile.TarInfo(f"sample{number}.{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return {"folder": folder, "table": more / "table.parquet", "shard": shard, "root": root}


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def fresh_index(tmp_path_factory, tiny_model_dir, collection):
    """One process, every source at once."""
    output = tmp_path_factory.mktemp("fresh") / "index"
    index_main(build_flags(tiny_model_dir, output, collection["folder"], collection["table"], collection["shard"]))
    return output
