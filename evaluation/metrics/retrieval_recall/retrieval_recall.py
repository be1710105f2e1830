"""Retrieval recall@k: the share of queries with at least one correct item among the first k retrieved."""

import datasets
import evaluate

_DESCRIPTION = """Each prediction is the list of retrieved item ids ranked best first (at least max(ks) long); each
reference is the list of ids that are correct for that query (several captions of one image, say). A query counts
as found at k if any correct id is among the first k."""

_KWARGS = """
Args:
    predictions (list of list of int): retrieved ids, best first.
    references (list of list of int): the correct ids of each query.
    ks (list of int, default [1, 5, 10]).
Returns:
    recall@k for each k: floats in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, ks=(1, 5, 10)):
        if not references:
            raise ValueError("No query to score.")
        results = {}
        for k in ks:
            found = sum(bool(set(ranked[:k]) & set(correct)) for ranked, correct in zip(predictions, references))
            results[f"recall@{k}"] = found / len(references)
        return results
