"""One contract, every rate limiter (in this process, real Redis); the store's atomicity across clients, threads and
processes; and the failover to counting in this process while a real redis-server is down."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import pytest
import redis

from adapters.rate_limiting import InMemoryRateLimiter, RedisRateLimiter
from adapters.resilience import FailoverRateLimiter
from domain.model import Admission, Charge, WindowState
from domain.ports import RateLimiter
from tests.support import free_port, redis_server

REDIS_URL = "redis://127.0.0.1:6379/0"
DAY_START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
NOW = DAY_START + 10 * 3600 + 30  # 10:00:30 UTC


def per_minute(limit: int, cost: int = 1, key: str = "acct-1") -> Charge:
    return Charge("minute", key, limit, 60, cost)


def per_day(limit: int, cost: int = 1, key: str = "acct-1") -> Charge:
    return Charge("day", key, limit, 86_400, cost)


def used(limiter: RateLimiter, charge: Charge, now: float = NOW) -> int:
    """The counter of `charge`'s window, read with a cost-0 hit (which consumes nothing)."""
    return limiter.hit([replace(charge, cost=0)], now).windows[0].used


@contextmanager
def redis_prefix() -> Iterator[str]:
    """A prefix no other test uses on the real Redis; its keys are deleted afterwards."""
    prefix = f"test-rl-{uuid.uuid4().hex}"
    try:
        yield prefix
    finally:
        with redis.Redis.from_url(REDIS_URL) as client:
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest) -> Iterator[RateLimiter]:
    if request.param == "memory":
        yield InMemoryRateLimiter()
    else:
        with redis_prefix() as prefix, redis.Redis.from_url(REDIS_URL) as client:
            yield RedisRateLimiter(client, prefix)


def test_allows_up_to_the_limit(limiter: RateLimiter) -> None:
    charge = per_minute(limit=3)
    answers = [limiter.hit([charge], NOW) for _ in range(4)]
    assert [answer.allowed for answer in answers] == [True, True, True, False]
    assert [answer.windows[0].used for answer in answers] == [1, 2, 3, 3]
    assert [answer.windows[0].remaining for answer in answers] == [2, 1, 0, 0]
    assert answers[3].refused == WindowState(charge, 3, 30.0)


def test_a_refused_charge_consumes_nothing(limiter: RateLimiter) -> None:
    assert limiter.hit([per_minute(limit=10, cost=7)], NOW).allowed
    refused = limiter.hit([per_minute(limit=10, cost=4)], NOW)
    assert refused.refused == WindowState(per_minute(limit=10, cost=4), 7, 30.0)
    assert refused.windows == (refused.refused,)
    assert limiter.hit([per_minute(limit=10, cost=3)], NOW) == Admission((WindowState(per_minute(10, 3), 10, 30.0),))


def test_all_charges_are_consumed_or_none(limiter: RateLimiter) -> None:
    day, minute = per_day(limit=100, cost=3), per_minute(limit=5, cost=3)
    assert limiter.hit([day, minute], NOW).allowed
    answer = limiter.hit([day, minute], NOW)
    assert answer.windows == (WindowState(day, 3, 50_370.0), WindowState(minute, 3, 30.0))
    assert answer.refused == WindowState(minute, 3, 30.0)
    assert used(limiter, day) == 3


def test_the_first_window_that_does_not_fit_is_named(limiter: RateLimiter) -> None:
    day, minute = per_day(limit=2), per_minute(limit=2)
    limiter.hit([day, minute], NOW)
    limiter.hit([day, minute], NOW)
    assert limiter.hit([minute, day], NOW).refused == WindowState(minute, 2, 30.0)
    assert limiter.hit([day, minute], NOW).refused == WindowState(day, 2, 50_370.0)


def test_windows_roll_over(limiter: RateLimiter) -> None:
    charge = per_minute(limit=2)
    limiter.hit([charge], NOW)
    limiter.hit([charge], NOW)
    assert not limiter.hit([charge], NOW + 29.9).allowed
    next_minute = limiter.hit([charge], NOW + 30)
    assert next_minute == Admission((WindowState(charge, 1, 60.0),))
    assert limiter.hit([per_day(limit=1)], DAY_START - 0.5).allowed
    assert limiter.hit([per_day(limit=1)], DAY_START).windows[0] == WindowState(per_day(limit=1), 1, 86_400.0)


def test_reset_s_counts_down_to_the_end_of_the_window(limiter: RateLimiter) -> None:
    charges = [per_day(limit=10), per_minute(limit=10), Charge("hour", "acct-1", 10, 3600, 1)]
    windows = limiter.hit(charges, NOW + 12.25).windows
    assert [window.reset_s for window in windows] == pytest.approx([50_357.75, 17.75, 3_557.75])


