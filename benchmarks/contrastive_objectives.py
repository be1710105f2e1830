"""The cost of stage 2's objectives beside InfoNCE: SigLIP's sigmoid loss and Matryoshka prefixes, side by side.

Times forward + backward of the loss alone (one process; the towers, which dominate a step, are not run) on random
L2-normalised embeddings of a released shape (width 768) for a few batch sizes, and prints each objective's time
over InfoNCE's (median of repeats after a warm-up). A ratio above 1 is slower than InfoNCE.

    python -m benchmarks.contrastive_objectives [--batches 256,1024] [--repeats 5]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from altclip.training.loop.contrastive_objective import contrastive_objective

WIDTH = 768
OBJECTIVES = {
    "infonce": dict(loss="infonce"),
    "siglip": dict(loss="siglip"),
    "infonce + matryoshka 192,384": dict(loss="infonce", widths=[192, 384, WIDTH]),
    "siglip + matryoshka 192,384": dict(loss="siglip", widths=[192, 384, WIDTH]),
}


def seconds(objective, batch: int, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(batch, WIDTH, generator=generator), dim=-1)
    texts = torch.randn(batch, WIDTH, generator=generator, requires_grad=True)
    scale, bias = torch.tensor([10.0], requires_grad=True), torch.tensor([-10.0], requires_grad=True)
    times = []
    for repeat in range(repeats + 1):
        started = time.perf_counter()
        objective(images, F.normalize(texts, dim=-1), scale, bias).backward()
        if repeat:  # the first is the warm-up
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="256,1024")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"loss forward+backward, width {WIDTH}, {torch.get_num_threads()} threads; ratio = time / InfoNCE's time")
    for batch in (int(value) for value in args.batches.split(",")):
        reference = None
        for name, options in OBJECTIVES.items():
            took = seconds(contrastive_objective(**options), batch, args.repeats)
            reference = reference or took
            print(f"batch {batch:5d}  {name:30s} {1000 * took:8.2f} ms  x{took / reference:.2f}")


if __name__ == "__main__":
    main()
