"""``altclip-eval zeroshot|retrieval``: the paper's benchmarks (and one's own data) for any AltCLIP checkpoint.

Flags come from `EvalArguments`; ``--config FILE.yaml|json`` supplies them from a file (later flags win).
Results go to ``--output_dir`` as results.json, results.md, results.png and model_index.json.
"""

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from accelerate import PartialState
from transformers import HfArgumentParser

from altclip.common.cli_errors import one_line_parser_errors, run_with_one_line_errors, wants_traceback
from altclip.common.config_files import expand_config
from altclip.common.constants import DEFAULT_MAX_TEXT_LENGTH
from altclip.common.embedding import Embedder
from altclip.common.errors import PathError, UsageError
from altclip.common.model_paths import incomplete_model_folder, unavailable_model
from altclip.common.number_checks import COUNT, WHOLE_NON_NEGATIVE, check_fields
from altclip.common.processes import processes_released_when_done
from altclip.common.results_format import markdown_table, write_results
from altclip.common.zero_shot_scoring import names_in_language
from modeling_altclip.assets import cache_dir

from .field_sets import FIELD_LOADERS, MULTI30K_LANGUAGES, XM3600_LANGUAGES, translated_languages
from .loaders import CLASSIFICATION_LOADERS, RETRIEVAL_LOADERS, XTD_LANGUAGES, ClassificationSet
from .prompts import ClassPrompts, class_prompts, custom_prompts, prompts_dir
from .references import DEFAULT_PROTOCOL, write_comparison
from .retrieval import PROTOCOLS, evaluate_retrieval, language_average, process_state
from .zeroshot import ClassEmbeddingCache, evaluate_zero_shot

logger = logging.getLogger("evaluation")

TASKS = {"zeroshot": CLASSIFICATION_LOADERS, "retrieval": {**RETRIEVAL_LOADERS, **FIELD_LOADERS}}
DEFAULT_RETRIEVAL_LANGUAGE = {
    "flickr30k": "en",
    "flickr30k_cn": "zh",
    "coco_cn": "zh",
    "xtd10": "en",
    "xm3600": ",".join(XM3600_LANGUAGES),
    "multi30k": ",".join(MULTI30K_LANGUAGES),
}
USAGE = """usage: altclip-eval {zeroshot,retrieval} --model PATH_OR_ID --dataset NAME --data_dir DIR [--FLAG VALUE ...]

  zeroshot   zero-shot classification: imagenet1k, cifar10, cifar100, image_folder
  retrieval  image<->text recall@1/5/10: flickr30k, flickr30k_cn, coco_cn, xtd10, xm3600, xtd200,
             flickr30k_200, multi30k, captions

'altclip-eval TASK --help' lists every flag."""


NUMBER_RANGES = {"batch_size": COUNT, "num_workers": WHOLE_NON_NEGATIVE, "max_text_length": COUNT, "dims": COUNT}


def default_cache_dir() -> str:
    return str(cache_dir() / "class_embeddings")