def test_cost_zero_reads_the_window_and_always_fits(limiter: RateLimiter) -> None:
    check = per_minute(limit=2, cost=0)
    assert limiter.hit([check], NOW) == Admission((WindowState(check, 0, 30.0),))
    limiter.hit([per_minute(limit=2)], NOW)
    assert limiter.hit([check], NOW) == Admission((WindowState(check, 1, 30.0),))
    limiter.hit([per_minute(limit=2)], NOW)
    assert limiter.hit([check], NOW) == Admission((WindowState(check, 2, 30.0),))  # full, yet nothing asked of it
    assert limiter.hit([check, per_minute(limit=2, key="other")], NOW).allowed
    assert used(limiter, per_minute(limit=5)) == 2


def test_one_key_counts_apart_for_each_subject(limiter: RateLimiter) -> None:
    mine, theirs = replace(per_minute(limit=1), subject="usr_1"), replace(per_minute(limit=1), subject="usr_2")
    assert limiter.hit([mine], NOW).allowed
    assert not limiter.hit([mine], NOW).allowed
    assert limiter.hit([theirs], NOW).allowed
    assert used(limiter, per_minute(limit=1)) == 0  # nor with the key alone


def test_redis_keeps_a_subjects_counters_under_one_cluster_hash_tag() -> None:
    """A Redis Cluster runs a script only on keys of one slot: the subject, in braces, picks it."""
    with redis_prefix() as prefix, redis.Redis.from_url(REDIS_URL) as client:
        limiter = RedisRateLimiter(client, prefix)
        texts = Charge("day", "texts", 10, 86_400, 2, subject="usr_1")
        requests = Charge("minute", "requests", 10, 60, 1, subject="usr_1")
        assert limiter.hit([texts, requests], NOW).allowed
        assert limiter.hit([per_minute(limit=5)], NOW).allowed
        assert sorted(key.decode() for key in client.scan_iter(f"{prefix}:*")) == [
            f"{prefix}:acct-1:60:{int(NOW // 60)}",
            f"{prefix}:requests:{{usr_1}}:60:{int(NOW // 60)}",
            f"{prefix}:texts:{{usr_1}}:86400:{int(NOW // 86_400)}",
        ]


def test_refund_gives_back_what_a_hit_took(limiter: RateLimiter) -> None:
    day, minute = per_day(limit=10, cost=3), per_minute(limit=5, cost=3)
    limiter.hit([day, minute], NOW)
    limiter.refund([day, minute], NOW)
    assert (used(limiter, day), used(limiter, minute)) == (0, 0)
    assert limiter.hit([per_minute(limit=5, cost=5)], NOW).allowed


def test_refunds_never_go_below_zero(limiter: RateLimiter) -> None:
    charge = per_minute(limit=5, cost=3)
    limiter.hit([charge], NOW)
    limiter.refund([charge], NOW)
    limiter.refund([charge], NOW)
    limiter.refund([per_day(limit=5, cost=3)], NOW)
    assert used(limiter, charge) == 0
    assert used(limiter, per_day(limit=5)) == 0
    assert not limiter.hit([per_minute(limit=5, cost=6)], NOW).allowed


def test_keys_and_window_lengths_count_apart(limiter: RateLimiter) -> None:
    limiter.hit([per_minute(limit=5, cost=5, key="acct-1")], NOW)
    assert limiter.hit([per_minute(limit=5, cost=5, key="acct-2")], NOW).allowed
    assert limiter.hit([Charge("minute", "acct-1", 5, 61, 5)], NOW).allowed


def test_no_charges_are_always_allowed(limiter: RateLimiter) -> None:
    assert limiter.hit([], NOW) == Admission(())
    limiter.refund([], NOW)


def test_redis_counters_are_shared_by_every_client() -> None:
    with redis_prefix() as prefix, redis.Redis.from_url(REDIS_URL) as one, redis.Redis.from_url(REDIS_URL) as two:
        first, second = RedisRateLimiter(one, prefix), RedisRateLimiter(two, prefix)
        assert first.hit([per_minute(limit=5, cost=4)], NOW).allowed
        assert second.hit([per_minute(limit=5, cost=2)], NOW).refused == WindowState(per_minute(5, 2), 4, 30.0)
        second.refund([per_minute(limit=5, cost=4)], NOW)
        assert used(first, per_minute(limit=5)) == 0


