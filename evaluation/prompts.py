"""Class names and prompt templates in many languages, from the lists that `clip-benchmark` publishes.

Install the data files without clip-benchmark's dependencies (torchvision, open_clip, a CUDA torch):
``pip install --no-deps clip-benchmark``. The package is located, never imported.

- ``{lang}_classnames.json`` / ``{lang}_zeroshot_classification_templates.json`` for en, cn, it, jp, ar
  (templates use ``{c}``);
- ``babel_imagenet.json``: ImageNet class names in 93 languages, each a subset of the 1000 classes
  (``{"DE": [[class indices], [names]]}``);
- ``nllb_dist13b_prompts.json``: CLIP's 80 ImageNet templates machine-translated into 90 languages (``{}``).
"""

import importlib.util
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from altclip.common.constants import ISO_CODES

PACKAGE = "clip-benchmark"
NATIVE_LANGUAGES = ("en", "cn", "it", "jp", "ar")  # clip-benchmark's own hand-made lists
BABEL_FILE = "babel_imagenet.json"
NLLB_FILE = "nllb_dist13b_prompts.json"


@dataclass(frozen=True)
class ClassPrompts:
    """The candidate classes of one benchmark in one language: names, templates, and their dataset labels."""

    language: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]  # each with a single ``{c}`` slot
    labels: tuple[int, ...]  # the dataset label of each class (a subset for Babel-ImageNet languages)

    def prompts(self, index: int) -> list[str]:
        return [template.replace("{c}", self.classnames[index]) for template in self.templates]


def prompts_dir(explicit: str | Path | None = None) -> Path:
    """The folder of clip-benchmark's JSON lists: `explicit`, or the installed package's ``datasets/`` folder."""
    if explicit is not None:
        folder = Path(explicit)
    else:
        spec = importlib.util.find_spec("clip_benchmark")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"Class names and templates come from the PyPI package {PACKAGE}: pip install --no-deps {PACKAGE} "
                "(or pass --prompts_dir to a folder holding its datasets/*.json files)."
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "datasets"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: no class-name lists there.")
    return folder


@cache
def read_published_json(path: Path):
    """One of clip-benchmark's JSON lists, read once per process; a missing file says how to get it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall {PACKAGE} or point --prompts_dir elsewhere.")
    return json.loads(path.read_text(encoding="utf-8"))


def available_languages(folder: Path) -> list[str]:
    """Languages with an ImageNet list: clip-benchmark's own and Babel-ImageNet's (lower-case codes)."""
    babel = {code.lower() for code in read_published_json(folder / BABEL_FILE)}
    native = {lang for lang in NATIVE_LANGUAGES if (folder / f"{lang}_classnames.json").is_file()}
    return sorted(native | babel)


def babel_code(language: str) -> str:
    """Babel-ImageNet's key for a language code: upper case, clip-benchmark's cn/jp as ZH/JA."""
    return ISO_CODES.get(language, language).upper()


def class_prompts(
    benchmark: str,
    language: str,
    folder: Path,
    dataset_classnames: list[str] | None = None,
    templates_for_untranslated: list[str] | None = None,
) -> ClassPrompts:
    """Class names and templates of `benchmark` (e.g. ``imagenet1k``, ``cifar10``) in `language`.

    clip-benchmark's own lists come first; names the dataset carries itself (CIFAR's English names) are used
    with the published templates; for other languages ImageNet uses Babel-ImageNet names with the NLLB
    templates. A Babel-ImageNet language without NLLB templates needs `templates_for_untranslated` (the user's
    explicit choice, ``--templates``), as clip-benchmark refuses it too. An unknown combination is an error that lists
    what exists.
    """
    names_file = folder / f"{language}_classnames.json"
    templates_file = folder / f"{language}_zeroshot_classification_templates.json"
    templates = read_published_json(templates_file).get(benchmark) if templates_file.is_file() else None
    names = read_published_json(names_file).get(benchmark) if names_file.is_file() else None
    if names is None and language == "en":
        names = dataset_classnames
    if names is not None:
        if templates is None and language == "en":
            templates = ["{c}"]
        if templates is not None:
            return ClassPrompts(language, tuple(names), tuple(templates), tuple(range(len(names))))
    if benchmark == "imagenet1k":
        babel, nllb = read_published_json(folder / BABEL_FILE), read_published_json(folder / NLLB_FILE)
        code = babel_code(language)
        if code in babel:
            labels, names = babel[code]
            if code in nllb:
                templates = [template.replace("{}", "{c}") for template in nllb[code]]
            elif templates_for_untranslated:
                templates = check_templates(templates_for_untranslated)
            else:
                raise KeyError(
                    f"ImageNet in {language!r} has Babel-ImageNet class names but no translated templates; pass "
                    "--templates with your own (each with {c}; '{c}' alone uses the bare name) to score it."
                )
            return ClassPrompts(language, tuple(names), tuple(templates), tuple(labels))
    raise KeyError(
        f"No {benchmark} class names in {language!r}. ImageNet exists in: {', '.join(available_languages(folder))}; "
        f"English lists exist for: {', '.join(sorted(read_published_json(folder / 'en_classnames.json')))}."
    )


def check_templates(templates: list[str]) -> list[str]:
    if not all("{c}" in template for template in templates):
        raise ValueError(f"Every template needs a {{c}} slot for the class name; got {templates}.")
    return list(templates)


def custom_prompts(language: str, classnames: list[str], templates: list[str] | None) -> ClassPrompts:
    """Prompts for a dataset of one's own: class names as given, templates with ``{c}`` (default: the bare name)."""
    templates = check_templates(templates or ["{c}"])
    return ClassPrompts(language, tuple(classnames), tuple(templates), tuple(range(len(classnames))))
