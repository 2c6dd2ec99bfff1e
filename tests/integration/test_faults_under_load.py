"""Faults under load (issue 17). While callers keep sending embeddings to a real HTTP server (uvicorn with the
service's own protocol, hosted mode), Redis is killed and restored, PostgreSQL refuses connections, then stops
answering, and comes back, the model backend raises, and a BYOK provider hangs. Each test checks that every request
is answered as the README documents (no 500, no cut connection, bounded waits), that nothing is half-written (every
vector served is the right one, cached or not; usage and quota counts match what was answered; no account without
its key; nothing failed is cached), and that every recovery is logged."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
import redis
from dependency_injector import providers

from adapters.fake_embedder import FakeEmbedder, FakeEmbedderLoader
from adapters.outbound import OutboundClient
from adapters.providers import ProviderClient, RemoteProviders
from domain.model import EmbedInput, ModelSpec, Tier, Vectors, resolve_model
from entrypoints.http.app import create_app
from tests.contract.test_accounts_api import PASSWORD, bearer, hosted_settings, signup
from tests.contract.test_byok import (
    HOST,
    PROVIDER_KEY,
    FakeProvider,
    fake_provider,
    provider_vector,
    register,
    resolver_for,
)
from tests.contract.test_byok import Answer as ProviderAnswer
from tests.support import free_port, postgres_database, redis_server, relayed_database, uvicorn_app

MODEL = "all-MiniLM-L6-v2"
STATIC_KEY = "ops-key-0123456789abcdef"
DAILY = 1_000_000
REFERENCE = FakeEmbedder(resolve_model(MODEL))  # the vectors a healthy server answers, computed here
LIMITS = {
    "model_name": MODEL,
    "tenant_api_keys": {"ops": STATIC_KEY},
    "free_tier_daily_limit": DAILY,
    "paid_tier_daily_limit": DAILY,
    "free_tier_per_minute": 100_000,
    "paid_tier_per_minute": 100_000,
    "cache_retry_seconds": 0.5,
}


@dataclass
class Answered:
    caller: str
    phase: str  # the phase the request was sent in
    end_phase: str  # the phase it was answered in
    status: int  # 0: no HTTP answer (a cut connection, a timeout)
    error: str | None
    retry_after: str | None
    elapsed: float
    texts: list[str]
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def within(self) -> str | None:
        """The phase the request was sent and answered in, or None when it straddled two."""
        return self.phase if self.phase == self.end_phase else None


class Load:
    """Callers in threads of their own, each sending `POST /v1/embed/batch` back to back (every third request sends
    its previous texts again: cache hits) until the block ends. Every answer is kept with the phase it was sent and
    answered in; the test moves the phases on."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.phase = "before"
        self.answers: list[Answered] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def caller(self, name: str, key: str, texts: int = 3, pause_s: float = 0.0, poison: bool = False) -> None:
        thread = threading.Thread(target=self._send, args=(name, key, texts, pause_s, poison), daemon=True)
        self._threads.append(thread)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def begin(self, phase: str) -> None:
        """Requests sent from now on belong to `phase` (set before the fault is made, so none sent in the phase
        before meets it)."""
        self.phase = phase

    def during(self, phase: str, seconds: float) -> None:
        self.phase = phase
        time.sleep(seconds)

    def until(self, phase: str, done: Callable[[], bool], within_s: float = 15) -> None:
        """Phase `phase` lasts until `done()`, at most `within_s`."""
        self.phase = phase
        deadline = time.monotonic() + within_s
        while not done():
            assert time.monotonic() < deadline, f"{phase}: not recovered within {within_s} s"
            time.sleep(0.05)

    def of(self, caller: str, phase: str | None = None) -> list[Answered]:
        return [a for a in self.answers if a.caller == caller and (phase is None or a.within == phase)]

    def _send(self, name: str, key: str, size: int, pause_s: float, poison: bool) -> None:
        previous: list[str] = []
        with httpx.Client(base_url=self.base, headers=bearer(key), timeout=30) as client:
            for n in range(1_000_000):
                if self._stop.is_set():
                    return
                phase = self.phase
                texts = previous if previous and n % 3 == 0 else [f"{name} {phase} {n} text {i}" for i in range(size)]
                if poison:
                    texts = [f"poison {name} {n}", *texts[1:]]
                started = time.monotonic()
                try:
                    response = client.post("/v1/embed/batch", json={"texts": texts})
                    status, body, headers = response.status_code, response.json(), dict(response.headers)
                except (httpx.HTTPError, ValueError) as exc:
                    status, body, headers = 0, {"error": {"type": repr(exc)}}, {}
                error = body.get("error", {}).get("type") if status != 200 else None
                self.answers.append(
                    Answered(
                        name,
                        phase,
                        self.phase,
                        status,
                        error,
                        headers.get("retry-after"),
                        time.monotonic() - started,
                        texts,
                        body,
                        headers,
                    )
                )
                previous = texts
                if pause_s:
                    time.sleep(pause_s)


