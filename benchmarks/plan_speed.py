"""Seconds to plan a LAION-sized epoch (41,408 shards of ~10k samples) for 64 ranks x 8 workers, next to a plain
shuffle of the shard list (the least any epoch plan does): what each DataLoader worker pays at every epoch start
(its own reader's range) and what ``altclip-train plan`` pays (all 512 readers).

    python -m benchmarks.plan_speed
"""

import time

import numpy as np

from altclip.training.data.epoch_plan import epoch_rng
from altclip.training.data.shard_plan import ShardPlan


def seconds(function, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    sizes = np.random.default_rng(0).integers(9_500, 10_500, size=41_408).tolist()
    for weights, per_source in ((None, [41_408]), ([0.8, 0.2], [31_408, 10_000])):
        plan = ShardPlan(sizes, per_source, weights, readers=512, batch_size=512)
        shuffle = seconds(lambda: epoch_rng(0, 0).permutation(len(sizes)))
        one = seconds(lambda: plan.reader_pieces(0, 137))

        def every_reader():
            pieces = plan.epoch_pieces(0)
            for reader in range(plan.readers):
                plan.reader_pieces(0, reader, pieces)

        everything = seconds(every_reader, repeats=3)
        print(
            f"weights {weights}: shuffle only {shuffle * 1e3:.1f} ms; one reader's plan {one * 1e3:.1f} ms "
            f"({one / shuffle:.1f}x); all 512 readers {everything:.2f} s ({everything / shuffle:.0f}x)"
        )


if __name__ == "__main__":
    main()
