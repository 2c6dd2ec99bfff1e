"""Prometheus metrics of one app instance (METRICS_ENABLED=true), and the no-op stand-in used otherwise.

Each PrometheusMetrics registers its metrics in a registry of its own, never prometheus_client's global one, so many
apps can live in one process (the tests build dozens). With several server processes (`serve --workers N`), the
CLI sets PROMETHEUS_MULTIPROC_DIR before the workers start: prometheus_client then keeps every value in a file per
process there, and the exposition merges the files of all processes (its multiprocess mode)."""

from __future__ import annotations

import os

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class NoMetrics:
    """Metrics off: every method does nothing (and prometheus_client is never imported)."""

    enabled = False

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        pass

    def model_call(self, model: str, texts: int, tokens: int, seconds: float) -> None:
        pass

    def queued_texts(self, texts: int, model: str = "") -> None:
        pass

    def cache_lookup(self, hits: int, misses: int) -> None:
        pass

    def rate_limited(self, window: str) -> None:
        pass

    def overloaded(self) -> None:
        pass

    def model_loaded(self, model: str, seconds: float) -> None:
        pass

    def close(self) -> None:
        pass


class PrometheusMetrics(NoMetrics):
    """The service's metrics, prefixed `embedding_`. The exposition is of this instance's registry, or, when
    PROMETHEUS_MULTIPROC_DIR is set, of the files of every process that wrote there."""

    enabled = True

    def __init__(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram

        self.content_type = CONTENT_TYPE_LATEST
        self.multiprocess_dir = os.environ.get(MULTIPROC_DIR_VARIABLE) or None
        self.registry = registry = CollectorRegistry()
        self._requests = Counter(
            "embedding_http_requests",
            "HTTP requests answered, by route template ('unmatched' for unknown paths), method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self._request_seconds = Histogram(
            "embedding_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template and method",
            ["route", "method"],
            registry=registry,
        )
        self._texts = Counter(
            "embedding_texts_embedded", "Texts the model computed (cache hits are not)", ["model"], registry=registry
        )
        self._tokens = Counter(
            "embedding_tokens_embedded",
            "Tokens of the texts the model computed (special tokens included, after truncation)",
            ["model"],
            registry=registry,
        )
        self._batch_size = Histogram(
            "embedding_model_batch_size", "Texts per model call", buckets=BATCH_SIZE_BUCKETS, registry=registry
        )
        self._call_seconds = Histogram("embedding_model_call_seconds", "Time of one model call", registry=registry)
        self._queue = Gauge(
            "embedding_queue_texts",
            "Texts of admitted requests waiting for or in a model call (what MAX_QUEUED_TEXTS bounds), per model",
            ["model"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._cache_hits = Counter(
            "embedding_cache_hits", "Distinct texts of a request found in the embedding cache", registry=registry
        )
        self._cache_misses = Counter(
            "embedding_cache_misses", "Distinct texts of a request not found in the embedding cache", registry=registry
        )
        self._rate_limited = Counter(
            "embedding_rate_limited",
            "Requests refused 429 for a caller's quota, by window (day: texts, minute: requests)",
            ["window"],
            registry=registry,
        )
        self._overloaded = Counter(
            "embedding_overloaded",
            "Requests refused 503 overloaded: the queue could not take or finish them in time",
            registry=registry,
        )
        self._load_seconds = Gauge(
            "embedding_model_load_seconds",
            "Time the served model took to load and warm up (the slowest live process)",
            ["model"],
            registry=registry,
            multiprocess_mode="livemax",
        )

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(route, method, str(status)).inc()
        self._request_seconds.labels(route, method).observe(seconds)

    def model_call(self, model: str, texts: int, tokens: int, seconds: float) -> None:
        self._texts.labels(model).inc(texts)
        self._tokens.labels(model).inc(tokens)
        self._batch_size.observe(texts)
        self._call_seconds.observe(seconds)

    def queued_texts(self, texts: int, model: str = "") -> None:
        self._queue.labels(model).set(texts)

    def cache_lookup(self, hits: int, misses: int) -> None:
        if hits:
            self._cache_hits.inc(hits)
        if misses:
            self._cache_misses.inc(misses)

    def rate_limited(self, window: str) -> None:
        self._rate_limited.labels(window).inc()

    def overloaded(self) -> None:
        self._overloaded.inc()

    def model_loaded(self, model: str, seconds: float) -> None:
        self._load_seconds.labels(model).set(seconds)

    def exposition(self) -> bytes:
        """The text exposition format: this registry's metrics, or every process's in multiprocess mode."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged)

    def close(self) -> None:
        """This process stops serving: in multiprocess mode its live gauges (queue, load time) leave the sums."""
        if self.multiprocess_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)


def prepare_multiprocess_dir(path: str) -> None:
    """Create the folder, or empty it of the value files of earlier runs (nothing else in it is touched)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
