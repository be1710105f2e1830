"""Webdataset shards streamed for training: each sample once per epoch, all ranks the same steps, exact resumption.

webdataset reads the shards (its tar member iterator and key grouping, its ``pipe:`` opener; fsspec for other
URLs). What it lacks, and this module adds: each epoch's shards (reshuffled, drawn by source weight) are cut into
one sample range per ``ranks x workers`` reader (`shard_plan`: readers differ by at most one sample); every reader
yields the same number of batches, never larger than asked (its samples split evenly over them, so no rank waits
at the end); and the sample-level shuffle buffer is driven by a
seeded generator over sample *slots*, so a resumed run replays the buffer on integers, re-reads only the raw bytes
still in the buffer and decodes nothing already trained.

A slot is a position in a shard's known size (``sizes.json``, else counted). A shard that cannot be opened, is cut
short, or holds a broken sample loses exactly those slots: each is counted as a skipped sample with its location.
"""

import logging
import random
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import IterableDataset
from webdataset.tariterators import group_by_keys, tar_file_iterator

from altclip.common.records import DataFormatError, Skipped

from .epoch_plan import epoch_rng
from .shard_checks import CutShard, EndCheckedStream, ShardCount, loss_reason, planned_sizes
from .shard_plan import SPLIT, ShardPlan
from .sources import Source, is_remote, open_stream, read_sizes_file, source_weights

logger = logging.getLogger(__name__)

DEFAULT_SHUFFLE_BUFFER = 5000


def shard_samples(url: str) -> Iterator[dict]:
    """Raw samples of one shard: {member suffix: bytes, "where": "url:key"}; raises on a broken or cut tar (also
    one cut inside a header, which tarfile takes for the end: `CutShard`)."""
    with open_stream(url) as stream:
        checked = EndCheckedStream(stream)
        members = ({**member, "__url__": url} for member in tar_file_iterator(checked))
        for sample in group_by_keys(members):
            sample["where"] = f"{url}:{sample['__key__']}"
            yield sample
        if not checked.is_complete():
            raise CutShard("no tar end-of-archive marker: the shard is cut")


def shard_sizes(sources: Sequence[Source]) -> list[int]:
    """Samples of every shard of `sources`, from ``sizes.json`` beside them; local shards without it are counted
    (reading them once); remote ones need it."""
    sizes: list[int] = []
    counts: dict[int, ShardCount] = {}  # shards counted here, by position
    listings: dict[str, dict[str, int] | None] = {}
    for source in sources:
        for url in source.urls:
            folder = url.rsplit("/", 1)[0]
            if folder not in listings:
                listings[folder] = read_sizes_file(url)
            name = url.rsplit("/", 1)[-1]
            known = (listings[folder] or {}).get(name)
            if known is None:
                if is_remote(url):
                    raise DataFormatError(
                        f"{url}: no sizes.json beside the remote shards names its size; write one ({{shard name: "
                        "samples}, as img2dataset/webdataset tools do) so that every rank can plan the epoch."
                    )
                counts[len(sizes)] = count_shard(url)
                known = counts[len(sizes)].found
            sizes.append(known)
    urls = [url for source in sources for url in source.urls]
    return planned_sizes(urls, sizes, counts, [len(source.urls) for source in sources])


def count_shard(url: str) -> ShardCount:
    """The samples a shard holds, read through, and the error that cut the read short (`planned_sizes` adds the
    samples it lost)."""
    count = 0
    try:
        for _ in shard_samples(url):
            count += 1
    except Exception as error:  # a broken shard still counts what it holds
        return ShardCount(url, count, error)
    return ShardCount(url, count)


def _count_samples(url: str) -> int:
    """One shard's planned size on its own (no siblings to estimate from): what it holds, plus one for a cut or
    unreadable shard (the sample the cut went through) or an empty one, so that the loss is counted."""
    count = count_shard(url)
    return count.found + (1 if count.error is not None or not count.found else 0)


def shuffled_slots(count: int, buffer_size: int, rng: random.Random) -> Iterator[tuple[int, list[int], int]]:
    """Slots 0..count-1 through a shuffle buffer of `buffer_size`: yields (slot, buffer, next slot to pull) after
    each emission. Each slot comes out exactly once; the order depends on the generator only, never on the data."""
    buffer = list(range(min(count, buffer_size)))
    pulled = len(buffer)
    while buffer:
        index = rng.randrange(len(buffer))
        slot = buffer[index]
        if pulled < count:
            buffer[index] = pulled
            pulled += 1
        else:
            buffer[index] = buffer[-1]
            buffer.pop()
        yield slot, buffer, pulled


