"""A folder this package saves loads into stock transformers without this package or remote code:
`transformers.AltCLIPModel` gets every weight and the same logits; `AutoModel` (model_type ``altclip_xlmr``, ours)
refuses loudly instead of building a model with random layers. Checked in a fresh interpreter that never imports
this package, so none of its classes are registered."""

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file
from tiny_models import random_images

from modeling_altclip import AltCLIPModel

STOCK_LOAD = r"""
import json, sys
import torch, transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

folder, inputs = sys.argv[1], torch.load(sys.argv[2])
report = {"registered": "altclip_xlmr" in CONFIG_MAPPING, "imported": "modeling_altclip" in sys.modules}
model, info = transformers.AltCLIPModel.from_pretrained(folder, output_loading_info=True)
report["class"] = type(model).__module__ + "." + type(model).__name__
report["missing"], report["unexpected"] = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
with torch.no_grad():
    report["logits"] = model.eval()(**inputs).logits_per_image.tolist()
try:
    transformers.AutoModel.from_pretrained(folder)
    report["auto_model"] = "loaded"
except (ValueError, OSError) as error:
    report["auto_model"] = f"{type(error).__name__}: {error}"
report["imported_after"] = "modeling_altclip" in sys.modules
print("REPORT", json.dumps(report))
"""


def test_stock_transformers_loads_a_saved_folder_with_every_weight_or_refuses(tmp_path, tiny_model_dir, processor):
    ours = AltCLIPModel.from_pretrained(tiny_model_dir).eval()
    inputs = dict(processor(text=["a cat", "ein Hund"], images=random_images(1), return_tensors="pt"))
    inputs = {name: value for name, value in inputs.items() if name in ("input_ids", "attention_mask", "pixel_values")}
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = ours(**inputs).logits_per_image
    script = tmp_path / "stock_load.py"
    script.write_text(STOCK_LOAD)
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "inputs.pt")],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,  # not the repository: nothing of this package on the path but its install
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # after transformers' "run the custom code? [y/N]" prompt, which stdin's end answers with no
    report = json.loads(done.stdout.rsplit("REPORT ", 1)[1])
    assert not report["registered"] and not report["imported"] and not report["imported_after"]
    assert report["class"] == "transformers.models.altclip.modeling_altclip.AltCLIPModel"
    assert report["missing"] == [] and report["unexpected"] == []
    torch.testing.assert_close(torch.tensor(report["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert report["auto_model"] != "loaded" and "custom code" in report["auto_model"]


def test_saved_text_blocks_use_transformers_names_and_a_trainer_resume_restores_them(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert any(key.startswith("text_model.roberta.encoder.layers.0.") for key in weights)
    assert not any(".encoder.layer." in key for key in weights)
    fresh = AltCLIPModel(tiny_model.config)
    assert not fresh.load_state_dict(weights, strict=False).missing_keys  # what the Trainer does when it resumes
    for name, parameter in tiny_model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], parameter)
