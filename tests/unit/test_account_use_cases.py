"""Account, key, quota and usage use cases on the in-memory stores (the same stores the SQL ones are held to), and
the buffered usage writer: nothing lost when a write fails, everything written on close."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.memory_accounts import InMemoryAccounts, InMemoryAccountStore, InMemoryApiKeyStore, InMemoryUsageLedger
from adapters.rate_limiting import InMemoryRateLimiter
from adapters.security import BcryptPasswordHasher, IsolatedPasswordHasher
from adapters.usage_buffer import BufferedUsageRecorder
from domain.errors import (
    EmailTaken,
    InvalidCredentials,
    InvalidInput,
    Overloaded,
    RateLimited,
    SignupClosed,
    Unauthenticated,
)
from domain.model import Admission, Caller, Charge, Tier, UsageRecord
from domain.use_cases import (
    AuthenticateCaller,
    GetUsage,
    LogIn,
    LoginThrottle,
    MeterRequests,
    RevokeKey,
    SignUp,
    TierLimits,
)
from domain.use_cases.keys import utc_now

TODAY = datetime.now(UTC).date()


class FakeTokens:
    expires_in = 60

    def issue(self, account_id: str) -> str:
        return f"token-for-{account_id}"

    def subject(self, token: str) -> str | None:
        return token.removeprefix("token-for-") if token.startswith("token-for-") else None


def test_signup_stores_a_hash_and_a_key_digest_only() -> None:
    async def scenario() -> None:
        state = InMemoryAccounts()
        bcrypt = BcryptPasswordHasher(rounds=4)
        hasher = IsolatedPasswordHasher(bcrypt)
        created = await SignUp(InMemoryAccountStore(state), hasher, enabled=True).execute(
            " Ada@Example.COM ", "pw-12345678"
        )
        account = state.accounts[created.account.id]
        assert account.email == "ada@example.com" and account.tier is Tier.FREE
        assert account.password_hash != "pw-12345678" and bcrypt.verify("pw-12345678", account.password_hash)
        (stored,) = state.keys.values()
        assert created.api_key not in repr(stored) and stored.prefix == created.api_key[:12]
        with pytest.raises(EmailTaken):
            await SignUp(InMemoryAccountStore(state), hasher, enabled=True).execute("ada@example.com", "pw-12345678")
        with pytest.raises(SignupClosed):
            await SignUp(InMemoryAccountStore(state), hasher, enabled=False).execute("b@example.com", "pw-12345678")
        operator = await SignUp(InMemoryAccountStore(state), hasher, enabled=False).execute(
            "b@example.com", "pw-12345678", Tier.PAID, by_operator=True
        )
        assert operator.account.tier is Tier.PAID
        for bad in ("short", "x" * 73):
            with pytest.raises(InvalidInput):
                await SignUp(InMemoryAccountStore(state), hasher, enabled=True).execute("c@example.com", bad)

    asyncio.run(scenario())


def test_keys_authenticate_until_revoked_and_malformed_keys_are_never_looked_up() -> None:
    async def scenario() -> None:
        state = InMemoryAccounts()
        created = await SignUp(
            InMemoryAccountStore(state), IsolatedPasswordHasher(BcryptPasswordHasher(4)), True
        ).execute("ada@example.com", "pw-12345678")
        lookups: list[bytes] = []

        class CountingKeys(InMemoryApiKeyStore):
            def find(self, digest: bytes):  # type: ignore[no-untyped-def]
                lookups.append(digest)
                return super().find(digest)

        keys = CountingKeys(state)
        auth = AuthenticateCaller({}, keys)
        caller = await auth.execute(created.api_key)
        assert caller == Caller(
            account_id=created.account.id, key_id=caller.key_id, tier=Tier.FREE, tenant=created.account.id
        )
        broken = created.api_key[:-1] + ("A" if created.api_key[-1] != "A" else "B")
        with pytest.raises(Unauthenticated):
            await auth.execute(broken)
        assert len(lookups) == 1  # the checksum refused it
        await RevokeKey(keys).execute(created.account, created.api_key[:12])
        with pytest.raises(Unauthenticated):
            await auth.execute(created.api_key)

    asyncio.run(scenario())


def test_login_checks_unknown_emails_against_the_dummy_hash_and_throttles_failures() -> None:
    async def scenario() -> None:
        state = InMemoryAccounts()
        store = InMemoryAccountStore(state)
        checked: list[str] = []

        class Watching(BcryptPasswordHasher):
            def verify(self, password: str, hashed: str) -> bool:
                checked.append(hashed)
                return super().verify(password, hashed)

        watching = Watching(4)
        hasher = IsolatedPasswordHasher(watching)
        ada = (await SignUp(store, hasher, enabled=True).execute("ada@example.com", "pw-12345678")).account.id
        login = LogIn(store, hasher, FakeTokens(), InMemoryRateLimiter(), LoginThrottle(2, 60))
        with pytest.raises(InvalidCredentials):
            await login.execute("nobody@example.com", "pw-12345678")
        assert checked == [watching.dummy_hash]
        assert await login.execute("ada@example.com", "pw-12345678") == (f"token-for-{ada}", 60)
        for _ in range(2):
            with pytest.raises(InvalidCredentials):
                await login.execute("ada@example.com", "wrong-password")
        with pytest.raises(RateLimited):
            await login.execute("ADA@example.com", "pw-12345678")  # two failures for this email already

    asyncio.run(scenario())


def test_quotas_count_texts_per_day_and_requests_per_minute_and_refunds_give_texts_back() -> None:
    async def scenario() -> None:
        now = [1_700_000_000.0]
        meter = MeterRequests(InMemoryRateLimiter(), {Tier.FREE: TierLimits(5, 3)}, clock=lambda: now[0])
        caller = Caller(account_id="usr_a", key_id="key_a", tier=Tier.FREE, tenant="usr_a")
        assert await meter.admit(Caller(tenant="static"), 1000) is None  # static keys are not metered
        first = await meter.admit(caller, 4)
        assert first is not None and [w.remaining for w in first.admission.windows] == [1, 2]
        with pytest.raises(RateLimited) as refused:
            await meter.admit(caller, 2)
        assert (refused.value.window, refused.value.limit) == ("day", 5)
        await meter.refund(first)
        second = await meter.admit(caller, 5)
        assert second is not None
        assert await meter.admit(caller, 0) is not None  # the third request of the minute (a refusal is not one)
        with pytest.raises(RateLimited) as per_minute:
            await meter.admit(caller, 0)
        assert per_minute.value.window == "minute"
        now[0] += 60
        assert await meter.admit(caller, 0) is not None  # a new minute; the day is full but this asks no texts

    asyncio.run(scenario())


def test_an_accounts_counters_name_the_account_as_their_subject_in_no_stores_syntax() -> None:
    """How a store lays its counters out (a Redis Cluster hash tag) is the limiter adapter's business."""

    async def scenario() -> None:
        meter = MeterRequests(InMemoryRateLimiter(), {Tier.FREE: TierLimits(5, 3)}, clock=lambda: 1_700_000_000.0)
        caller = Caller(account_id="usr_a", key_id="key_a", tier=Tier.FREE, tenant="usr_a")
        admitted = await meter.admit(caller, 1)
        assert admitted is not None
        charges = [(c.name, c.key, c.subject) for c in admitted.charges]
        assert charges == [("day", "texts", "usr_a"), ("minute", "requests", "usr_a")]

    asyncio.run(scenario())


