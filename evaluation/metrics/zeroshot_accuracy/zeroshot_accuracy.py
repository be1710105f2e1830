"""Zero-shot classification accuracy: top-1, top-5 and mean per-class recall from ranked class predictions."""

import datasets
import evaluate

_DESCRIPTION = """Each prediction is the list of class labels ranked by score (best first, at least k long); each
reference is the true label. top-k is the share of samples whose label is among the first k predictions;
mean per-class recall averages top-1 recall over the classes present in the references (balanced accuracy)."""

_KWARGS = """
Args:
    predictions (list of list of int): class labels ranked best first.
    references (list of int): the true labels.
    ks (list of int, default [1, 5]): the k of each top-k accuracy.
Returns:
    top1, top5 (or top{k} for each k), mean_per_class_recall: floats in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class ZeroshotAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, ks=(1, 5)):
        if not references:
            raise ValueError("No prediction to score.")
        results = {}
        for k in ks:
            if any(len(ranked) < k for ranked in predictions):
                raise ValueError(f"top{k} needs at least {k} ranked labels per prediction.")
            results[f"top{k}"] = sum(label in ranked[:k] for ranked, label in zip(predictions, references)) / len(
                references
            )
        per_class = {}
        for ranked, label in zip(predictions, references):
            hits, total = per_class.get(label, (0, 0))
            per_class[label] = (hits + (ranked[0] == label), total + 1)
        results["mean_per_class_recall"] = sum(h / t for h, t in per_class.values()) / len(per_class)
        return results
