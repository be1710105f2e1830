"""The demo's computations and its input checks, without a UI."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import random_images

from altclip.demo.engine import (
    MAX_LABELS,
    DemoEngine,
    DemoInputError,
    as_rgb_image,
    fill_template,
    for_display,
    split_entries,
)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return DemoEngine(tiny_model_dir, device="cpu")


def test_labels_split_on_commas_and_new_lines_in_any_script():
    assert split_entries("cat, dog\n猫，狗、 cat ", "label", 10) == ["cat", "dog", "猫", "狗"]
    with pytest.raises(DemoInputError, match="at least one label"):
        split_entries(" ,\n ", "label", 10)
    with pytest.raises(DemoInputError, match=f"51 labels is too many: at most {MAX_LABELS}"):
        split_entries(",".join(f"l{i}" for i in range(51)), "label", MAX_LABELS)
    with pytest.raises(DemoInputError, match="at most 200 characters"):
        split_entries("x" * 201, "label", 10)


def test_templates_need_one_slot():
    assert fill_template("ein Foto von {}", "Katze") == "ein Foto von Katze"
    assert fill_template("", "cat") == "cat"
    with pytest.raises(DemoInputError, match="exactly one {}"):
        fill_template("a photo", "cat")


def test_images_of_any_mode_become_rgb(tmp_path):
    for mode in ("RGBA", "L", "P", "CMYK", "I;16", "1"):
        assert as_rgb_image(Image.new(mode, (40, 30))).mode == "RGB"
    assert as_rgb_image(np.zeros((20, 10, 3), dtype=np.float32)).size == (10, 20)
    # full size, as training and evaluation see it (the processor resizes); search results are shown shrunk
    assert as_rgb_image(Image.new("RGB", (4000, 2000))).size == (4000, 2000)
    assert for_display(Image.new("RGB", (4000, 2000))).size == (1024, 512)
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert as_rgb_image(transparent).getpixel((0, 0)) == (255, 255, 255)


def test_unreadable_missing_and_huge_files_are_refused(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DemoInputError, match="Could not read the image"):
        as_rgb_image(tmp_path / "broken.png")
    with pytest.raises(DemoInputError, match="upload an image"):
        as_rgb_image(None)
    Image.new("1", (9000, 6000)).save(tmp_path / "huge.png")  # 54 megapixels, a small file
    with pytest.raises(DemoInputError, match="too large: image of 9000x6000 pixels"):
        as_rgb_image(tmp_path / "huge.png")


def test_classification_probabilities_match_the_model(engine, tmp_path):
    image = random_images(1)[0]
    image.save(tmp_path / "x.png")
    result = engine.classify(tmp_path / "x.png", "Katze, Hund, Vogel", "ein Foto von {}")
    assert list(result.values()) == sorted(result.values(), reverse=True)
    inputs = engine.processor(
        text=["ein Foto von Katze", "ein Foto von Hund", "ein Foto von Vogel"],
        images=[image],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        expected = engine.model(**inputs).logits_per_image.softmax(-1)[0]
    for label, probability in zip(["Katze", "Hund", "Vogel"], expected.tolist()):
        assert result[label] == pytest.approx(probability, abs=1e-5)


def test_search_ranks_the_gallery_and_counts_unreadable_files(engine, tmp_path):
    paths = []
    for index, image in enumerate(random_images(3)):
        image.save(tmp_path / f"{index}.png")
        paths.append(tmp_path / f"{index}.png")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    matches, note = engine.search("ein roter Kreis", [*paths, tmp_path / "bad.jpg"], top_k=2)
    assert len(matches) == 2 and float(matches[0][1]) >= float(matches[1][1])
    assert note.startswith("Left out 1 unreadable file(s): Could not read gallery image 4")
    first_scores = [score for _, score in matches]

    def embedded_again(images):
        raise AssertionError(f"{len(images)} gallery images embedded again")

    engine.image_embeddings, original = embedded_again, engine.image_embeddings  # the files are unchanged
    try:
        again, _ = engine.search("ein roter Kreis", [*paths, tmp_path / "bad.jpg"], top_k=2)
        assert [score for _, score in again] == first_scores
        random_images(1, seed=9)[0].save(paths[0])  # a changed file is embedded anew
        with pytest.raises(AssertionError, match="1 gallery images embedded again"):
            engine.search("ein roter Kreis", paths)
    finally:
        engine.image_embeddings = original
    with pytest.raises(DemoInputError, match="type what to search"):
        engine.search("  ", paths)
    with pytest.raises(DemoInputError, match="None of the 1 gallery files"):
        engine.search("cat", [tmp_path / "bad.jpg"])


def test_caption_ranking_keeps_commas_inside_captions(engine):
    ranking = engine.rank_captions(random_images(1)[0], "a dog, running\nein Hund, rennend\n")
    assert set(ranking) == {"a dog, running", "ein Hund, rennend"}
    assert sum(ranking.values()) == pytest.approx(1.0)


def test_a_model_with_nan_weights_is_not_served(tmp_path, tiny_model_dir):
    from modeling_altclip import AltCLIPModel, AltCLIPProcessor, NonFiniteWeightsError

    model = AltCLIPModel.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.visual_projection.weight[0, 0] = float("inf")
    model.save_pretrained(tmp_path)
    AltCLIPProcessor.from_pretrained(tiny_model_dir).save_pretrained(tmp_path)
    with pytest.raises(NonFiniteWeightsError, match=r"visual_projection.weight \(1 of"):
        DemoEngine(tmp_path, device="cpu")
