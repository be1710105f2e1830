"""The server's counters and latency histogram in Prometheus' text format (``GET /metrics``).

Hand-written because prometheus_client is not among this package's dependencies and the server needs three series;
the output follows the exposition format (``# TYPE``, cumulative ``_bucket{le=...}``, ``_sum``, ``_count``)."""

import threading
from collections import Counter

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets, self.counts, self.total, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        for number, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[number] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        lines = [f"# TYPE {name} histogram"]
        lines += [f'{name}_bucket{{le="{bound}"}} {count}' for bound, count in zip(self.buckets, self.counts)]
        lines += [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.total:.6f}",
            f"{name}_count {self.count}",
        ]
        return lines


class Metrics:
    """Queries by index and kind, errors by HTTP status, request latency, batch sizes; safe across threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.queries: Counter = Counter()
        self.errors: Counter = Counter()
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batches = Histogram(BATCH_BUCKETS)

    def observe_query(self, index: str, kind: str, seconds: float) -> None:
        with self._lock:
            self.queries[(index, kind)] += 1
            self.latency.observe(seconds)

    def observe_error(self, status: int) -> None:
        with self._lock:
            self.errors[status] += 1

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batches.observe(size)

    def text(self) -> str:
        with self._lock:
            lines = ["# TYPE altclip_search_queries_total counter"]
            lines += [
                f'altclip_search_queries_total{{index="{index}",kind="{kind}"}} {count}'
                for (index, kind), count in sorted(self.queries.items())
            ]
            lines.append("# TYPE altclip_search_errors_total counter")
            lines += [f'altclip_search_errors_total{{status="{s}"}} {c}' for s, c in sorted(self.errors.items())]
            lines += self.latency.lines("altclip_search_latency_seconds")
            lines += self.batches.lines("altclip_search_batch_size")
        return "\n".join(lines) + "\n"