def outcomes(answers: list[Answered]) -> set[tuple[int, str | None]]:
    return {(a.status, a.error) for a in answers}


def assert_vectors_right(answers: list[Answered], expected: Callable[[str], Vectors] | None = None) -> None:
    """Every vector answered, computed or from the cache, is the text's own: nothing half-written was served."""
    checked = 0
    for answer in (a for a in answers if a.status == 200):
        got = np.asarray(answer.body["embeddings"], dtype=np.float32)
        want = np.stack([expected(t) if expected else REFERENCE.embed([t])[0] for t in answer.texts])
        assert got.shape == want.shape and np.allclose(got, want, atol=1e-6), (answer.caller, answer.texts)
        checked += 1
    assert checked > 0


def never_answered(answers: list[Answered]) -> list[str]:
    """Texts of failed requests that no request answered 200 has carried."""
    answered = {t for a in answers if a.status == 200 for t in a.texts}
    return list(dict.fromkeys(t for a in answers if a.status != 200 for t in a.texts if t not in answered))


def assert_no_text_logged(caplog: pytest.LogCaptureFixture, answers: list[Answered], *secrets: str) -> None:
    """Logs carry counts, sizes and timings, never a text or a secret, faults or not."""
    logs = caplog.text
    assert logs
    for answer in answers[:: max(1, len(answers) // 50)]:
        for text in answer.texts:
            assert text not in logs, text
    for secret in secrets:
        assert secret not in logs


def texts_answered(answers: list[Answered]) -> int:
    return sum(len(a.texts) for a in answers if a.status == 200)


def logged(caplog: pytest.LogCaptureFixture, pattern: str, level: int | None = None) -> list[logging.LogRecord]:
    return [r for r in caplog.records if re.search(pattern, r.getMessage()) and (level is None or r.levelno == level)]


def sign_up(base: str, email: str) -> tuple[str, str]:
    """(account id, API key) of a new account."""
    with httpx.Client(base_url=base, timeout=30) as client:
        key = signup(client, email)  # type: ignore[arg-type]
        usage = client.get("/v1/usage", headers=bearer(key))
        assert usage.status_code == 200, usage.text
        account_id: str = usage.json()["account_id"]
    return account_id, key


def usage_in_database(url: str, account_id: str) -> tuple[int, int]:
    """(requests, texts) the usage ledger holds for the account, read from PostgreSQL itself."""
    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT coalesce(sum(requests), 0), coalesce(sum(texts), 0) FROM embedding_usage_daily"
            " WHERE account_id = %s",
            (account_id,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


# 1. Redis killed (SIGKILL) and restored


def logins_meanwhile(base: str, email: str) -> list[tuple[int, str | None]]:
    """A wrong password, then the right one: (status, error type) of each."""
    found = []
    for password in ("not the password", PASSWORD):
        response = httpx.post(f"{base}/v1/auth/login", json={"email": email, "password": password}, timeout=30)
        found.append((response.status_code, response.json().get("error", {}).get("type")))
    return found


def day_texts_in_redis(port: int, account_id: str) -> int:
    with redis.Redis(port=port) as client:
        keys = list(client.scan_iter(f"embedding-service:rl:texts:{{{account_id}}}:86400:*"))
        return sum(int(client.get(key) or 0) for key in keys)


def test_redis_killed_and_restored_under_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    # every write persisted, as a production Redis with an append-only file
    append_only = ("--dir", str(folder), "--appendonly", "yes", "--appendfsync", "always")
    with postgres_database() as url, caplog.at_level(logging.INFO), ExitStack() as stack:
        settings = hosted_settings(tmp_path, database_url=url, redis_url=f"redis://127.0.0.1:{port}/0", **LIMITS)
        first = stack.enter_context(redis_server(port, *append_only))
        restored = ExitStack()
        stack.enter_context(restored)  # outlives the server below, which stops first
        with uvicorn_app(create_app(settings)) as (base, _):
            accounts = [sign_up(base, f"redis-{i}@example.com") for i in range(2)]
            load = Load(base)
            load.caller("a0", accounts[0][1])
            load.caller("a0b", accounts[0][1])
            load.caller("a1", accounts[1][1])
            load.caller("ops", STATIC_KEY)
            with load:
                load.during("before", 1.5)
                load.begin("down")
                first.kill()
                first.wait()
                load.during("down", 1.0)
                logins = logins_meanwhile(base, "redis-0@example.com")
                load.during("down", 1.0)
                load.begin("recovering")
                restored.enter_context(redis_server(port, *append_only))  # the same append-only file
                load.until("recovering", lambda: bool(logged(caplog, "Redis recovered")))
                load.during("after", 1.5)
            in_redis = [day_texts_in_redis(port, account_id) for account_id, _ in accounts]
        # the server has stopped: its usage is written
        ledger = [usage_in_database(url, account_id) for account_id, _ in accounts]

    answers = load.answers
    assert outcomes(answers) == {(200, None)}, "Redis down: requests are served and counted in the process"
    assert len([a for a in answers if a.within == "down"]) >= 8
    assert max(a.elapsed for a in answers) < 3.0
    assert_vectors_right(answers)
    callers = [["a0", "a0b"], ["a1"]]
    for (account_id, _), names, counted, (requests, texts) in zip(accounts, callers, in_redis, ledger, strict=True):
        mine = [a for a in answers if a.caller in names]
        # nothing lost or counted twice in the ledger (PostgreSQL), whatever Redis did
        assert (requests, texts) == (len(mine), texts_answered(mine)), account_id
        # Redis counts again after the recovery: what was counted before the kill (kept in its append-only file)
        # and after it; what was counted in the process during the outage stays there, as documented
        outside = [a for a in mine if a.within in ("before", "after")]
        assert texts_answered(outside) <= counted <= texts_answered(mine), (account_id, counted)
    # logins go on too, their failures counted in the process meanwhile
    assert logins == [(401, "invalid_credentials"), (200, None)]
    assert_no_text_logged(caplog, answers, PASSWORD, *(key for _, key in accounts))
    assert len(logged(caplog, "Rate limiter: Redis is unreachable", logging.WARNING)) == 1  # one per outage
    assert len(logged(caplog, "Rate limiter: Redis recovered; counting in Redis again", logging.INFO)) == 1


# 2. PostgreSQL refusing connections, then stopping to answer (a blackhole), and restored


class Signups:
    """One caller signing up new accounts back to back, each answer kept with the phase it was sent in."""

    def __init__(self, base: str, load: Load) -> None:
        self.answers: list[tuple[str, str, int, str | None]] = []  # (phase, email, status, error type)
        self.retry_after: set[str | None] = set()  # of the refusals
        self._base, self._load = base, load
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Signups:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(base_url=self._base, timeout=30) as client:
            for n in range(1_000_000):
                if self._stop.is_set():
                    return
                phase, email = self._load.phase, f"signup-{n}@example.com"
                body = {"email": email, "password": "correct horse battery"}
                response = client.post("/v1/auth/signup", json=body)
                error = response.json().get("error", {}).get("type") if response.status_code != 201 else None
                self.answers.append((phase, email, response.status_code, error))
                if error:
                    self.retry_after.add(response.headers.get("retry-after"))
                time.sleep(0.05)


def recovered(load: Load, caller: str, phase: str) -> Callable[[], bool]:
    """Whether `caller` has had a 200 to a request sent in `phase`."""
    return lambda: any(a.status == 200 for a in load.answers if a.caller == caller and a.phase == phase)


def test_postgres_refused_blackholed_and_restored_under_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with relayed_database() as (url, through_proxy, proxy), caplog.at_level(logging.INFO):
        settings = hosted_settings(
            tmp_path, database_url=through_proxy, cache_timeout_seconds=1, usage_flush_seconds=0.5, **LIMITS
        )
        with uvicorn_app(create_app(settings)) as (base, _):
            accounts = [sign_up(base, f"pg-{i}@example.com") for i in range(2)]
            load = Load(base)
            load.caller("a0", accounts[0][1])
            load.caller("a0b", accounts[0][1])
            load.caller("a1", accounts[1][1])
            load.caller("ops", STATIC_KEY)
            with load, Signups(base, load) as signups:
                load.during("before", 1.5)
                load.begin("refused")
                proxy.cut()
                load.during("refused", 2.0)
                load.begin("recovering")
                proxy.start()
                load.until("recovering", recovered(load, "a1", "recovering"))
                load.during("between", 1.0)
                load.begin("blackholed")
                proxy.blackhole()
                load.during("blackholed", 2.5)
                load.begin("recovering again")
                proxy.resume()
                load.until("recovering again", recovered(load, "a1", "recovering again"))
                load.during("after", 1.5)
        # the server has stopped: the usage it buffered while the database was away is written now
        ledger = [usage_in_database(url, account_id) for account_id, _ in accounts]
        with psycopg.connect(url) as connection:
            keyless = connection.execute(
                "SELECT count(*) FROM embedding_accounts a"
                " WHERE NOT EXISTS (SELECT 1 FROM embedding_api_keys k WHERE k.account_id = a.id)"
            ).fetchone()
            stored = {row[0] for row in connection.execute("SELECT email FROM embedding_accounts")}

    answers = load.answers
    static = [a for a in answers if a.caller == "ops"]
    metered = [a for a in answers if a.caller != "ops"]
    # the static key needs no database: its requests are answered all along (the cache is skipped while it is away),
    # and the blackhole costs one of them at most the 1 s bound (then nobody waits on it)
    assert outcomes(static) == {(200, None)}
    assert max(a.elapsed for a in static) < 3.0
    # an account's key must be looked up: 503 accounts_unavailable (Retry-After: 5) while the database is away,
    # within the 1 s bound, and 200 again once it is back
    unavailable = [a for a in metered if a.status != 200]
    assert outcomes(metered) == {(200, None), (503, "accounts_unavailable")}
    assert {a.retry_after for a in unavailable} == {"5"}
    for phase in ("refused", "blackholed"):
        assert (503, "accounts_unavailable") in outcomes([a for a in metered if a.within == phase]), phase
    for phase in ("before", "between", "after"):
        assert outcomes([a for a in answers if a.within == phase]) == {(200, None)}, phase
    assert max(a.elapsed for a in metered) < 4.0  # the key lookup's 1 s bound, then the cache's
    assert_vectors_right(answers)
    # the usage of every request answered 200 is in the ledger once, the usage buffered during the outages included
    callers = [["a0", "a0b"], ["a1"]]
    for (account_id, _), names, (requests, texts) in zip(accounts, callers, ledger, strict=True):
        mine = [a for a in answers if a.caller in names and a.status == 200]
        assert (requests, texts) == (len(mine), texts_answered(mine)), account_id
    # an account and its first key are written together or not at all; an account answered 201 exists
    assert keyless == (0,)
    assert {(status, error) for _, _, status, error in signups.answers} <= {(201, None), (503, "accounts_unavailable")}
    assert signups.retry_after == {"5"}
    assert {email for _, email, status, _ in signups.answers if status == 201} <= stored
    assert any(status == 503 for phase, _, status, _ in signups.answers if phase in ("refused", "blackholed"))
    # every outage is one warning per part, and every recovery is logged
    assert len(logged(caplog, r"^account database .* failed", logging.WARNING)) == 2
    assert len(logged(caplog, r"^account database answers again after")) == 2
    assert len(logged(caplog, r"^embedding cache \(postgres\) is back after")) >= 2
    assert logged(caplog, r"^writing usage works again; nothing buffered was lost")
    assert_no_text_logged(caplog, answers, PASSWORD, *(key for _, key in accounts))


# 3. The model backend raising


class FlakyEmbedder(FakeEmbedder):
    """The fake model, raising as a broken runtime does (CUDA errors, a corrupt graph): on every call while `broken`
    is set, and always on a call holding a text that starts with "poison"."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.broken = threading.Event()

    def embed(self, texts: list[EmbedInput]) -> Vectors:  # type: ignore[override]
        if self.broken.is_set() or any(isinstance(t, str) and t.startswith("poison") for t in texts):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().embed(texts)


class FlakyLoader(FakeEmbedderLoader):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.embedder = FlakyEmbedder(spec)

    def load(self) -> FakeEmbedder:
        return self.embedder


def day_remaining(answer: httpx.Response) -> int:
    found = re.match(r'"day";r=(\d+);', answer.headers["ratelimit"])
    assert found is not None, answer.headers
    return int(found.group(1))


def test_a_raising_backend_under_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(hosted_settings(tmp_path, **LIMITS))
    loader = FlakyLoader(resolve_model(MODEL))
    app.state.container.loader.override(providers.Object(loader))
    with caplog.at_level(logging.INFO), uvicorn_app(app) as (base, _):
        accounts = [sign_up(base, f"backend-{i}@example.com") for i in range(2)]
        load = Load(base)
        load.caller("a0", accounts[0][1])
        load.caller("a0b", accounts[0][1])
        load.caller("ops", STATIC_KEY)
        load.caller("poisoner", accounts[1][1], pause_s=0.2, poison=True)
        with load:
            load.during("before", 1.5)
            load.begin("broken")
            loader.embedder.broken.set()
            broke = time.time()
            load.during("broken", 1.5)
            load.begin("recovering")
            loader.embedder.broken.clear()
            load.until("recovering", recovered(load, "a0", "recovering"))
            load.during("after", 1.5)
        # failed requests' texts were not cached; their texts were given back to the quota; the usage has only
        # what was answered
        with httpx.Client(base_url=base, timeout=30) as client:
            probe = never_answered(load.of("a0") + load.of("a0b"))[:20]
            again = client.post("/v1/embed/batch", json={"texts": probe}, headers=bearer(accounts[0][1]))
            usage = client.get("/v1/usage", headers=bearer(accounts[0][1])).json()["totals"]

    answers = load.answers
    healthy = [a for a in answers if a.caller != "poisoner"]
    poisoned = [a for a in answers if a.caller == "poisoner"]
    # only the requests whose own texts the backend cannot take fail (503 backend_failure); a poisoned text shares
    # calls with other requests' texts, which are retried alone and answered
    assert outcomes(poisoned) == {(503, "backend_failure")}
    for phase in ("before", "after"):
        assert outcomes([a for a in healthy if a.within == phase]) == {(200, None)}, phase
    # while the backend fails on everything, only texts all in the cache are answered (200 from the cache)
    broken = [a for a in healthy if a.within == "broken" and a.headers.get("x-embedding-source") != "cache"]
    assert len(broken) >= 8
    assert outcomes(broken) == {(503, "backend_failure")}
    assert outcomes(healthy) == {(200, None), (503, "backend_failure")}
    assert max(a.elapsed for a in answers) < 3.0
    assert_vectors_right(answers)
    assert len(probe) >= 10
    assert again.status_code == 200 and again.json()["cached"] == [False] * len(probe)
    mine = [a for a in load.of("a0") + load.of("a0b") if a.status == 200]
    answered_texts = texts_answered(mine) + len(probe)
    assert day_remaining(again) == DAILY - answered_texts
    assert (usage["requests"], usage["texts"]) == (len(mine) + 1, answered_texts)
    # one ERROR, with the traceback, per failure streak (not per failed request), and a line when it answers again
    errors = logged(caplog, r"^embedding backend \(all-MiniLM-L6-v2\) call on .* failed", logging.ERROR)
    assert errors and all(r.exc_info for r in errors)
    assert len(errors) <= len(poisoned) + 1 < len(broken)
    assert_no_text_logged(caplog, answers, *(key for _, key in accounts))
    recoveries = logged(
        caplog, r"^embedding backend \(all-MiniLM-L6-v2\) answers again after (\d+\.\d) s", logging.INFO
    )
    outage = [r for r in recoveries if r.created > broke + 1.0]
    assert len(outage) >= 1
    assert any(float(re.findall(r"after (\d+\.\d) s", r.getMessage())[0]) >= 1.0 for r in outage)


# 4. A BYOK provider hanging


def test_a_hanging_byok_provider_under_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Free accounts embed on their own provider; paid ones and the static key on this server's model. A provider
    that stops answering costs its own account's requests the bounded timeout (504), then its circuit opens (502 at
    once); nobody else waits on it, and its account embeds there again once it answers."""
    with fake_provider(tmp_path) as provider, caplog.at_level(logging.INFO):
        settings = hosted_settings(
            tmp_path,
            free_tier_compute="byok",
            byok_allow_private_hosts=HOST,
            provider_timeout_seconds=0.3,
            provider_connect_timeout_seconds=2.0,
            **LIMITS,
        )
        app = create_app(settings)
        container = app.state.container
        resolver = resolver_for()
        policy = replace(container.outbound(), ca_file=provider.ca_file)
        client = ProviderClient(OutboundClient(policy, resolver=resolver), base_backoff_s=0.01, breaker_open_s=1.0)
        container.remote.override(providers.Object(RemoteProviders(policy, client, resolver=resolver)))
        with uvicorn_app(app) as (base, _):
            free = sign_up(base, "free@example.com")
            paid = sign_up(base, "paid@example.com")
            container.set_tier().execute("paid@example.com", Tier.PAID)
            with httpx.Client(base_url=base, timeout=30) as http:
                register(http, free[1], provider)  # type: ignore[arg-type]
            load = Load(base)
            load.caller("free", free[1])
            load.caller("free2", free[1])
            load.caller("paid", paid[1])
            load.caller("paid2", paid[1])
            load.caller("ops", STATIC_KEY)
            with load:
                load.during("before", 1.5)
                load.begin("hanging")
                hang(provider)
                load.during("hanging", 3.0)
                load.begin("recovering")
                answer_again(provider)
                load.until("recovering", lambda: bool(logged(caplog, "answers again; its circuit is closed")))
                load.during("after", 1.5)
            with httpx.Client(base_url=base, timeout=30) as http:
                probe = never_answered(load.of("free") + load.of("free2"))[:20]
                again = http.post("/v1/embed/batch", json={"texts": probe}, headers=bearer(free[1]))
                usage = http.get("/v1/usage", headers=bearer(free[1])).json()["totals"]

    answers = load.answers
    local = [a for a in answers if not a.caller.startswith("free")]
    remote = [a for a in answers if a.caller.startswith("free")]
    # this server's model is never held up by someone's provider
    assert outcomes(local) == {(200, None)}
    assert {a.headers["x-embedding-source"] for a in local} <= {"local", "cache"}
    assert max(a.elapsed for a in local) < 3.0  # calls to the provider are held for 60 s
    assert_vectors_right(local)
    # the provider's own account: 504 provider_timeout (each call bounded, three tries), then 502
    # provider_unavailable at once with Retry-After while its circuit is open (texts all in the cache are still
    # answered from it); served by the provider again once it answers
    hanging = [a for a in remote if a.within == "hanging" and a.headers.get("x-embedding-source") != "cache"]
    # (which of a request's three tries meets the open circuit decides between the two)
    assert (502, "provider_unavailable") in outcomes(hanging)
    assert outcomes(hanging) <= {(504, "provider_timeout"), (502, "provider_unavailable")}
    assert outcomes(remote) <= {(200, None), (504, "provider_timeout"), (502, "provider_unavailable")}
    assert all(a.retry_after for a in remote if a.error == "provider_unavailable")
    assert max(a.elapsed for a in remote) < 3 * (0.3 + 0.1) + 1.0
    for phase in ("before", "after"):
        assert outcomes([a for a in remote if a.within == phase]) == {(200, None)}, phase
    assert_vectors_right(remote, expected=provider_vector)
    # nothing failed was cached; failed requests gave their texts back; the usage holds what was answered
    assert len(probe) >= 5
    assert again.status_code == 200 and again.json()["cached"] == [False] * len(probe)
    mine = [a for a in remote if a.status == 200]
    assert day_remaining(again) == DAILY - texts_answered(mine) - len(probe)
    assert (usage["requests"], usage["texts"]) == (len(mine) + 1, texts_answered(mine) + len(probe))
    # the circuit opening and closing are logged
    assert logged(
        caplog, r"^provider provider\.test:\d+ failed \d+ calls in a row; its circuit is open", logging.WARNING
    )
    assert logged(caplog, r"^provider provider\.test:\d+ answers again; its circuit is closed")
    assert_no_text_logged(caplog, answers, PROVIDER_KEY, free[1], paid[1])


def hang(provider: FakeProvider) -> None:
    """Every call from now on is held (until `answer_again`) past any timeout."""
    provider.release.clear()
    provider.plan.extend(ProviderAnswer(delay_s=60) for _ in range(100_000))


def answer_again(provider: FakeProvider) -> None:
    provider.plan.clear()
    provider.release.set()
