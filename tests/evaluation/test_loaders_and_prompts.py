"""Each dataset layout read from a small copy, the errors for missing or malformed files, and the published
class-name lists of clip-benchmark (installed with --no-deps by scripts/test.sh)."""

import json

import pytest
from dataset_layouts import (
    CLASSES,
    write_caption_table,
    write_chinese_clip_format,
    write_cifar,
    write_image_folder,
    write_imagenet_val,
    write_karpathy,
    write_xtd,
)

from altclip.common.images import open_rgb_image
from altclip.evaluation.loaders import (
    load_caption_table,
    load_chinese_clip_format,
    load_cifar,
    load_image_folder,
    load_imagenet_val,
    load_karpathy,
    load_xtd,
)
from altclip.evaluation.prompts import class_prompts, custom_prompts, prompts_dir


def test_image_folder_with_names_in_several_languages(tmp_path):
    dataset = load_image_folder(write_image_folder(tmp_path / "folder"))
    assert dataset.classnames == sorted(CLASSES["en"])  # labels follow the sorted folder names
    assert dataset.labels == [0, 0, 1, 1, 2, 2]
    assert dataset.classnames_by_language["zh"] == CLASSES["zh"]


def test_class_names_with_a_byte_order_mark(tmp_path):
    root = write_image_folder(tmp_path / "folder")
    names = root / "classnames.json"
    names.write_bytes(b"\xef\xbb\xbf" + names.read_bytes().removeprefix(b"\xef\xbb\xbf"))  # as a Windows editor saves
    assert load_image_folder(root).classnames_by_language["zh"] == CLASSES["zh"]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.*ROOT/<class>"):
        load_image_folder(tmp_path / "nowhere")
    root = write_image_folder(tmp_path / "folder")
    (root / "classnames.json").write_text(json.dumps({"de": ["Katze"]}))
    with pytest.raises(ValueError, match="classnames.json: de has 1 names for 3 class folders"):
        load_image_folder(root)
    (root / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no image"):
        load_image_folder(root)


def test_imagenet_val_uses_sorted_wordnet_ids(tmp_path):
    dataset = load_imagenet_val(write_imagenet_val(tmp_path / "imagenet"))
    assert dataset.labels == [0, 1, 999]
    assert dataset.images[2].name == "ILSVRC2012_val_00000999.JPEG"


def test_imagenet_val_needs_1000_classes(tmp_path):
    root = write_imagenet_val(tmp_path / "imagenet")
    (root / "val" / "n00000500").rename(root / "val" / "stray")
    with pytest.raises(FileNotFoundError, match="holds 999 WordNet-id class folders, not 1000"):
        load_imagenet_val(root)


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_test_sets(tmp_path, name, classes):
    dataset = load_cifar(write_cifar(tmp_path, name), name)
    assert len(dataset.images) == 6 and dataset.labels == list(range(6))
    assert len(dataset.classnames) == classes and dataset.images[0].size == (32, 32)


def test_cifar_missing_file_and_foreign_pickle(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py/test_batch is missing"):
        load_cifar(tmp_path, "cifar10")
    root = write_cifar(tmp_path, "cifar10")
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(
        b"cos\nsystem\n(S'echo pwned'\ntR."  # a pickle that would run a shell command
    )
    with pytest.raises(Exception, match="refusing to load it"):
        load_cifar(root, "cifar10")


def test_karpathy_split(tmp_path):
    dataset = load_karpathy(write_karpathy(tmp_path, count=4))
    assert len(dataset.images) == 4  # the fifth image is in the train split
    assert len(dataset.captions) == 8 and dataset.caption_image == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(FileNotFoundError, match="dataset_flickr30k.json is missing"):
        load_karpathy(tmp_path / "nowhere")


def test_chinese_clip_format(tmp_path):
    dataset = load_chinese_clip_format(write_chinese_clip_format(tmp_path))
    assert len(dataset.images) == 4 and dataset.captions[0] == "一张照片 0"
    assert open_rgb_image(dataset.images[3].read()).size == (48, 40)


def test_chinese_clip_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="test_imgs.tsv is missing"):
        load_chinese_clip_format(tmp_path)
    root = write_chinese_clip_format(tmp_path)
    with (root / "test_texts.jsonl").open("a") as handle:
        handle.write(json.dumps({"text_id": 99, "text": "孤儿", "image_ids": [5]}) + "\n")
    with pytest.raises(ValueError, match=r"test_texts.jsonl:9.*image 5 is not in test_imgs.tsv"):
        load_chinese_clip_format(root)
    (root / "test_imgs.tsv").write_text("1000 no tab here\n")
    with pytest.raises(ValueError, match=r"test_imgs.tsv:1: expected image_id<TAB>base64"):
        load_chinese_clip_format(root)


def test_xtd_languages(tmp_path):
    root = write_xtd(tmp_path)
    german = load_xtd(root, "de")
    assert german.captions[1] == "ein Foto 1" and german.caption_image == [0, 1, 2, 3]
    assert german.images == load_xtd(root, "zh").images
    with pytest.raises(FileNotFoundError, match="test_1kcaptions_fr.txt is missing"):
        load_xtd(root, "fr")
    with pytest.raises(KeyError, match="XTD10 has no 'xx'"):
        load_xtd(root, "xx")
    (root / "test_1kcaptions_en.txt").write_text("only one line\n")
    with pytest.raises(ValueError, match="1 captions for 4 images"):
        load_xtd(root, "en")


def test_caption_table_by_language(tmp_path):
    root = write_caption_table(tmp_path)
    german = load_caption_table(root, "de")
    assert len(german.images) == 4 and len(german.captions) == 8 and german.captions[0] == "ein Foto 0"
    assert len(load_caption_table(root).captions) == 16
    with pytest.raises(ValueError, match="no caption in language 'fr'"):
        load_caption_table(root, "fr")


def test_published_imagenet_lists():
    folder = prompts_dir()
    english = class_prompts("imagenet1k", "en", folder)
    assert len(english.classnames) == 1000 and english.classnames[0] == "tench"
    assert len(english.templates) > 10 and all("{c}" in t for t in english.templates)
    chinese = class_prompts("imagenet1k", "cn", folder)
    assert len(chinese.classnames) == 1000 and chinese.labels == tuple(range(1000))
    assert chinese.prompts(0)[0] != english.prompts(0)[0]


def test_babel_imagenet_language_is_a_subset_with_translated_templates():
    german = class_prompts("imagenet1k", "de", prompts_dir())
    assert 0 < len(german.classnames) < 1000 and len(german.labels) == len(german.classnames)
    assert max(german.labels) < 1000 and len(german.templates) == 80
    assert all("{c}" in template for template in german.templates)


@pytest.mark.parametrize("language", ["br", "fy", "la"])
def test_babel_languages_without_translated_templates_need_a_choice(language):
    """They once got the bare name silently while the README promised 80 NLLB templates."""
    with pytest.raises(
        KeyError, match=f"ImageNet in '{language}' has Babel-ImageNet class names but no translated.*--templates"
    ):
        class_prompts("imagenet1k", language, prompts_dir())
    chosen = class_prompts("imagenet1k", language, prompts_dir(), templates_for_untranslated=["{c}"])
    assert chosen.templates == ("{c}",) and 0 < len(chosen.classnames) < 1000
    with pytest.raises(ValueError, match="needs a {c} slot"):
        class_prompts("imagenet1k", language, prompts_dir(), templates_for_untranslated=["a photo"])


def test_dataset_names_with_published_templates():
    # clip-benchmark has CIFAR templates but no CIFAR names: the dataset's own names are used with them
    cifar = class_prompts("cifar10", "en", prompts_dir(), ["plane", "car"])
    assert cifar.classnames == ("plane", "car") and cifar.labels == (0, 1)
    assert len(cifar.templates) > 10 and any("photo" in template for template in cifar.templates)


def test_unknown_language_and_missing_folder(tmp_path):
    with pytest.raises(KeyError, match="No imagenet1k class names in 'tlh'.*ImageNet exists in:.*de"):
        class_prompts("imagenet1k", "tlh", prompts_dir())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prompts_dir(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs a {c} slot"):
        custom_prompts("en", ["cat"], ["a photo"])