def test_redis_keys_expire_soon_after_their_window() -> None:
    with redis_prefix() as prefix, redis.Redis.from_url(REDIS_URL) as client:
        limiter = RedisRateLimiter(client, prefix)
        now = time.time()
        minute = per_minute(limit=5)
        reset_s = limiter.hit([minute], now).windows[0].reset_s
        assert reset_s * 1000 - 1000 <= client.pttl(limiter.key(minute, now)) <= (reset_s + 5) * 1000
        assert client.exists(limiter.key(per_minute(limit=5, cost=0), now + 60)) == 0


def test_concurrent_hits_from_threads_never_overshoot() -> None:
    charge = per_day(limit=500, cost=7)
    allowed: list[int] = []
    with redis_prefix() as prefix:
        barrier = threading.Barrier(20)

        def hit_ten_times() -> None:
            with redis.Redis.from_url(REDIS_URL) as client:
                limiter = RedisRateLimiter(client, prefix)
                barrier.wait()
                allowed.append(sum(limiter.hit([charge], NOW).allowed for _ in range(10)))

        threads = [threading.Thread(target=hit_ten_times) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        with redis.Redis.from_url(REDIS_URL) as client:
            assert used(RedisRateLimiter(client, prefix), charge) == 500 // 7 * 7
    assert sum(allowed) == 500 // 7


# Run by another Python interpreter: says it is ready, waits for a line on stdin (so that all start together), then
# prints how many of its hits were allowed.
HIT_FROM_ANOTHER_PROCESS = """
import sys
import redis
from adapters.rate_limiting import RedisRateLimiter
from domain.model import Charge
url, prefix, hits, now = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
with redis.Redis.from_url(url) as client:
    limiter = RedisRateLimiter(client, prefix)
    print("ready", flush=True)
    sys.stdin.readline()
    print(sum(limiter.hit([Charge("day", "acct-1", 500, 86_400, 7)], now).allowed for _ in range(hits)))
"""


def test_concurrent_hits_from_processes_never_overshoot() -> None:
    with redis_prefix() as prefix:
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", HIT_FROM_ANOTHER_PROCESS, REDIS_URL, prefix, "30", str(NOW)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for process in processes:
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=20)[0] for process in processes]
        with redis.Redis.from_url(REDIS_URL) as client:
            assert used(RedisRateLimiter(client, prefix), per_day(limit=500)) == 500 // 7 * 7
    assert sum(int(output) for output in outputs) == 500 // 7


def counter(port: int, limiter: RedisRateLimiter, charge: Charge) -> int:
    with redis.Redis(port=port) as client:
        return int(client.get(limiter.key(charge, NOW)) or 0)


def rate_limiter_logs(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "adapters.resilience" and r.levelno == level]


def test_hits_are_counted_in_process_while_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    port, charge = free_port(), per_minute(limit=1000)
    redis_limiter = RedisRateLimiter.from_url(f"redis://:secret-password@127.0.0.1:{port}/0", timeout_s=0.2)
    fallback = InMemoryRateLimiter()
    limiter = FailoverRateLimiter(redis_limiter, fallback, retry_after_s=0.2)
    with caplog.at_level(logging.INFO, logger="adapters.resilience"):
        with redis_server(port, password="secret-password"):
            assert limiter.hit([charge], NOW).windows[0].used == 1
        answers = [limiter.hit([charge], NOW) for _ in range(20)]
        time.sleep(0.25)
        answers.append(limiter.hit([charge], NOW))
    # counted on from Redis's last count (1), not from zero
    assert [answer.windows[0].used for answer in answers] == list(range(2, 23))
    assert all(answer.provisional for answer in answers)
    assert used(fallback, charge) == 22
    [warning] = rate_limiter_logs(caplog, logging.WARNING)
    assert "Redis is unreachable" in warning and "ConnectionError" in warning
    assert "secret-password" not in warning and str(port) not in warning and "127.0.0.1" not in warning
    assert rate_limiter_logs(caplog, logging.INFO) == []


