"""Cross-request dynamic batching around any Embedder: token-budgeted, length-aware batches built from every queued
request, run in worker threads off the event loop, with per-request deadlines and admission by estimated cost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adapters.metrics import NoMetrics
from adapters.resilience import OutageLog
from domain.errors import BackendFailure, Overloaded, RequestTooLarge, Timeout
from domain.model import EmbedInput, TokenIds, Vectors
from domain.ports import Embedder, MetricsRecorder

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    """One caller's texts. `abandoned` is set from the event loop when the caller stops waiting."""

    embedder: Embedder
    texts: list[EmbedInput]
    deadline: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Vectors]
    remaining: int
    remaining_tokens: int
    queued_at: float = 0.0
    out: Vectors | None = None
    abandoned: bool = False
    failed: bool = False

    @property
    def dropped(self) -> bool:
        return self.abandoned or self.failed or time.monotonic() > self.deadline


@dataclass(eq=False)
class _Item:
    job: _Job
    index: int
    tokens: int

    @property
    def text(self) -> EmbedInput:
        return self.job.texts[self.index]


@dataclass
class BatchPolicy:
    """How batches are formed: at most `max_texts` texts and `max_tokens` padded tokens per model call; a worker
    that has just answered callers who are likely to come back waits briefly (at most `max_wait_s`) for them."""

    max_texts: int = 32
    max_tokens: int = 8192
    max_wait_s: float = 0.05


class _Throughput:
    """Tokens per second of the recent model calls (their tokens over their time, so the larger calls, which
    overload is made of, weigh most); written by the inference threads, read by admission."""

    def __init__(self, calls: int = 16) -> None:
        self._recent: deque[tuple[int, float]] = deque(maxlen=calls)
        self._lock = threading.Lock()
        self.tokens_per_s = 0.0  # 0: nothing measured yet

    def record(self, tokens: int, seconds: float) -> None:
        with self._lock:
            self._recent.append((tokens, max(seconds, 1e-6)))
            self.tokens_per_s = sum(t for t, _ in self._recent) / sum(s for _, s in self._recent)


class _ReturnRate:
    """The share of just-answered callers that send their next request within the gathering window: a moving
    average, starting at 1 (closed-loop clients are the case the window is for). Worker thread only."""

    def __init__(self, weight: float = 0.25) -> None:
        self.rate = 1.0
        self._weight = weight

    def record(self, share: float) -> None:
        self.rate += self._weight * (share - self.rate)


def plan_batches(items: Sequence[_Item], policy: BatchPolicy) -> list[list[_Item]]:
    """Partition items, longest first, into batches within the text and padded-token budgets."""
    ordered = sorted(items, key=lambda item: item.tokens, reverse=True)
    batches: list[list[_Item]] = []
    current: list[_Item] = []
    for item in ordered:
        longest = current[0].tokens if current else item.tokens
        if current and (len(current) >= policy.max_texts or longest * (len(current) + 1) > policy.max_tokens):
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches


