"""Loading where the package is not installed (trust_remote_code) and the zero-shot pipeline."""

import json
import subprocess
import sys
import textwrap

import torch
from tiny_models import random_images
from transformers import pipeline

REMOTE_CODE_FILES = {"configuration_altclip.py", "modeling_altclip.py", "processing_altclip.py"}


def test_save_pretrained_writes_code_and_auto_map(tiny_model_dir):
    files = {path.name for path in tiny_model_dir.iterdir()}
    assert REMOTE_CODE_FILES <= files and "model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    auto_map = json.loads((tiny_model_dir / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_altclip.AltCLIPConfig",
        "AutoModel": "modeling_altclip.AltCLIPModel",
        "AutoModelForZeroShotImageClassification": "modeling_altclip.AltCLIPModel",
    }
    processor_map = json.loads((tiny_model_dir / "processor_config.json").read_text())["auto_map"]
    assert processor_map == {"AutoProcessor": "processing_altclip.AltCLIPXLMRProcessor"}


def test_remote_code_loads_where_the_package_cannot_be_imported(tiny_model_dir, tiny_model, processor, tmp_path):
    texts, images = ["a photo of a cat", "一只猫的照片"], random_images(2)
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = tiny_model(**inputs).logits_per_image
    torch.save({"inputs": dict(inputs), "expected": expected}, tmp_path / "case.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["modeling_altclip"] = None  # any import of the installed package now fails
        import torch
        from transformers import AutoModel, AutoProcessor, AutoModelForZeroShotImageClassification
        try:
            import modeling_altclip
            raise SystemExit("the package is importable: the test would prove nothing")
        except ImportError:
            pass
        model = AutoModel.from_pretrained({str(tiny_model_dir)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(tiny_model_dir)!r}, trust_remote_code=True)
        zero_shot = AutoModelForZeroShotImageClassification.from_pretrained(
            {str(tiny_model_dir)!r}, trust_remote_code=True
        )
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
        assert type(zero_shot).__name__ == "AltCLIPModel"
        case = torch.load({str(tmp_path / "case.pt")!r}, weights_only=False)
        with torch.no_grad():
            logits = model(**case["inputs"]).logits_per_image
        torch.testing.assert_close(logits, case["expected"])
        print("REMOTE-CODE-OK", type(model).__module__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-CODE-OK transformers_modules." in result.stdout


def test_zero_shot_pipeline_with_labels_in_many_languages(tiny_model_dir, tiny_model, processor):
    classifier = pipeline("zero-shot-image-classification", model=str(tiny_model_dir))
    labels = ["猫", "chien", "Hund", "кошка"]
    image = random_images(1)[0]
    result = classifier(image, candidate_labels=labels, hypothesis_template="{}")
    assert sorted(item["label"] for item in result) == sorted(labels)
    assert abs(sum(item["score"] for item in result) - 1) < 1e-5
    inputs = processor(text=labels, images=[image], return_tensors="pt", padding=True)
    with torch.no_grad():
        probabilities = tiny_model(**inputs).logits_per_image.softmax(-1)[0]
    by_label = {item["label"]: item["score"] for item in result}
    for label, probability in zip(labels, probabilities.tolist()):
        assert abs(by_label[label] - probability) < 1e-5
