"""One class-folder reader and one zero-shot scoring for altclip-eval and training's zero-shot monitor: a
classnames.json is read alike by both (a byte-order mark accepted, a list instead of a mapping one line), and
altclip-eval's results are the shared `zero_shot_result` of the same embeddings."""

import json

import pytest
import torch
from dataset_layouts import CLASSES, write_image_folder

from altclip.common.errors import InputDataError
from altclip.common.zero_shot_scoring import zero_shot_result
from altclip.evaluation.loaders import load_image_folder
from altclip.evaluation.prompts import custom_prompts
from altclip.evaluation.zeroshot import evaluate_zero_shot
from altclip.training.arguments import ZeroShotArguments
from altclip.training.loop.zeroshot_monitor import check_zeroshot_arguments


def evaluation_reads(root, language):
    return load_image_folder(root).classnames_by_language[language]


def training_reads(root, language):
    check_zeroshot_arguments(ZeroShotArguments(zeroshot_steps=1, zeroshot_data_dir=str(root), zeroshot_languages="de"))
    from altclip.common.zero_shot_scoring import read_class_folder  # what the monitor then scores with

    return read_class_folder(root).class_names(language, several_languages=False)


READERS = pytest.mark.parametrize("read", [evaluation_reads, training_reads], ids=["altclip-eval", "training"])


@READERS
def test_a_classnames_file_with_a_byte_order_mark_is_read(tmp_path, read):
    root = write_image_folder(tmp_path / "data", per_class=1)
    (root / "classnames.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(CLASSES, ensure_ascii=False).encode())
    assert read(root, "de") == CLASSES["de"]


@READERS
@pytest.mark.parametrize(
    "content, message",
    [
        ('["cat", "dog", "bird"]', "should map languages to lists of names"),
        ('{"de": "Katze"}', "should map languages to lists of names"),
        ('{"de": ["Katze"]}', "de has 1 names for 3 class folders"),
        ("{not json", "is not valid JSON"),
    ],
    ids=["list", "string-names", "too-few", "not-json"],
)
def test_a_classnames_file_that_cannot_be_used_is_one_line_naming_it(tmp_path, read, content, message):
    root = write_image_folder(tmp_path / "data", per_class=1)
    (root / "classnames.json").write_text(content)
    with pytest.raises(InputDataError, match=message) as refused:
        read(root, "de")
    assert str(root / "classnames.json") in str(refused.value) and "\n" not in str(refused.value)


class FixedEmbedder:
    """Embeddings fixed in advance: images and class prompts, normalised as the Embedder returns them."""

    def __init__(self, images: torch.Tensor, texts: torch.Tensor):
        self.image_rows, self.text_rows = images, texts

    def images(self, images, description):
        return self.image_rows, list(range(len(images))), []

    def texts(self, texts, description):
        return self.text_rows[: len(texts)]

    def fingerprint(self):
        return "fixed"


def test_altclip_eval_scores_with_the_shared_zero_shot_result(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=2)
    dataset = load_image_folder(root)
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(len(dataset.images), 8, generator=generator), dim=-1)
    prompts = custom_prompts("en", CLASSES["en"], ["a photo of {c}.", "{c}"])
    texts = torch.nn.functional.normalize(torch.randn(len(CLASSES["en"]) * 2, 8, generator=generator), dim=-1)
    (evaluated,) = evaluate_zero_shot(FixedEmbedder(images, texts), dataset, {"en": prompts})
    classes = torch.nn.functional.normalize(texts.view(len(CLASSES["en"]), 2, -1).mean(dim=1), dim=-1)
    expected = zero_shot_result("image_folder", "en", images, torch.tensor(dataset.labels), classes, 2)
    assert evaluated == expected
