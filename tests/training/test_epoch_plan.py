"""Training's epoch plan over records: weighted draws per epoch, global batches across ranks."""

import pytest

from altclip.training.data.epoch_plan import GlobalBatchSampler, epoch_rng, weighted_draw


def test_weighted_draw_follows_the_weights_and_changes_its_subsample_per_epoch():
    first = weighted_draw([100, 10], [1, 1], epoch_rng(0, 0))
    counts = [int((first < 100).sum()), int((first >= 100).sum())]
    assert counts == [55, 55]  # the small source is repeated, the large one subsampled
    assert set(first[first >= 100].tolist()) == set(range(100, 110))
    second = weighted_draw([100, 10], [1, 1], epoch_rng(0, 1))
    assert set(first[first < 100].tolist()) != set(second[second < 100].tolist())
    assert weighted_draw([100, 10], None, epoch_rng(0, 0)).tolist() == list(range(110))


@pytest.mark.parametrize("rows", [64, 61, 3])
def test_global_batches_hold_every_row_once_and_every_rank_the_same_steps(rows):
    def batches(world):
        batch = 16 // world  # the same global batch of 16 rows whatever the number of processes
        return [list(GlobalBatchSampler([rows], batch, seed=3, rank=rank, world_size=world)) for rank in range(world)]

    two = batches(2)
    assert len(two[0]) == len(two[1]) == len(GlobalBatchSampler([rows], 8, world_size=2)) == -(-rows // 16)
    assert sorted(index for rank in two for batch in rank for index in batch) == list(range(rows))
    (one,) = batches(1)  # the same global batches, whatever the number of processes
    assert [sorted(a + b) for a, b in zip(*two)] == [sorted(batch) for batch in one]


def test_explicit_equal_weights_mix_half_and_half_unlike_no_weights(tmp_path):
    from altclip.training.data.sources import parse_sources, source_weights

    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text("{}\n")
    specs = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert source_weights(parse_sources(specs)) is None
    assert source_weights(parse_sources(specs, [1, 1])) == [1.0, 1.0]
    drawn = weighted_draw([90, 10], [1.0, 1.0], epoch_rng(0, 0))
    assert int((drawn >= 90).sum()) == 50  # the small source is repeated to half of the epoch