@dataclass
class EvalArguments:
    model: str = field(metadata={"help": "AltCLIP checkpoint: a folder or a Hub id (BAAI/AltCLIP, BAAI/AltCLIP-m18)."})
    dataset: str = field(
        metadata={
            "help": "zeroshot: imagenet1k|cifar10|cifar100|image_folder; retrieval: "
            "flickr30k|flickr30k_cn|coco_cn|xtd10|xm3600|xtd200|flickr30k_200|multi30k|captions."
        }
    )
    data_dir: str = field(metadata={"help": "The local copy of the dataset (layouts in the README)."})
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where the results files go."})
    languages: str = field(
        default="",
        metadata={
            "help": "Comma-separated languages, e.g. 'en,cn,de' (zeroshot; clip-benchmark codes: cn, jp, or Babel "
            "codes) or 'de,fr' (xtd10, captions). Default: en (zeroshot) or the dataset's own language."
        },
    )
    templates: list[str] | None = field(
        default=None,
        metadata={
            "help": "Prompt templates with a {c} slot: for image_folder (default: the bare class name), and for "
            "ImageNet languages with Babel-ImageNet names but no NLLB templates (br, fy, la, ...), which are refused "
            "without them."
        },
    )
    prompts_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of clip-benchmark's class-name/template JSON files (default: the installed package)."
        },
    )
    split: str = field(
        default="test", metadata={"help": "Split of Karpathy / Chinese-CLIP / Multi30k (test = test_2016_flickr) sets."}
    )
    protocol: str | None = field(
        default=None,
        metadata={
            "help": "Retrieval captions scored: first_caption (each image's first caption: CLIP_benchmark) or "
            "all_captions (every caption: big_vision, Meta CLIP). Default: the protocol of the dataset's reference "
            "numbers (xm3600: first_caption; the rest: all_captions).",
            "choices": list(PROTOCOLS),
        },
    )
    compare: str | None = field(
        default=None,
        metadata={
            "help": "reference: put the results next to the published numbers of evaluation/references.json in "
            "results.md and results_reference.png.",
            "choices": ["reference"],
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Images or texts per forward pass."})
    num_workers: int = field(
        default=min(4, os.cpu_count() or 1), metadata={"help": "DataLoader workers decoding images."}
    )
    device: str = field(default="auto", metadata={"help": "auto (GPU if present), cpu, cuda, cuda:1, ..."})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16/fp16 on an accelerator, fp32 on CPU), float32, float16, bfloat16.",
            "choices": ["auto", "float32", "float16", "bfloat16"],
        },
    )
    max_text_length: int = field(
        default=DEFAULT_MAX_TEXT_LENGTH, metadata={"help": "Token limit of prompts and captions."}
    )
    reduced_decoding: bool = field(
        default=False,
        metadata={
            "help": "Decode JPEGs at the smallest DCT scale that still covers the model's input size: faster, but "
            "scores move (a recall@10 by 8 points on a small set); off by default, as in the reference pipelines."
        },
    )
    quantization: str | None = field(
        default=None,
        metadata={
            "help": "int8: dynamic int8 quantisation of the Linear layers (CPU only; faster, slightly different)."
        },
    )
    cpu_linear_kernel: str = field(
        default="auto",
        metadata={
            "help": "On the CPU in fp32, the Linear layers' kernel: auto (measured once on this machine: oneDNN's "
            "where it is clearly faster than PyTorch's default, e.g. about 2x on AMD EPYC, else the default), "
            "onednn, or default (nn.Linear as transformers runs it). $ALTCLIP_CPU_LINEAR_KERNEL sets it for every "
            "tool. Same fp32 results within ~1e-6.",
            "choices": ["auto", "onednn", "default"],
        },
    )
    onednn_linear: bool | None = field(
        default=None,
        metadata={"help": "Older spelling: true is --cpu_linear_kernel onednn, false is --cpu_linear_kernel default."},
    )
    show_traceback: bool = field(
        default=False, metadata={"help": "Show the full traceback of an error instead of its one-line message."}
    )
    dims: int | None = field(
        default=None,
        metadata={
            "help": "Score with the first N embedding dimensions, re-normalised (any model; one trained with "
            "altclip-train --matryoshka_dims keeps most of its quality there). Default: all of them."
        },
    )
    cache_dir: str = field(
        default_factory=default_cache_dir,
        metadata={"help": "Class embeddings are kept here per model and class list; '' keeps them in memory only."},
    )

    def language_list(self, default: str) -> list[str]:
        return [code.strip() for code in (self.languages or default).split(",") if code.strip()]


def parse(task: str, argv: Sequence[str]) -> EvalArguments:
    program = f"altclip-eval {task}"
    parser = HfArgumentParser(EvalArguments)
    parser.prog = program
    one_line_parser_errors(parser, program)
    args, remaining = parser.parse_args_into_dataclasses(args=expand_config(argv), return_remaining_strings=True)
    if remaining:
        raise UsageError(f"{program}: unknown flag(s) {' '.join(remaining)}. '{program} --help' lists every flag.")
    check_fields([args], NUMBER_RANGES)
    if args.dataset not in TASKS[task]:
        raise UsageError(
            f"altclip-eval {task}: unknown --dataset {args.dataset!r}; choose from {', '.join(TASKS[task])}."
        )
    return args


def classification_prompts(args: EvalArguments, dataset: ClassificationSet) -> dict[str, ClassPrompts]:
    """Per language: the folder's own names (classnames.json / folder names) or clip-benchmark's published lists."""
    languages = args.language_list("en")
    if args.dataset == "image_folder":
        prompts = {}
        for language in languages:
            names = names_in_language(
                args.data_dir, dataset.classnames_by_language, dataset.classnames, language, len(languages) > 1
            )
            prompts[language] = custom_prompts(language, names, args.templates)
        return prompts
    folder = prompts_dir(args.prompts_dir)
    return {
        language: class_prompts(args.dataset, language, folder, dataset.classnames, args.templates)
        for language in languages
    }


