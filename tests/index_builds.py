"""Flags of ``altclip-index build`` as the search tests run it: small parts and batches, no workers."""


def build_flags(model, output, *sources, part_size: int = 3) -> list[str]:
    return [
        "build", "--model", str(model), "--output", str(output), "--images", *map(str, sources),
        "--part_size", str(part_size), "--num_workers", "0", "--batch_size", "2",
    ]  # fmt: skip