class FlakyLedger(InMemoryUsageLedger):
    def __init__(self, state: InMemoryAccounts) -> None:
        super().__init__(state)
        self.failing = False

    def add(self, records: Sequence[UsageRecord]) -> None:
        if self.failing:
            raise ConnectionError("database went away")
        super().add(records)


def test_buffered_usage_survives_failed_writes_and_is_written_on_close(caplog: pytest.LogCaptureFixture) -> None:
    state = InMemoryAccounts()
    ledger = FlakyLedger(state)
    recorder = BufferedUsageRecorder(ledger, flush_s=3600)
    one = UsageRecord("usr_a", TODAY, "m", requests=1, texts=2, tokens=10, cache_hits=1, cache_misses=1)
    recorder.record(one)
    ledger.failing = True
    with caplog.at_level(logging.WARNING, logger="adapters.usage_buffer"), pytest.raises(ConnectionError):
        recorder.flush()
    recorder.record(one)
    assert recorder.read("usr_a", TODAY - timedelta(days=1)) == [one.plus(one)]  # nothing lost, nothing doubled
    ledger.failing = False
    recorder.record(one)
    recorder.close()
    assert ledger.read("usr_a", TODAY) == [one.plus(one).plus(one)]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_get_usage_reads_the_window_newest_first() -> None:
    async def scenario() -> None:
        state = InMemoryAccounts()
        ledger = InMemoryUsageLedger(state)
        ledger.add(
            [
                UsageRecord("usr_a", TODAY, "m", requests=1),
                UsageRecord("usr_a", TODAY - timedelta(days=3), "m", requests=2),
                UsageRecord("usr_b", TODAY, "m", requests=5),
            ]
        )
        usage = GetUsage(BufferedUsageRecorder(ledger), today=lambda: TODAY)
        report = await usage.execute("usr_a", 2)
        assert [r.requests for r in report.rows] == [1] and report.since == TODAY - timedelta(days=1)
        report = await usage.execute("usr_a", 7)
        assert [r.day for r in report.rows] == [TODAY, TODAY - timedelta(days=3)] and report.totals.requests == 3
        with pytest.raises(InvalidInput):
            await usage.execute("usr_a", 0)

    asyncio.run(scenario())


