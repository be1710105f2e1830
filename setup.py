"""altclip: multilingual CLIP (AltCLIP) for Hugging Face transformers: model, training, evaluation, Hub, demo."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
JOBS = ("common", "training", "evaluation", "hub", "demo", "reproduction", "search")
JOB_PACKAGES = [f"altclip.{name}" for name in find_packages(include=[f"{job}*" for job in JOBS])]

TRAIN = [
    "accelerate>=1.1",
    "datasets>=3",  # tables as memory-mapped Arrow; fsspec (https://, hf://; s3fs/gcsfs for s3://, gs://)
    "webdataset>=1.0",  # shard reading (tar members, pipe: URLs) for streamed image-caption data
    "braceexpand>=0.1.7",  # shard specs such as laion/{00000..41407}.tar
    "matplotlib>=3.7",
    "tqdm>=4.66",
    "pyyaml>=6",
]
# evaluation's class names and templates: pip install --no-deps clip-benchmark (data files only)
EVAL = ["evaluate>=0.4", "datasets>=3", "matplotlib>=3.7", "tqdm>=4.66", "pyyaml>=6"]
HUB = ["jinja2>=3"]
DEMO = ["gradio>=5", "scikit-image>=0.22"]
# LoRA fine-tuning (altclip-train --lora_r) and loading its adapters (altclip-eval, altclip-demo, altclip-push)
PEFT = ["peft>=0.13"]
TRAIN += PEFT
EVAL += PEFT
HUB += PEFT
DEMO += PEFT
# image search: FAISS for the vector index (faiss-gpu where installed is used the same way), Parquet metadata
SEARCH = ["faiss-cpu>=1.8", "pyarrow>=15", "braceexpand>=0.1.7", "webdataset>=1.0", "tqdm>=4.66"]
# altclip-serve (FastAPI on uvicorn; python-multipart for image uploads) and its Python client (httpx)
SEARCH += ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "httpx>=0.27"]
ONNX = ["onnx>=1.17", "onnxscript>=0.2", "onnxruntime>=1.20"]
# the emoji reproduction trains and evaluates; the glyphs come from Debian's fonts-noto-color-emoji
REPRODUCE = sorted({*TRAIN, *EVAL, "emoji>=2.10"})
# DeepSpeed ZeRO-2/3 (--deepspeed): 0.19 installs from PyPI without compiling (its communication op builds on first
# use); in the train extra (and so in test), not in reproduce, which trains without it.
DEEPSPEED = ["deepspeed>=0.19"]
TRAIN = [*TRAIN, *DEEPSPEED]
EXTRAS = {
    "train": TRAIN,
    "eval": EVAL,
    "hub": HUB,
    "demo": DEMO,
    "onnx": ONNX,
    "search": SEARCH,
    "reproduce": REPRODUCE,
}
EXTRAS["all"] = sorted({requirement for group in EXTRAS.values() for requirement in group})
EXTRAS["test"] = sorted({*EXTRAS["all"], "pytest>=8", "gradio_client>=1", "playwright>=1.40"})
# tests/test_packaging.py builds the wheel offline (--no-build-isolation): setuptools that builds wheels by itself
EXTRAS["test"] = sorted({*EXTRAS["test"], "setuptools>=70.1"})

setup(
    name="altclip",
    version="0.1.0",
    description="AltCLIP: CLIP with a multilingual XLM-R text tower, as a transformers-compatible package",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # Installed import names: `altclip` (the jobs as its subpackages) and the flat `modeling_altclip` (what
    # trust_remote_code copies to the Hub). The repository keeps the jobs as top-level folders; package_dir maps each
    # folder to its `altclip.` name, so nothing generic (`hub`, `common`, ...) lands in site-packages.
    packages=["altclip", *find_packages(include=["modeling_altclip*"]), *JOB_PACKAGES],
    package_dir={"altclip": "altclip", **{f"altclip.{job}": job for job in JOBS}},
    package_data={
        "altclip.training": ["configs/*.yaml", "configs/*.json", "launch/*.sbatch"],
        "altclip.evaluation": ["metrics/*/*.py", "metrics/*/*.md", "references.json"],
        "altclip.reproduction": ["stage2_selection.json"],
        "altclip.hub": ["*.md"],
    },
    entry_points={
        "console_scripts": [
            "altclip-train = altclip.training.cli:main",
            "altclip-eval = altclip.evaluation.cli:main",
            "altclip-export-onnx = altclip.evaluation.onnx_export:main",
            "altclip-push = altclip.hub.cli:main",
            "altclip-push-space = altclip.hub.cli:space_main",
            "altclip-demo = altclip.demo.app:main",
            "altclip-reproduce = altclip.reproduction.run:main",
            "altclip-index = altclip.search.cli:index_main",
            "altclip-search = altclip.search.cli:search_main",
            "altclip-serve = altclip.search.server:main",
        ]
    },
    # The base install loads and runs a model (modeling_altclip, common.images); each job adds its own extras.
    install_requires=[
        "torch>=2.4",
        "transformers>=5.24,<6",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "tokenizers>=0.21",
        "pillow>=10",
        "numpy>=1.24",
    ],
    extras_require=EXTRAS,
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