def run_zero_shot(
    args: EvalArguments, make_embedder: Callable[[], Embedder], state: PartialState | None = None
) -> list[dict]:
    """Zero-shot runs whole in every process (only the first writes); `state` is accepted for one call shape."""
    dataset = CLASSIFICATION_LOADERS[args.dataset](args.data_dir)
    prompts = classification_prompts(args, dataset)  # data and lists are checked before the model loads
    return evaluate_zero_shot(make_embedder(), dataset, prompts, ClassEmbeddingCache(args.cache_dir or None))


def retrieval_languages(args: EvalArguments) -> list[str]:
    """--languages, else the dataset's own: XM3600's 36, Multi30k's 4, every translation file of XTD200 /
    Flickr30k-200, the one language of the others."""
    if not args.languages and args.dataset in ("xtd200", "flickr30k_200"):
        return translated_languages(args.dataset, args.data_dir)
    return args.language_list(DEFAULT_RETRIEVAL_LANGUAGE.get(args.dataset, ""))


def run_retrieval(
    args: EvalArguments, make_embedder: Callable[[], Embedder], state: PartialState | None = None
) -> list[dict]:
    languages = retrieval_languages(args)
    loader = TASKS["retrieval"][args.dataset]
    if args.dataset == "xtd10":
        unknown = sorted(set(languages) - set(XTD_LANGUAGES))
        if unknown:
            raise UsageError(f"altclip-eval: XTD10 has no {', '.join(unknown)}; it has {', '.join(XTD_LANGUAGES)}.")
    datasets = {language: loader(args.data_dir, language, split=args.split) for language in languages}
    if not languages:  # a caption table without --languages: all of its rows together
        datasets = {"all": loader(args.data_dir, None, split=args.split)}
    protocol = args.protocol or DEFAULT_PROTOCOL.get(args.dataset, "all_captions")
    embedder, memo = make_embedder(), {}
    results = [
        evaluate_retrieval(embedder, dataset, language, memo, protocol, state) for language, dataset in datasets.items()
    ]
    if len(results) > 1 and args.dataset != "captions":
        results.append(language_average(args.dataset, results))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TASKS:
        print(USAGE, file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    task = argv[0]

    def user_error(error: BaseException) -> str | None:
        """Bad data, lists or files, an unloadable or non-finite model: one line (anything else is a bug)."""
        if isinstance(error, (OSError, KeyError, ValueError)):
            return f"altclip-eval {task}: {str(error.args[0] if error.args else error).splitlines()[0]}"
        return None

    with processes_released_when_done():
        run_with_one_line_errors(
            f"altclip-eval {task}", lambda: evaluate(task, argv[1:]), wants_traceback(argv), user_error
        )


def evaluate(task: str, argv: list[str]) -> None:
    """Parse and check the flags, score the model, write and print the results."""
    args = parse(task, argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO,
        handlers=[logging.StreamHandler(sys.stdout)],
    )

    state = process_state(args.device)  # under torchrun: each process embeds its share of a retrieval set

    def make_embedder() -> Embedder:  # called once the data and class lists have been checked
        problem = unavailable_model(args.model) or incomplete_model_folder(args.model)
        if problem:
            raise PathError(f"--model {problem}")
        return Embedder.from_pretrained(
            args.model,
            device=str(state.device) if state is not None and args.device == "auto" else args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            max_text_length=args.max_text_length,
            quantization=args.quantization,
            reduced_decoding=args.reduced_decoding,
            onednn_linear=args.onednn_linear,
            linear_kernel=args.cpu_linear_kernel,
            dims=args.dims,
        )

    results = (run_zero_shot if task == "zeroshot" else run_retrieval)(args, make_embedder, state)
    for result in results if args.dims else ():
        result["dims"] = args.dims  # the embedding width scored, kept in results.json
    if state is not None and not state.is_main_process:
        return  # every process holds the gathered results; the first one writes them
    paths = write_results(results, args.output_dir, args.model)
    table = markdown_table(results)
    if args.compare == "reference":
        table, chart = write_comparison(results, args.model, paths["table"], table)
        paths["comparison_chart"] = chart
    print(table)
    print("Wrote " + ", ".join(str(path) for path in paths.values()))


if __name__ == "__main__":
    main()