def test_key_activity_is_buffered_then_written_in_one_touch() -> None:
    state = InMemoryAccounts()
    touched: list[dict[str, datetime]] = []

    class Keys(InMemoryApiKeyStore):
        def touch(self, last_used):  # type: ignore[no-untyped-def]
            touched.append(dict(last_used))

    recorder = BufferedUsageRecorder(InMemoryUsageLedger(state), Keys(state), flush_s=3600)
    early, late = utc_now(), utc_now() + timedelta(seconds=5)
    for moment in (early, late, early):
        recorder.touch("key_1", moment)
    assert recorder.last_used("key_1") == late
    recorder.flush()
    assert touched == [{"key_1": late}]
    assert recorder.last_used("key_1") is None


def test_password_hashing_has_threads_of_its_own_and_refuses_past_its_queue() -> None:
    async def scenario() -> None:
        hasher = IsolatedPasswordHasher(BcryptPasswordHasher(10), threads=1, max_waiting=1)
        results = await asyncio.gather(*(hasher.hash("pw-12345678") for _ in range(3)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, Overloaded)]
        assert len(refused) == 1 and refused[0].retry_after_s == 1
        # the shared worker threads stay free meanwhile
        slow = asyncio.gather(*(hasher.verify("pw-12345678", str(results[0])) for _ in range(2)))
        started = time.perf_counter()
        await asyncio.to_thread(lambda: None)
        assert time.perf_counter() - started < 0.05
        assert await slow == [True, True]

    asyncio.run(scenario())


