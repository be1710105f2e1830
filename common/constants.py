"""Names and numbers several jobs share: the files one job writes and another reads, and the text length."""

# CLIP's context length (its text tower's positions), and the text length AltCLIP trains and evaluates with by
# default (XLM-R itself takes 512).
CLIP_CONTEXT_LENGTH = 77
DEFAULT_MAX_TEXT_LENGTH = CLIP_CONTEXT_LENGTH

# Training writes these beside the final model; the Hub job reads the summary for the model card.
TRAINING_SUMMARY_FILE = "training_summary.json"
LOSS_CURVE_FILE = "loss_curve.png"

# altclip-eval writes these into its --output_dir; training's zero-shot monitor and the Hub job read them.
RESULTS_FILE = "results.json"
RESULTS_TABLE_FILE = "results.md"
RESULTS_CHART_FILE = "results.png"
MODEL_INDEX_FILE = "model_index.json"

# clip-benchmark's language codes that ISO 639-1 spells otherwise (model cards use ISO codes).
ISO_CODES = {"cn": "zh", "jp": "ja"}

# The reproduction writes a model's own demo examples into its folder; the demo shows them first.
MODEL_EXAMPLES_FOLDER = "demo_examples"  # inside a model folder: examples.json + the images it names
MODEL_EXAMPLES_FILE = "examples.json"  # {"images": [file, ...], "labels": {language: "a, b"}, "template": "{}"}