class SlotReader:
    """The raw samples of a reader's shards by slot, read forward once; only slots still to come are kept."""

    def __init__(
        self,
        urls: Sequence[str],
        sizes: Sequence[int],
        wanted: Callable[[int], bool],
        offsets: Sequence[int] | None = None,
        shard_sizes: Sequence[int] | None = None,
    ):
        """`sizes[i]` samples of shard `urls[i]` from its sample `offsets[i]` on (default 0: from its start);
        `shard_sizes[i]`: the whole shard's planned size (default: offset + size), so that samples a shard holds
        beyond it are counted only by the reader whose piece ends where the shard does."""
        self.urls, self.sizes, self.wanted = list(urls), list(sizes), wanted
        self.offsets = list(offsets) if offsets is not None else [0] * len(self.urls)
        self.shard_sizes = (
            list(shard_sizes) if shard_sizes is not None else [o + s for o, s in zip(self.offsets, self.sizes)]
        )
        self.starts = [sum(self.sizes[:index]) for index in range(len(self.sizes))]
        self.kept: dict[int, dict | Skipped] = {}
        self.shard, self.samples, self.position = -1, iter(()), 0
        self.unplanned: list[Skipped] = []  # samples past a shard's planned size, counted with the next batch

    def _lose_rest(self, reason: str) -> None:
        """The current shard's unread slots become skipped samples."""
        url, start, size = self.urls[self.shard], self.starts[self.shard], self.sizes[self.shard]
        for index in range(self.position - start, size):
            if self.wanted(start + index):
                self.kept[start + index] = Skipped(f"{url}#{self.offsets[self.shard] + index}", reason)
        self.position = start + size

    def _next_shard(self) -> None:
        self.shard += 1
        self.position = self.starts[self.shard]
        self.samples = shard_samples(self.urls[self.shard])
        if self.offsets[self.shard] and self.sizes[self.shard]:
            self._skip_members(self.offsets[self.shard])

    def _skip_members(self, count: int) -> None:
        """Reads past the shard's first `count` samples (a piece that starts inside a shard; see `shard_plan`)."""
        for skipped in range(count):
            try:
                next(self.samples)
            except StopIteration:
                self._lose_rest(f"shard ended after {skipped} samples, before its planned sample {count}")
                return
            except Exception as error:  # unreadable, truncated or not a tar: webdataset/tarfile raise many types
                self._lose_rest(loss_reason(error))
                return

    def _read_one(self) -> None:
        if self.shard < 0 or self.position >= self.starts[self.shard] + self.sizes[self.shard]:
            self._next_shard()
            if self.sizes[self.shard] == 0 or self.position >= self.starts[self.shard] + self.sizes[self.shard]:
                return
        index, size = self.position - self.starts[self.shard], self.sizes[self.shard]
        try:
            sample = next(self.samples)
        except StopIteration:
            url, found, whole = self.urls[self.shard], self.offsets[self.shard] + index, self.shard_sizes[self.shard]
            if found == 0:
                self._lose_rest("empty shard (no sample)")
                return
            logger.warning(
                "%s holds %d samples, not %d as planned (sizes.json says %d, or the shard changed since it was "
                "counted); the %d missing are counted as skipped",
                *(url, found, whole, whole, whole - found),
            )
            self._lose_rest(f"shard ended after {found} of {whole} samples")
            return
        except Exception as error:  # unreadable, truncated or not a tar: webdataset/tarfile raise many types
            self._lose_rest(loss_reason(error))
            return
        if self.wanted(self.position):
            self.kept[self.position] = sample
        self.position += 1
        whole = self.shard_sizes[self.shard]
        if self.position == self.starts[self.shard] + size and self.offsets[self.shard] + size == whole:
            self._count_unplanned(whole)

    def _count_unplanned(self, size: int) -> None:
        """Reads on past a shard's planned size: samples there (sizes.json says fewer than it holds) are not
        trained, so they are named and counted (`self.unplanned`); a cut right after the planned ones is named."""
        url, extra = self.urls[self.shard], 0
        try:
            for _ in self.samples:
                extra += 1
        except Exception as error:
            logger.warning("%s: %s after its %d planned samples", url, loss_reason(error), size + extra)
        if extra:
            logger.warning(
                "%s holds %d samples where %d were planned (sizes.json says %d); the %d beyond are not trained and "
                "are counted as skipped: correct sizes.json",
                *(url, size + extra, size, size, extra),
            )
            reason = f"not in sizes.json (it says {size} samples, the shard holds {size + extra})"
            self.unplanned += [Skipped(f"{url}#{size + index}", reason) for index in range(extra)]

    def skip_to(self, slot: int) -> None:
        """Moves past whole shards that end before `slot` without opening them."""
        while self.shard + 1 < len(self.urls) and self.starts[self.shard + 1] + self.sizes[self.shard + 1] <= slot:
            self.shard += 1
        if self.shard >= 0:
            self.position = self.starts[self.shard] + self.sizes[self.shard]

    def take(self, slot: int) -> dict | Skipped:
        while slot not in self.kept:
            self._read_one()
        return self.kept.pop(slot)