def test_usage_the_database_cannot_take_at_shutdown_is_spilled_and_read_back_once(tmp_path: Path) -> None:
    state = InMemoryAccounts()
    ledger = FlakyLedger(state)
    data = tmp_path / "data"

    def recorder() -> BufferedUsageRecorder:
        return BufferedUsageRecorder(ledger, flush_s=3600, spill_dir=data)

    def used(requests: int) -> UsageRecord:
        return UsageRecord("usr_a", TODAY, "m", requests=requests, texts=2 * requests, tokens=9, compute_ms=1.5)

    processes = {5: recorder(), 7: recorder()}  # two worker processes on one DATA_DIR
    for requests, process in processes.items():
        process.start()
        process.record(used(requests))
    ledger.failing = True  # the database is down while both shut down
    for process in processes.values():
        process.close()
    assert len(list(data.glob("usage-unwritten.*.jsonl"))) == 2  # one each: neither overwrote the other
    first, second = recorder(), recorder()
    first.start()
    second.start()  # starting beside it: the files are taken
    assert first.read("usr_a", TODAY) == [used(5).plus(used(7))] and second.read("usr_a", TODAY) == []
    first.close()  # still down: spilled again, as one file
    second.close()  # nothing of its own to keep
    assert [p.name.split(".")[0] for p in data.iterdir()] == ["usage-unwritten"]

    crashed = recorder()
    crashed.start()
    for _, descriptor in crashed._claims:  # the process dies holding its claim: the OS drops the lock
        os.close(descriptor)
    crashed._claims = []
    (data / "usage-unwritten.bad.jsonl").write_text('{"not": "a record"}\n', encoding="utf-8")
    ledger.failing = False
    survivor = recorder()
    survivor.start()  # takes over the dead process's claim
    survivor.close()
    assert ledger.read("usr_a", TODAY) == [used(5).plus(used(7))]  # all of it, once
    assert [p.name.split(".")[0] for p in data.iterdir()] == ["usage-bad"]


def test_a_login_refused_for_want_of_hashing_threads_is_not_a_failed_login() -> None:
    async def scenario() -> None:
        state = InMemoryAccounts()
        store = InMemoryAccountStore(state)
        hasher = IsolatedPasswordHasher(BcryptPasswordHasher(8), threads=1, max_waiting=0)
        ada = (await SignUp(store, hasher, enabled=True).execute("ada@example.com", "pw-12345678")).account.id
        login = LogIn(store, hasher, FakeTokens(), InMemoryRateLimiter(), LoginThrottle(6, 60))
        attempts = await asyncio.gather(
            *(login.execute("ada@example.com", "wrong-password") for _ in range(6)), return_exceptions=True
        )
        assert [type(a) for a in attempts].count(Overloaded) == 5
        assert [type(a) for a in attempts].count(InvalidCredentials) == 1
        # one failure counted of the six allowed (not six): the right password still gets in
        assert await login.execute("ada@example.com", "pw-12345678") == (f"token-for-{ada}", 60)

    asyncio.run(scenario())


def test_logins_in_progress_are_not_failures() -> None:
    async def scenario() -> None:
        state = InMemoryAccounts()
        store = InMemoryAccountStore(state)
        hasher = IsolatedPasswordHasher(BcryptPasswordHasher(6), threads=2, max_waiting=10)
        await SignUp(store, hasher, enabled=True).execute("ada@example.com", "pw-12345678")
        login = LogIn(store, hasher, FakeTokens(), InMemoryRateLimiter(), LoginThrottle(2, 60))
        attempts = await asyncio.gather(*(login.execute("ada@example.com", "pw-12345678") for _ in range(8)))
        assert len(attempts) == 8  # eight right passwords at once: none refused by the failure throttle

    asyncio.run(scenario())


def test_a_provisional_refusal_asks_the_caller_back_soon_not_tomorrow() -> None:
    class CountingAlone(InMemoryRateLimiter):
        """As the failover answers while Redis is down."""

        def hit(self, charges: Sequence[Charge], now: float) -> Admission:
            return replace(super().hit(charges, now), provisional=True)

    async def scenario() -> None:
        meter = MeterRequests(CountingAlone(), {Tier.FREE: TierLimits(5, 100)}, clock=lambda: 1_700_000_000.0)
        caller = Caller(account_id="usr_a", key_id="key_a", tier=Tier.FREE, tenant="usr_a")
        await meter.admit(caller, 5)
        with pytest.raises(RateLimited) as refused:
            await meter.admit(caller, 1)
        assert refused.value.window == "day" and refused.value.retry_after_s == 10  # not the ~9 hours left

    asyncio.run(scenario())