def test_redis_is_used_again_once_it_recovers(caplog: pytest.LogCaptureFixture) -> None:
    port, charge = free_port(), per_minute(limit=1000)
    redis_limiter = RedisRateLimiter.from_url(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
    fallback = InMemoryRateLimiter()
    limiter = FailoverRateLimiter(redis_limiter, fallback, retry_after_s=0.2)
    with caplog.at_level(logging.INFO, logger="adapters.resilience"):
        with redis_server(port):
            limiter.hit([charge], NOW)
        limiter.hit([charge], NOW)
        with redis_server(port):
            limiter.hit([charge], NOW)
            assert counter(port, redis_limiter, charge) == 0, "Redis was tried again before retry_after_s"
            time.sleep(0.25)
            answers = [limiter.hit([charge], NOW) for _ in range(3)]
            assert counter(port, redis_limiter, charge) == 3
    assert [answer.windows[0].used for answer in answers] == [1, 2, 3]  # the restarted Redis's own count
    assert not any(answer.provisional for answer in answers)
    assert used(fallback, charge) == 3  # Redis's last count (1) and the two made during the outage
    assert len(rate_limiter_logs(caplog, logging.WARNING)) == 1
    [recovered] = rate_limiter_logs(caplog, logging.INFO)
    assert "recovered" in recovered


class FlakyRateLimiter:
    """A limiter in this process that raises ConnectionError while `down`, and counts the calls it gets."""

    def __init__(self) -> None:
        self.counters = InMemoryRateLimiter()
        self.down = False
        self.calls = 0

    def hit(self, charges: Sequence[Charge], now: float) -> Admission:
        self.calls += 1
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return self.counters.hit(charges, now)

    def refund(self, charges: Sequence[Charge], now: float) -> None:
        self.calls += 1
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.counters.refund(charges, now)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_primary_is_left_alone_for_retry_after_s() -> None:
    primary, clock = FlakyRateLimiter(), Clock()
    limiter = FailoverRateLimiter(primary, InMemoryRateLimiter(), retry_after_s=5, clock=clock)
    primary.down = True
    for _ in range(10):
        limiter.hit([per_minute(limit=100)], NOW)
    assert primary.calls == 1
    clock.now += 4.9
    limiter.hit([per_minute(limit=100)], NOW)
    assert primary.calls == 1
    clock.now += 0.1
    limiter.hit([per_minute(limit=100)], NOW)
    limiter.hit([per_minute(limit=100)], NOW)
    assert primary.calls == 2
    primary.down = False
    clock.now += 5
    assert limiter.hit([per_minute(limit=100)], NOW).windows[0].used == 1
    assert limiter.hit([per_minute(limit=100)], NOW).windows[0].used == 2
    assert primary.calls == 4


def test_refunds_go_where_their_hit_was_counted() -> None:
    primary, fallback, clock = FlakyRateLimiter(), InMemoryRateLimiter(), Clock()
    limiter = FailoverRateLimiter(primary, fallback, retry_after_s=5, clock=clock)
    charge, later = replace(per_minute(limit=100, cost=4), refundable=True), NOW + 1
    limiter.hit([charge], NOW)
    primary.down = True
    limiter.hit([charge], later)
    limiter.hit([charge], later)
    primary.down = False
    clock.now += 5
    limiter.refund([charge], later)
    assert (used(primary.counters, charge), used(fallback, charge)) == (4, 8)  # the fallback started at 4
    limiter.refund([charge], NOW)
    limiter.refund([charge], later)
    assert (used(primary.counters, charge), used(fallback, charge)) == (0, 4)


def test_a_refund_of_some_charges_of_a_fallback_hit_goes_to_the_fallback() -> None:
    """The meter gives back a failed request's texts (the day charge) but not its request (the minute charge)."""
    primary, fallback, clock = FlakyRateLimiter(), InMemoryRateLimiter(), Clock()
    limiter = FailoverRateLimiter(primary, fallback, retry_after_s=5, clock=clock)
    day, minute = replace(per_day(limit=100, cost=30), refundable=True), per_minute(limit=10)
    limiter.hit([day, minute], NOW)  # counted in the primary
    primary.down = True
    limiter.hit([day, minute], NOW + 1)  # counted in the fallback
    primary.down = False
    clock.now += 5
    limiter.refund([day], NOW + 1)
    assert (used(primary.counters, day), used(fallback, day)) == (30, 30)  # started at the primary's 30, +30 -30
    assert (used(primary.counters, minute), used(fallback, minute)) == (1, 2)


def test_the_fallback_starts_from_the_primarys_last_count_and_says_it_is_provisional() -> None:
    primary, fallback, clock = FlakyRateLimiter(), InMemoryRateLimiter(), Clock()
    limiter = FailoverRateLimiter(primary, fallback, retry_after_s=5, clock=clock)
    day = per_day(limit=10, cost=6)
    first = limiter.hit([day], NOW)
    assert first.allowed and not first.provisional
    primary.down = True
    during = limiter.hit([day], NOW + 1)  # 6 counted in the shared store: 6 more would make 12
    assert not during.allowed and during.provisional
    assert during.refused == WindowState(day, 6, during.refused.reset_s)  # type: ignore[union-attr]
    assert limiter.hit([per_day(limit=10, cost=4)], NOW + 1).allowed  # 6 + 4 fits