class DynamicBatchingScheduler:
    """Runs the texts of all concurrent requests through the model in shared, length-sorted batches.

    Each model call takes the batch (of the length-sorted partition of everything queued) that holds the oldest
    queued text, so no request starves and similar lengths share a batch. A request whose deadline passes or whose
    caller goes away has its not-yet-started texts dropped. The deadline counts from `arrived` when the caller
    passes it (the request's arrival, before a cache lookup say), else from the call.

    Admission is by cost, not count: a request's texts are tokenized on arrival, and it is admitted only if the
    tokens queued ahead of it plus its own, at the recently measured tokens per second, finish within
    `admit_share` of the deadline; otherwise it gets Overloaded at once, with a Retry-After of when it would fit
    (checked first with a lower bound counted from words, so most refusals cost no tokenization), never later than
    the queued work's deadlines. A request that would not finish in time even alone gets RequestTooLarge (split it;
    a retry cannot help). A request arriving at an empty queue is otherwise admitted (nothing to wait for; its
    deadline still holds); before the first model call has been measured, at most one call's worth of tokens
    (`policy.max_tokens`) is queued. At most `max_queued_texts` texts wait or run whatever their cost (memory).
    """

    def __init__(
        self,
        timeout_s: float,
        max_queued_texts: int,
        policy: BatchPolicy | None = None,
        max_workers: int = 1,
        admit_share: float = 0.8,
        metrics: MetricsRecorder | None = None,
        cores: threading.Semaphore | None = None,
        model: str = "",
    ) -> None:
        self._model = model  # whose queue, in metrics
        self._metrics: MetricsRecorder = metrics or NoMetrics()
        self._timeout_s = timeout_s
        self._admit_share = admit_share
        self._max_queued = max_queued_texts
        self._policy = policy or BatchPolicy()
        self._max_workers = max_workers
        # shared by the batchers of several models in one process: at most this many model calls run at once
        self._cores = cores or threading.Semaphore(max_workers)
        self._inbox: deque[_Item] = deque()
        self._wakeup = threading.Event()
        self._select = threading.Lock()
        self._pending: list[_Item] = []
        self._answered = 0
        self._last_batch_end = 0.0
        self._last_batch_s = 0.0
        self._arrivals: deque[float] = deque(maxlen=1024)  # when the requests the worker has seen were queued
        self._returns = _ReturnRate()
        self._window = (0.0, 0.0, 0)  # the last gathering window: its start, end and the callers answered before it
        self._active: set[_Job] = set()
        self._reserved_texts = 0  # of requests being tokenized for admission (event loop only)
        self._reserved_tokens = 0
        self._throughput = _Throughput()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._abandoned_with: Exception | None = None  # once abandon_all() ran: what every later request gets
        # a failing backend is one ERROR (with its traceback) per failure streak and one line when it answers again
        self._outage = OutageLog(f"embedding backend ({model or 'model'})", level=logging.ERROR, traceback=True)

    @property
    def queued_texts(self) -> int:
        return sum(job.remaining for job in self._active)

    @property
    def queued_tokens(self) -> int:
        return sum(job.remaining_tokens for job in self._active)

    async def run(self, embedder: Embedder, texts: Sequence[EmbedInput], arrived: float | None = None) -> Vectors:
        if not texts:
            raise ValueError("nothing to embed")
        self._refuse_if_abandoned()
        arrived = time.monotonic() if arrived is None else arrived
        floor = _fewest_tokens(texts, embedder.info.spec.max_seq_length)
        self._admit(len(texts), floor, arrived)  # refuse early, without tokenizing
        self._reserved_texts += len(texts)  # held while tokenizing, so requests arriving meanwhile count them
        self._reserved_tokens += floor
        try:
            tokens = await _token_counts(embedder, texts)
        finally:
            self._reserved_texts -= len(texts)
            self._reserved_tokens -= floor
        self._refuse_if_abandoned()  # it was being tokenized when the drain ran out
        self._admit(len(texts), sum(tokens), arrived)
        self._start()
        loop = asyncio.get_running_loop()
        job = _Job(
            embedder=embedder,
            texts=list(texts),
            deadline=arrived + self._timeout_s,
            loop=loop,
            future=loop.create_future(),
            remaining=len(texts),
            remaining_tokens=sum(tokens),
            queued_at=time.monotonic(),
        )
        self._active.add(job)
        self._inbox.extend(_Item(job, i, count) for i, count in enumerate(tokens))
        self._wakeup.set()
        self._report_queue()
        try:
            return await asyncio.wait_for(job.future, timeout=max(0.0, job.deadline - time.monotonic()))
        except TimeoutError:
            raise Timeout(self._timeout_s) from None
        finally:
            job.abandoned = not job.future.done() or job.future.cancelled()
            self._active.discard(job)
            self._report_queue()

    def _report_queue(self) -> None:
        """The queue-depth gauge, set on the event loop (which alone changes the set of active requests)."""
        if self._metrics.enabled:
            self._metrics.queued_texts(self.queued_texts, self._model)

    def _admit(self, texts: int, tokens: int, arrived: float) -> None:
        """Refuse at once what the queue cannot hold or would not finish in time behind the work already queued
        (or being tokenized), `admit_share` of the request's deadline counted from its arrival."""
        queued = self.queued_texts + self._reserved_texts
        ahead = self.queued_tokens + self._reserved_tokens
        rate = self._throughput.tokens_per_s * self._max_workers
        if self._closed or (queued and queued + texts > self._max_queued):
            self._metrics.overloaded()
            raise Overloaded(retry_after_s=self._retry_after(ahead))
        left_s = arrived + self._timeout_s - time.monotonic()
        if rate > 0 and tokens / rate > left_s:  # not even alone: neither waiting nor retrying helps
            # what fits in half the deadline: the measured rate is of model calls alone, a request takes longer
            fitting = max(1, int(texts * left_s * SPLIT_SHARE * rate / tokens))
            raise RequestTooLarge(texts, tokens / rate, self._timeout_s, fitting)
        if not ahead:
            return
        if rate <= 0:  # nothing measured yet: no more than one model call's worth until the first one tells
            if ahead + tokens > self._policy.max_tokens:
                self._metrics.overloaded()
                raise Overloaded(retry_after_s=1)
            return
        finish_s = (ahead + tokens) / rate
        budget_s = arrived + self._timeout_s * self._admit_share - time.monotonic()
        if finish_s > budget_s:
            log.debug(
                "refused %d tokens behind %d at %.0f tokens/s: %.1f s > %.1f s", tokens, ahead, rate, finish_s, budget_s
            )
            self._metrics.overloaded()
            raise Overloaded(retry_after_s=self._capped(finish_s - budget_s))

    def _retry_after(self, queued_tokens: int) -> int:
        rate = self._throughput.tokens_per_s * self._max_workers
        return self._capped(queued_tokens / rate if rate > 0 else self._timeout_s / 2)

    def _capped(self, seconds: float) -> int:
        """A Retry-After of `seconds`, but never later than the queued work's deadlines: by then whatever has not
        run is dropped, however slow the estimate says it is."""
        drained_s = max((job.deadline for job in self._active), default=0.0) - time.monotonic()
        return _whole_seconds(min(seconds, max(drained_s, 0.0)))

    def _start(self) -> None:
        if self._threads:
            return
        for number in range(self._max_workers):
            name = f"inference-{self._model}-{number}" if self._model else f"inference-{number}"
            thread = threading.Thread(target=self._work, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def abandon_all(self, error: Exception) -> int:
        """Answer every request still queued or running with `error` now (a drain that ran out of time: its callers
        get a clear answer, not a cut connection); their texts not yet started are dropped. Requests that reach the
        queue later (being tokenized now, or still on their way: key lookups, the cache) get `error` too, at once.
        Event loop only."""
        self._abandoned_with = error
        abandoned = 0
        for job in list(self._active):
            job.failed = True  # its items are dropped (run() resets `abandoned` once its future is done)
            if not job.future.done():
                job.future.set_exception(error)
                abandoned += 1
        self._wakeup.set()
        return abandoned

    def _refuse_if_abandoned(self) -> None:
        if self._abandoned_with is not None:
            raise self._abandoned_with.with_traceback(None)  # no traceback gathered across callers

    def shutdown(self) -> None:
        self._closed = True
        self._wakeup.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    # --- worker side -------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._select:
                batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _drain(self) -> None:
        while self._inbox:
            item = self._inbox.popleft()
            if item.index == 0:
                self._arrivals.append(item.job.queued_at)
            self._pending.append(item)
        self._pending = [item for item in self._pending if not item.job.dropped]

    def _wait_for_work(self) -> bool:
        while True:
            self._drain()
            if self._pending:
                return True
            if self._closed:
                return False
            self._wakeup.wait()
            self._wakeup.clear()

    def _gather_stragglers(self) -> None:
        """Callers answered by the last batch tend to send their next texts right away (a client with more to embed,
        a pool of workers each waiting for its answer). Right after a batch (not after idling), and while the next
        batch is not full, wait for those of them that are likely to return and have not yet: at most max_wait_s,
        and at most a quarter of the last batch's run time. Without this, closed-loop callers split into groups that
        alternate in half-size batches. A lone caller never waits: the one caller answered is the one now queued.
        How many come back is learnt (`_returns`): from what arrived in each such window, waited for or not, so a
        service whose answered callers do not come back soon stops waiting."""
        now = time.monotonic()
        # one reading of the last call (another inference thread may finish one meanwhile)
        end, call_s, answered = self._last_batch_end, self._last_batch_s, self._answered
        window = min(self._policy.max_wait_s, call_s / 4)
        self._learn_returns()
        recently = now - end <= max(self._policy.max_wait_s, call_s)
        self._window = (end, end + window, answered)
        if not answered or not recently or window <= 0:
            return
        expected = round(answered * self._returns.rate)
        while not self._closed and self._arrived_since(end) < expected:
            if sum(1 for item in self._pending if not item.job.dropped) >= self._policy.max_texts:
                break
            left = end + window - time.monotonic()
            if left <= 0:
                break
            self._wakeup.wait(left)
            self._wakeup.clear()
            self._drain()

    def _arrived_since(self, moment: float, until: float = math.inf) -> int:
        """Requests queued after `moment` (and by `until`), of those the worker has seen."""
        count = 0
        for queued_at in reversed(self._arrivals):
            if queued_at <= moment:
                break
            count += queued_at <= until
        return count

    def _learn_returns(self) -> None:
        """How many of the callers answered at the end of the previous window came back within it: the whole
        window has passed since (a batch ran in between), and every request queued in it has been seen."""
        start, end, answered = self._window
        if answered and time.monotonic() > end:
            self._returns.record(min(1.0, self._arrived_since(start, end) / answered))
        self._window = (0.0, 0.0, 0)

    def _next_batch(self) -> list[_Item] | None:
        if not self._wait_for_work():
            return None
        self._gather_stragglers()
        if not self._pending:
            return self._next_batch()
        head = self._pending[0]
        same_model = [item for item in self._pending if item.job.embedder is head.job.embedder]
        batch = next(b for b in plan_batches(same_model, self._policy) if head in b)
        chosen = set(map(id, batch))
        self._pending = [item for item in self._pending if id(item) not in chosen]
        return batch

    def _run(self, batch: list[_Item]) -> None:
        self._answered = self._compute(batch)

    def _compute(self, batch: list[_Item], retry_of: float | None = None) -> int:
        """One model call; returns how many requests it completed. When the backend fails on texts of several
        requests, each request is retried alone, so only the one whose own texts the backend cannot take fails.
        `retry_of`: when the failed call these retries narrow down began (their failures are that one's, for the
        outage log)."""
        embedder = batch[0].job.embedder
        try:
            with self._cores:
                started = time.monotonic()
                vectors = embedder.embed([item.text for item in batch])
        except Exception as exc:
            self._last_batch_end = time.monotonic()
            jobs = list(dict.fromkeys(item.job for item in batch))
            begun = started if retry_of is None else retry_of
            self._outage.failed(f"call on {len(batch)} texts of {len(jobs)} requests", exc, begun)
            if len(jobs) == 1:
                self._fail(jobs[0])
                return 0
            log.debug("retrying each of the %d requests of the failed call alone", len(jobs))
            alone = ([item for item in batch if item.job is job] for job in jobs if not job.dropped)
            return sum(self._compute(items, begun) for items in alone)
        self._outage.answered()
        # before any answer goes out: a caller's next request must count as arriving after this call
        self._last_batch_end = time.monotonic()
        self._last_batch_s = self._last_batch_end - started
        if log.isEnabledFor(logging.DEBUG):
            longest = max(item.tokens for item in batch)
            log.debug(
                "batch of %d texts from %d requests, %d padded tokens, %.1f ms, %d texts queued",
                len(batch),
                len({id(item.job) for item in batch}),
                longest * len(batch),
                self._last_batch_s * 1000,
                len(self._pending) + len(self._inbox),
            )
        batch_tokens = sum(item.tokens for item in batch)
        self._throughput.record(batch_tokens, self._last_batch_s)
        if self._metrics.enabled:
            self._metrics.model_call(embedder.info.spec.name, len(batch), batch_tokens, self._last_batch_s)
        answered = 0
        for item, vector in zip(batch, vectors, strict=True):
            job = item.job
            if job.failed:
                continue
            if job.out is None:
                job.out = np.empty((len(job.texts), vectors.shape[1]), dtype=np.float32)
            job.out[item.index] = vector
            job.remaining_tokens -= item.tokens
            job.remaining -= 1
            if job.remaining == 0:
                answered += 1
                job.loop.call_soon_threadsafe(_resolve, job.future, job.out)
        if self._metrics.enabled:  # texts of requests still waiting for others left the queue
            with contextlib.suppress(RuntimeError):  # that event loop has closed
                batch[0].job.loop.call_soon_threadsafe(self._report_queue)
        return answered

    def _fail(self, job: _Job) -> None:
        if not job.failed:
            job.failed = True
            job.remaining = job.remaining_tokens = 0
            job.loop.call_soon_threadsafe(_reject, job.future)


SPLIT_SHARE = 0.5  # a request too large for its deadline is told how many of its inputs fit in this share of it
INLINE_COUNT_CHARS = 4096  # tokenizing more than this goes to a thread (32 texts of 300 words take ~15 ms here)


def _whole_seconds(seconds: float) -> int:
    """A Retry-After value: whole seconds, 1 to 60."""
    return int(min(60, max(1, math.ceil(seconds))))


def _fewest_tokens(texts: Sequence[EmbedInput], max_seq_length: int) -> int:
    """A lower bound of the tokens `texts` take, from words alone: the tokenizers served split on whitespace, and
    every word becomes at least one token besides the two special ones (truncated at the model's limit). Token ids
    count 1: padding sent along is dropped, so their length bounds nothing."""
    return sum(
        1 if isinstance(text, TokenIds) else min(max_seq_length, len(text.split(maxsplit=max_seq_length)) + 2)
        for text in texts
    )


async def _token_counts(embedder: Embedder, texts: Sequence[EmbedInput]) -> list[int]:
    """Tokens each text takes in a model call, at least 1; estimated from characters if the tokenizer fails."""
    try:
        if sum(len(text) for text in texts) <= INLINE_COUNT_CHARS:
            counts = embedder.token_counts(texts)
        else:
            counts = await asyncio.to_thread(embedder.token_counts, texts)
    except Exception:
        log.exception("token counting failed; estimating from characters")
        counts = [len(text) // 4 + 2 for text in texts]
    return [max(1, count) for count in counts]


def _resolve(future: asyncio.Future[Vectors], vectors: Vectors) -> None:
    if not future.done():
        future.set_result(vectors)


def _reject(future: asyncio.Future[Vectors]) -> None:
    if not future.done():
        future.set_exception(BackendFailure())
