"""altclip: multilingual CLIP (AltCLIP) for Hugging Face transformers: model, training, evaluation, Hub, demo."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="altclip",
    version="0.1.0",
    description="AltCLIP: CLIP with a multilingual XLM-R text tower, as a transformers-compatible package",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(
        include=["modeling_altclip*", "common*", "training*", "evaluation*", "hub*", "demo*", "reproduction*"]
    ),
    package_data={
        "training": ["configs/*.yaml", "configs/*.json"],
        "evaluation": ["metrics/*/*.py", "metrics/*/*.md"],
        "hub": ["*.md"],
    },
    entry_points={
        "console_scripts": [
            "altclip-train = training.cli:main",
            "altclip-eval = evaluation.cli:main",
            "altclip-export-onnx = evaluation.onnx_export:main",
            "altclip-push = hub.cli:main",
            "altclip-push-space = hub.cli:space_main",
            "altclip-demo = demo.app:main",
            "altclip-reproduce = reproduction.run:main",
        ]
    },
    install_requires=[
        "torch>=2.4",
        "transformers>=5.24,<6",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "tokenizers>=0.21",
        "pillow>=10",
        "numpy>=1.24",
        "pyyaml>=6",
        # training
        "accelerate>=1.1",
        "datasets>=3",  # tables as memory-mapped Arrow; fsspec (https://, hf://; s3fs/gcsfs for s3://, gs://)
        "webdataset>=1.0",  # shard reading (tar members, pipe: URLs) for streamed image-caption data
        "braceexpand>=0.1.7",  # shard specs such as laion/{00000..41407}.tar
        "matplotlib>=3.7",
        "tqdm>=4.66",
        # evaluation (class names and templates: pip install --no-deps clip-benchmark)
        "evaluate>=0.4",
        # hub
        "jinja2>=3",
        # reproduction (emoji names in 14 languages; the glyphs come from Debian's fonts-noto-color-emoji)
        "emoji>=2.10",
    ],
    extras_require={
        "demo": ["gradio>=5", "pandas", "scikit-image>=0.22"],
        "onnx": ["onnx>=1.17", "onnxscript>=0.2", "onnxruntime>=1.20"],
        "test": [
            "pytest>=8",
            "gradio>=5",
            "gradio_client>=1",
            "pandas",
            "scikit-image>=0.22",
            "playwright>=1.40",
            "onnx>=1.17",
            "onnxscript>=0.2",
            "onnxruntime>=1.20",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
