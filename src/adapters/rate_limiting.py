"""Rate limiters: fixed-window counters in this process (InMemoryRateLimiter), in Redis shared by every process
(RedisRateLimiter, one Lua script per call), and the two combined so that a Redis outage degrades to counting in
this process instead of failing requests (FailoverRateLimiter)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from domain.model import Admission, Charge, WindowState

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

# Counters outlive their window by this much, so that processes whose clocks differ a little agree on them.
EXPIRY_SLACK_S = 5.0


def window_index(charge: Charge, now: float) -> int:
    return int(now // charge.window_s)


def window_state(charge: Charge, used: int, now: float) -> WindowState:
    return WindowState(charge, used, (window_index(charge, now) + 1) * charge.window_s - now)


def exceeds(charge: Charge, used: int) -> bool:
    """Whether `charge` does not fit on top of `used`; a cost of 0 always fits (it only reads the window's state)."""
    return used + charge.cost > charge.limit


def admission(charges: Sequence[Charge], used: Sequence[int], refused: int | None, now: float) -> Admission:
    windows = tuple(window_state(charge, count, now) for charge, count in zip(charges, used, strict=True))
    return Admission(windows, None if refused is None else windows[refused])


class InMemoryRateLimiter:
    """Counters of this process only (the embedded default, and the fallback while Redis is unreachable). Windows
    that have ended are dropped at most once per `sweep_every_s` of `now`, so memory stays bounded."""

    def __init__(self, sweep_every_s: float = 60.0) -> None:
        self._counters: dict[tuple[str, int, int], int] = {}
        self._lock = threading.Lock()
        self._sweep_every_s = sweep_every_s
        self._next_sweep = float("-inf")

    def hit(self, charges: Sequence[Charge], now: float) -> Admission:
        slots = [(charge.counter, charge.window_s, window_index(charge, now)) for charge in charges]
        with self._lock:
            self._sweep(now)
            used = [self._counters.get(slot, 0) for slot in slots]
            refused = next((i for i, charge in enumerate(charges) if exceeds(charge, used[i])), None)
            if refused is None:
                for i, (charge, slot) in enumerate(zip(charges, slots, strict=True)):
                    if charge.cost > 0:
                        used[i] = self._counters[slot] = self._counters.get(slot, 0) + charge.cost
        return admission(charges, used, refused, now)

    def refund(self, charges: Sequence[Charge], now: float) -> None:
        with self._lock:
            for charge in charges:
                slot = (charge.counter, charge.window_s, window_index(charge, now))
                if slot in self._counters:
                    self._counters[slot] = max(0, self._counters[slot] - charge.cost)

    def seed(self, charge: Charge, now: float, used: int) -> None:
        """Count at least `used` in the charge's current window (what the shared store had counted, before an
        outage made this process count alone)."""
        slot = (charge.counter, charge.window_s, window_index(charge, now))
        with self._lock:
            self._counters[slot] = max(self._counters.get(slot, 0), used)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_every_s
        ended = [slot for slot in self._counters if (slot[2] + 1) * slot[1] + EXPIRY_SLACK_S <= now]
        for slot in ended:
            del self._counters[slot]


# KEYS: one counter per charge. ARGV: limit, cost, time to live in ms, per charge. Returns the index (1-based) of the
# first charge that does not fit (0: all fit and were consumed), then every counter: before when refused, else after.
_HIT = """
local refused = 0
local used = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 * i - 2])
  local cost = tonumber(ARGV[3 * i - 1])
  used[i] = tonumber(redis.call('GET', key) or '0')
  if refused == 0 and used[i] + cost > limit then
    refused = i
  end
end
if refused == 0 then
  for i, key in ipairs(KEYS) do
    local cost = tonumber(ARGV[3 * i - 1])
    if cost > 0 then
      used[i] = redis.call('INCRBY', key, cost)
      redis.call('PEXPIRE', key, ARGV[3 * i])
    end
  end
end
table.insert(used, 1, refused)
return used
"""

# KEYS: one counter per charge. ARGV: the cost to give back, per charge; a counter never goes below 0.
_REFUND = """
for i, key in ipairs(KEYS) do
  local back = math.min(tonumber(ARGV[i]), tonumber(redis.call('GET', key) or '0'))
  if back > 0 then
    redis.call('DECRBY', key, back)
  end
end
return 0
"""


class RedisRateLimiter:
    """Counters in Redis, shared by every process using the same server and prefix. Each call is one Lua script, so
    the check and the increments of all charges are atomic in the store. Keys are
    `<prefix>:<key>:{<subject>}:<window_s>:<window index>` (`<prefix>:<key>:<window_s>:...` without a subject) and
    expire a little after their window ends (a time to live reckoned from the caller's `now`). The subject in braces is
    a Redis Cluster hash tag: one subject's counters, which one script hits together, share a slot."""

    def __init__(self, client: Redis, prefix: str = "embedding-service:rl") -> None:
        self._prefix = prefix
        self._hit = client.register_script(_HIT)
        self._refund = client.register_script(_REFUND)

    @classmethod
    def from_url(
        cls, url: str, timeout_s: float = 0.5, prefix: str = "embedding-service:rl", health_check_interval_s: int = 30
    ) -> RedisRateLimiter:
        """A limiter on a new client that gives up after `timeout_s` (one immediate retry on a dropped connection,
        none on a timeout); connects on first use."""
        import redis  # only where Redis is configured
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=health_check_interval_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        return cls(client, prefix)

    def key(self, charge: Charge, now: float) -> str:
        counter = f"{charge.key}:{{{charge.subject}}}" if charge.subject else charge.key
        return f"{self._prefix}:{counter}:{charge.window_s}:{window_index(charge, now)}"

    def hit(self, charges: Sequence[Charge], now: float) -> Admission:
        if not charges:
            return Admission(())
        args: list[int] = []
        for charge in charges:
            time_to_live_ms = int((window_state(charge, 0, now).reset_s + EXPIRY_SLACK_S) * 1000)
            args += [charge.limit, charge.cost, time_to_live_ms]
        refused, *used = self._hit(keys=[self.key(charge, now) for charge in charges], args=args)
        return admission(charges, [int(count) for count in used], int(refused) - 1 if refused else None, now)

    def refund(self, charges: Sequence[Charge], now: float) -> None:
        if charges:
            self._refund(keys=[self.key(charge, now) for charge in charges], args=[c.cost for c in charges])
