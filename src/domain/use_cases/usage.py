"""Quota and usage use cases: admitting a metered caller's request against its tier's limits (texts per UTC day,
requests per minute), giving back what a failed request consumed, and reading the usage ledger."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

from domain.errors import InvalidInput, RateLimited
from domain.model import Admission, Caller, Charge, Tier, UsageRecord
from domain.ports import RateLimiter, UsageRecorder

DAY_S, MINUTE_S = 86400, 60
REQUESTS, SESSIONS = "requests", "sessions"
PROVISIONAL_RETRY_S = 10


@dataclass(frozen=True)
class TierLimits:
    texts_per_day: int
    requests_per_minute: int


@dataclass(frozen=True)
class Metered:
    """An admitted request: what it consumed (to give back should it fail) and the windows' states for headers."""

    charges: tuple[Charge, ...]
    at: float
    admission: Admission


class MeterRequests:
    """Admit a metered caller's request of `texts` texts: it counts as one request in the minute and `texts` texts in
    the UTC day (cache hits count). A request that would exceed either is refused whole (429) and consumes nothing.
    Callers with static keys are not metered."""

    def __init__(
        self, limiter: RateLimiter, tiers: Mapping[Tier, TierLimits], clock: Callable[[], float] = time.time
    ) -> None:
        self._limiter = limiter
        self._tiers = tiers
        self._clock = clock

    def _charges(self, caller: Caller, texts: int, requests: int, counter: str) -> tuple[Charge, ...]:
        assert caller.tier is not None and caller.account_id is not None
        limits = self._tiers[caller.tier]
        account = caller.account_id
        return (
            Charge("day", "texts", limits.texts_per_day, DAY_S, texts, refundable=True, subject=account),
            Charge("minute", counter, limits.requests_per_minute, MINUTE_S, requests, subject=account),
        )

    async def peek(self, caller: Caller, counter: str = REQUESTS) -> Admission | None:
        """The windows' states without consuming anything."""
        if not caller.metered:
            return None
        return await asyncio.to_thread(self._limiter.hit, self._charges(caller, 0, 0, counter), self._clock())

    async def admit(self, caller: Caller, texts: int, counter: str = REQUESTS) -> Metered | None:
        """`counter`: REQUESTS for API-key requests, SESSIONS for the account routes, which count in a minute window
        of their own, so whoever holds a leaked key cannot keep the owner from revoking it."""
        if not caller.metered or caller.tier is None:
            return None
        charges = self._charges(caller, texts, 1, counter)
        now = self._clock()
        admission = await asyncio.to_thread(self._limiter.hit, charges, now)
        refused = admission.refused
        if refused is not None:
            wait = refused.retry_after_s
            if admission.provisional:  # one process's count while the shared one is unreachable: ask again soon
                wait = min(wait, PROVISIONAL_RETRY_S)
            reset_at = refused.resets_at(now)
            charge = refused.charge
            if charge.name == "day":
                what = (
                    f"daily limit of {charge.limit} texts (tier {caller.tier}) reached: {refused.used} used today, "
                    f"this request has {texts}"
                )
            else:
                what = f"limit of {charge.limit} requests per minute (tier {caller.tier}) reached"
            raise RateLimited(
                f"{what}; the window resets at {reset_at} (in {wait} s).",
                retry_after_s=wait,
                limit=charge.limit,
                window=charge.name,
                reset_at=reset_at,
                admission=admission,
            )
        return Metered(charges, now, admission)

    async def refund(self, metered: Metered | None) -> Admission | None:
        """Give back the texts of an admitted request that then failed (the request itself still counts); the
        windows' states after that."""
        if metered is None:
            return None
        texts = tuple(charge for charge in metered.charges if charge.name == "day" and charge.cost)
        if texts:
            await asyncio.to_thread(self._limiter.refund, texts, metered.at)
        return Admission(
            tuple(
                replace(w, used=max(0, w.used - w.charge.cost)) if w.charge in texts else w
                for w in metered.admission.windows
            )
        )


@dataclass(frozen=True)
class UsageReport:
    account_id: str
    since: date
    rows: list[UsageRecord]

    @property
    def totals(self) -> UsageRecord:
        total = UsageRecord(self.account_id, self.since, "*")
        for row in self.rows:
            total = total.plus(row)  # the sum keeps the total's account, day and model
        return total


MAX_USAGE_DAYS = 366


class GetUsage:
    """An account's usage per UTC day and model over the last `days` days (today included), unwritten usage too."""

    def __init__(self, usage: UsageRecorder, today: Callable[[], date] = lambda: datetime.now(UTC).date()) -> None:
        self._usage = usage
        self._today = today

    async def execute(self, account_id: str, days: int) -> UsageReport:
        if not 1 <= days <= MAX_USAGE_DAYS:
            raise InvalidInput(f"days must be between 1 and {MAX_USAGE_DAYS}.")
        since = self._today() - timedelta(days=days - 1)
        rows = await asyncio.to_thread(self._usage.read, account_id, since)
        return UsageReport(account_id, since, sorted(rows, key=lambda r: (r.day, r.model), reverse=True))