class ShardStream(IterableDataset):
    """Batches of decoded samples from webdataset shards for one rank; its DataLoader uses ``batch_size=None``.

    `decode_sample` turns a raw sample into model inputs (or a ``{"skipped": ...}`` row) inside the worker. After
    `resume_at(epoch, batches)` the first `batches` items of that epoch are ``None`` placeholders, which
    accelerate's ``skip_first_batches`` drops without reading a shard.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        decode_sample: Callable[[dict], dict],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        shuffle: bool = True,
        sizes: Sequence[int] | None = None,
        mode: str = SPLIT,
        samples_per_epoch: int | None = None,
    ):
        """`sizes`: samples of every shard, as `shard_sizes` finds them (default) or as the caller resolved them
        (`sizing.resolve_shard_sizes`); `mode` and `samples_per_epoch`: see `shard_plan.ShardPlan`."""
        self.urls = [url for source in sources for url in source.urls]
        self.sizes = list(sizes) if sizes is not None else shard_sizes(sources)
        self.shards_per_source = [len(source.urls) for source in sources]
        self.weights = source_weights(sources)
        self.decode_sample, self.batch_size = decode_sample, batch_size
        self.rank, self.world_size, self.workers = rank, world_size, max(num_workers, 1)
        self.seed, self.shuffle_buffer, self.shuffle = seed, shuffle_buffer if shuffle else 1, shuffle
        self.epoch, self.resume_epoch, self.resume_batches = 0, -1, 0
        self.shard_plan = ShardPlan(
            self.sizes,
            self.shards_per_source,
            self.weights,
            readers=self.world_size * self.workers,
            batch_size=batch_size,
            mode=mode,
            samples=samples_per_epoch,
            seed=seed,
            shuffle=shuffle,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches: int) -> None:
        """The next iteration of `epoch` starts after its first `batches` batches (of this rank)."""
        self.epoch, self.resume_epoch, self.resume_batches = epoch, epoch, batches

    def epoch_shards(self) -> list[int]:
        """Shards of this epoch in reading order (mode split; weighted per source), the same on all ranks."""
        return self.shard_plan.epoch_pieces(self.epoch).shard.tolist()

    def batches_per_reader(self) -> int:
        """The same for every reader and epoch (the Trainer fixes its steps per epoch once): see `shard_plan`."""
        return self.shard_plan.batches_per_reader

    def __len__(self) -> int:
        return self.batches_per_reader() * self.workers

    def __iter__(self) -> Iterator[list[dict] | None]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        reader = self.rank * self.workers + worker
        pieces = self.shard_plan.reader_pieces(self.epoch, reader)
        sizes = pieces.lengths.tolist()
        batch_sizes = self.shard_plan.reader_batch_sizes(reader)
        done = self.resume_batches if self.epoch == self.resume_epoch else 0
        skipped_batches = len(range(worker, done, self.workers))  # batch i of the rank came from worker i % workers
        emitted = sum(batch_sizes[:skipped_batches])
        rng = random.Random(int(epoch_rng(self.seed, self.epoch, reader).integers(2**63)))
        order = shuffled_slots(sum(sizes), self.shuffle_buffer, rng)
        buffer, pulled = [], 0
        for _ in range(emitted):  # replay the trained part on integers only
            _, buffer, pulled = next(order)
        alive = set(buffer)
        urls = [self.urls[shard] for shard in pieces.shard.tolist()]
        slots = SlotReader(
            urls,
            sizes,
            lambda s: s >= pulled or s in alive,
            offsets=pieces.start.tolist(),
            shard_sizes=[self.sizes[shard] for shard in pieces.shard.tolist()],
        )
        slots.skip_to(min(alive, default=pulled))
        for _ in range(skipped_batches):
            yield None
        for size in batch_sizes[skipped_batches:]:
            batch = []
            for _ in range(size):
                raw = slots.take(next(order)[0])
                batch.append({"skipped": raw} if isinstance(raw, Skipped) else self._decoded(raw))
            batch += [{"skipped": skipped} for skipped in slots.unplanned]  # counted, never given to the model
            slots.unplanned.clear()
            yield batch

    def _decoded(self, raw: dict) -> dict:
        try:
            return self.decode_sample(raw)
        except Exception as error:  # a sample the decoder did not foresee must not stop the run
            return {"skipped": Skipped(raw.get("where", "?"), f"undecodable sample ({type(error).__name__}: {error})")}
