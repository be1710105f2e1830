"""The metrics against numbers worked out by hand from small similarity matrices."""

import pytest
import torch

from altclip.evaluation.metrics import load_metric
from altclip.evaluation.prompts import custom_prompts
from altclip.evaluation.retrieval import retrieval_scores, top_k_indices
from altclip.evaluation.zeroshot import class_embeddings, rank_classes

# 3 images x 6 captions; captions 0,1 describe image 0, 2,3 image 1, 4,5 image 2.
SIMILARITY = torch.tensor(
    [
        [0.9, 0.1, 0.2, 0.3, 0.0, 0.4],  # image 0: best caption 0 (its own)           -> i2t hit at 1
        [0.5, 0.1, 0.2, 0.3, 0.6, 0.0],  # image 1: ranks 4,0,3,2: first own (3) at 3   -> i2t hit at 5, not 1
        [0.1, 0.7, 0.3, 0.2, 0.0, 0.05],  # image 2: ranks 1,2,3,5,0,4: own 5 at 4      -> i2t hit at 5, not 1
    ]
)
CAPTION_IMAGE = [0, 0, 1, 1, 2, 2]
# text->image, per caption (column): best image 0, 2, 2, 0, 1, 0; true 0,0,1,1,2,2
#   caption 0: [0,1,2] hit@1; 1: [2,0,1] true 0 at 2; 2: [2,1,0] true 1 at 2; 3: [0,1,2] true 1 at 2;
#   caption 4: [1,0,2] true 2 at 3; 5: [0,2,1] true 2 at 2.  -> R@1 = 1/6, R@5 = R@10 = 1 (only 3 images)


def embeddings_for(similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text embeddings whose dot products are exactly `similarity` (texts are the unit vectors)."""
    return similarity.clone(), torch.eye(similarity.shape[1])


def test_retrieval_recall_matches_hand_count():
    images, texts = embeddings_for(SIMILARITY)
    scores = retrieval_scores(images, texts, CAPTION_IMAGE)
    assert scores["image_to_text_recall@1"] == pytest.approx(100 / 3, abs=0.01)
    assert scores["image_to_text_recall@5"] == 100.0
    assert scores["image_to_text_recall@10"] == 100.0
    assert scores["text_to_image_recall@1"] == pytest.approx(100 / 6, abs=0.01)
    assert scores["text_to_image_recall@5"] == 100.0
    expected_mean = (100 / 3 + 100 + 100 + 100 / 6 + 100 + 100) / 6
    assert scores["mean_recall"] == pytest.approx(expected_mean, abs=0.01)


def test_retrieval_counts_any_of_several_captions():
    metric = load_metric("retrieval_recall")
    result = metric.compute(predictions=[[3, 1, 2], [0, 2, 1]], references=[[1, 2], [1]], ks=[1, 2, 3])
    assert result == {"recall@1": 0.0, "recall@2": 0.5, "recall@3": 1.0}


def test_top_k_in_chunks_equals_one_shot():
    torch.manual_seed(0)
    queries, items = torch.randn(50, 8), torch.randn(30, 8)
    assert torch.equal(top_k_indices(queries, items, 7, chunk=6), (queries @ items.t()).topk(7, dim=1).indices)


def test_zero_shot_accuracy_matches_hand_count():
    # 4 images over 3 classes; scores per image over classes 0,1,2
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.1, 0.7, 0.4], [0.6, 0.5, 0.0]])
    labels = [0, 1, 1, 1]
    ranked = rank_classes(scores, torch.eye(3), k=2).tolist()  # [[0,1],[2,1],[1,2],[0,1]]
    assert ranked == [[0, 1], [2, 1], [1, 2], [0, 1]]
    result = load_metric("zeroshot_accuracy").compute(predictions=ranked, references=labels, ks=[1, 2])
    assert result["top1"] == pytest.approx(2 / 4)  # images 0 and 2
    assert result["top2"] == pytest.approx(4 / 4)
    # class 0: 1/1 right; class 1: 1/3 right -> mean per-class recall (1 + 1/3) / 2
    assert result["mean_per_class_recall"] == pytest.approx((1 + 1 / 3) / 2)


def test_zero_shot_accuracy_rejects_short_rankings():
    with pytest.raises(ValueError, match="top5 needs at least 5"):
        load_metric("zeroshot_accuracy").compute(predictions=[[0, 1]], references=[0], ks=[1, 5])


class FixedTextEmbedder:
    """Embeds each prompt as a fixed vector, so the class averaging can be checked by hand."""

    VECTORS = {"a cat": [1.0, 0.0], "the cat": [0.0, 1.0], "a dog": [-1.0, 0.0], "the dog": [-1.0, 0.0]}

    def texts(self, texts, description=""):
        return torch.tensor([self.VECTORS[text] for text in texts])


def test_class_embedding_is_renormalised_mean_of_template_embeddings():
    prompts = custom_prompts("en", ["cat", "dog"], ["a {c}", "the {c}"])
    embeddings = class_embeddings(FixedTextEmbedder(), prompts)
    half = 2**-0.5
    assert torch.allclose(embeddings, torch.tensor([[half, half], [-1.0, 0.0]]))
