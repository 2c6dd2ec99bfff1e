"""Hosted mode through HTTP on the fake embedder: signup, login, keys, tiers and quotas, usage, the shared pool, and
the static keys beside them. SQLite in a temporary DATA_DIR unless a test says otherwise; quotas counted in-process
(the Redis limiter has its own contract suite and two-process test)."""

from __future__ import annotations

import io
import logging
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import event

from domain.model import Tier
from entrypoints import cli
from entrypoints.http.app import create_app
from entrypoints.settings import Settings
from tests.support import (
    API_KEY,
    ENCRYPTION_KEY,
    fake_settings,
    free_port,
    postgres_database,
    relayed_database,
    wait_ready,
)

SECRET = "test-secret-" + "x" * 40
PASSWORD = "correct horse battery"


def hosted_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "hosted": True,
        "jwt_secret": SECRET,
        "encryption_key": ENCRYPTION_KEY,
        "free_tier_compute": "local",
        "bcrypt_rounds": 4,
        "data_dir": tmp_path / "data",
        "embedding_api_key": None,
    }
    values.update(overrides)
    return fake_settings(**values)


@contextmanager
def hosted(tmp_path: Path, **overrides: Any) -> Iterator[TestClient]:
    with TestClient(create_app(hosted_settings(tmp_path, **overrides))) as client:
        wait_ready(client)
        yield client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def signup(client: TestClient, email: str = "ada@example.com", password: str = PASSWORD) -> str:
    response = client.post("/v1/auth/signup", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    key: str = response.json()["api_key"]
    return key


def login(client: TestClient, email: str = "ada@example.com", password: str = PASSWORD) -> str:
    response = client.post("/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def test_signup_gives_a_user_id_and_an_api_key_that_embeds(tmp_path: Path) -> None:
    with hosted(tmp_path) as client:
        response = client.post("/v1/auth/signup", json={"email": "Ada@Example.com", "password": PASSWORD})
        assert response.status_code == 201
        body = response.json()
        assert set(body) == {"user_id", "api_key"}
        assert body["user_id"].startswith("usr_")
        assert body["api_key"].startswith("vec_") and len(body["api_key"]) == 36
        embedded = client.post("/v1/embed", json={"text": "hello"}, headers=bearer(body["api_key"]))
        assert embedded.status_code == 200
        assert embedded.json()["cached"] is False
        taken = client.post("/v1/auth/signup", json={"email": "ada@EXAMPLE.com", "password": "another password"})
        assert taken.status_code == 409
        assert taken.json() == {
            "error": {"type": "email_taken", "message": "an account with this email already exists; log in instead."}
        }


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"email": "ada@example.com", "password": "short"}, 422, "invalid_request"),
        ({"email": "not-an-email", "password": PASSWORD}, 422, "invalid_request"),
        ({"email": "a\ufe6bb@example.com", "password": PASSWORD}, 422, "invalid_request"),  # NFKC: a@b@example.com
        ({"email": "ada@example.com"}, 422, "invalid_request"),
        ({"email": "ada@example.com", "password": "é" * 37}, 400, "invalid_input"),  # 74 bytes: bcrypt reads 72
    ],
)
def test_signup_refuses_bad_credentials(tmp_path: Path, body: dict[str, str], status: int, kind: str) -> None:
    with hosted(tmp_path) as client:
        response = client.post("/v1/auth/signup", json=body)
        assert response.status_code == status
        assert response.json()["error"]["type"] == kind


def test_an_operator_can_close_signup(tmp_path: Path) -> None:
    with hosted(tmp_path, signup_enabled=False) as client:
        response = client.post("/v1/auth/signup", json={"email": "ada@example.com", "password": PASSWORD})
        assert response.status_code == 403
        assert response.json()["error"]["type"] == "signup_closed"


def test_login_gives_an_hs256_session_token_with_exp_and_iat(tmp_path: Path) -> None:
    with hosted(tmp_path, jwt_expiry_seconds=3600) as client:
        user_id = client.post("/v1/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).json()[
            "user_id"
        ]
        response = client.post("/v1/auth/login", json={"email": "ADA@example.com", "password": PASSWORD})
        assert response.status_code == 200
        body = response.json()
        assert body["expires_in"] == 3600
        assert jwt.get_unverified_header(body["token"])["alg"] == "HS256"
        claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
        assert claims["sub"] == user_id
        assert claims["exp"] - claims["iat"] == 3600
        assert abs(claims["iat"] - time.time()) < 60


def test_a_wrong_password_and_an_unknown_email_get_one_answer_in_about_the_same_time(tmp_path: Path) -> None:
    with hosted(tmp_path, bcrypt_rounds=8, login_max_failures=1000) as client:
        signup(client)

        def attempt(email: str, password: str) -> tuple[float, int, Any]:
            started = time.perf_counter()
            response = client.post("/v1/auth/login", json={"email": email, "password": password})
            return time.perf_counter() - started, response.status_code, response.json()

        wrong = [attempt("ada@example.com", "wrong password") for _ in range(7)]
        unknown = [attempt("nobody@example.com", "wrong password") for _ in range(7)]
        assert {(status, repr(body)) for _, status, body in wrong + unknown} == {
            (401, repr({"error": {"type": "invalid_credentials", "message": "invalid email or password."}}))
        }
        wrong_s = statistics.median(t for t, _, _ in wrong)
        unknown_s = statistics.median(t for t, _, _ in unknown)
        assert 0.5 < wrong_s / unknown_s < 2.0, (wrong_s, unknown_s)  # both pay one bcrypt check


def test_repeated_login_failures_for_one_email_are_throttled(tmp_path: Path) -> None:
    with hosted(tmp_path, login_max_failures=3, login_failure_window_seconds=600) as client:
        signup(client)
        signup(client, "grace@example.com")
        for _ in range(3):
            assert (
                client.post("/v1/auth/login", json={"email": "ada@example.com", "password": "nope-nope"}).status_code
                == 401
            )
        refused = client.post("/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limited"
        assert 0 < int(refused.headers["retry-after"]) <= 600
        assert login(client, "grace@example.com")  # another email is not affected


def test_successful_logins_do_not_count_as_failures(tmp_path: Path) -> None:
    with hosted(tmp_path, login_max_failures=2) as client:
        signup(client)
        for _ in range(5):
            assert login(client)


def test_keys_are_created_listed_without_the_key_and_revoked(tmp_path: Path) -> None:
    with hosted(tmp_path) as client:
        first = signup(client)
        token = login(client)
        created = client.post("/v1/keys", headers=bearer(token))
        assert created.status_code == 201
        second, prefix = created.json()["api_key"], created.json()["prefix"]
        assert set(created.json()) == {"api_key", "prefix"} and second.startswith(prefix) and len(prefix) == 12
        assert client.post("/v1/embed", json={"text": "x"}, headers=bearer(second)).status_code == 200
        listed = client.get("/v1/keys", headers=bearer(token))
        assert listed.status_code == 200
        keys = listed.json()["keys"]
        assert [k["prefix"] for k in keys] == [first[:12], prefix]
        assert all(set(k) == {"prefix", "created_at", "last_used_at", "revoked_at"} for k in keys)
        assert first not in listed.text and second not in listed.text
        revoked = client.delete(f"/v1/keys/{prefix}", headers=bearer(token))
        assert (revoked.status_code, revoked.json()) == (200, {"revoked": True})
        refused = client.post("/v1/embed", json={"text": "x"}, headers=bearer(second))
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert client.post("/v1/embed", json={"text": "x"}, headers=bearer(first)).status_code == 200
        assert client.get("/v1/keys", headers=bearer(token)).json()["keys"][1]["revoked_at"] is not None
        missing = client.delete("/v1/keys/vec_00000000", headers=bearer(token))
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"


def test_an_account_cannot_revoke_another_accounts_key(tmp_path: Path) -> None:
    with hosted(tmp_path) as client:
        ada_key = signup(client)
        signup(client, "grace@example.com")
        grace = login(client, "grace@example.com")
        assert client.delete(f"/v1/keys/{ada_key[:12]}", headers=bearer(grace)).status_code == 404
        assert client.post("/v1/embed", json={"text": "x"}, headers=bearer(ada_key)).status_code == 200


def test_last_used_at_is_kept_without_a_database_write_per_request(tmp_path: Path) -> None:
    with hosted(tmp_path, usage_flush_seconds=3600) as client:
        key = signup(client)
        token = login(client)
        writes: list[str] = []
        engine = client.app.state.container.database().engine  # type: ignore[attr-defined]

        def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if statement.lstrip().upper().startswith("UPDATE EMBEDDING_API_KEYS"):
                writes.append(statement)

        event.listen(engine, "before_cursor_execute", record)
        for _ in range(20):
            assert client.post("/v1/embed", json={"text": "x"}, headers=bearer(key)).status_code == 200
        assert writes == []
        shown = client.get("/v1/keys", headers=bearer(token)).json()["keys"][0]["last_used_at"]
        assert shown is not None  # from the buffer, before any write
        client.app.state.container.usage().flush()  # type: ignore[attr-defined]
        assert len(writes) == 1  # one statement for every key used since the last flush
        event.remove(engine, "before_cursor_execute", record)


def test_each_account_is_its_own_cache_tenant_and_public_texts_are_shared(tmp_path: Path) -> None:
    with hosted(tmp_path) as client:
        ada, grace = bearer(signup(client)), bearer(signup(client, "grace@example.com"))
        assert client.post("/v1/embed", json={"text": "private"}, headers=ada).json()["cached"] is False
        assert client.post("/v1/embed", json={"text": "private"}, headers=ada).json()["cached"] is True
        assert client.post("/v1/embed", json={"text": "private"}, headers=grace).json()["cached"] is False
        public = client.post("/v1/embed/batch", json={"texts": ["open", "data"], "public": True}, headers=ada)
        assert public.json()["cached"] == [False, False]
        assert client.post("/v1/embed", json={"text": "open", "public": True}, headers=grace).json()["cached"] is True
        assert client.post("/v1/embed/batch", json={"texts": ["data", "new"]}, headers=grace).json()["cached"] == [
            True,
            False,
        ]
        ada_stats = client.get("/v1/stats", headers=ada).json()
        assert ada_stats["tenant"].startswith("usr_") and ada_stats["cache"] == "sqlite"
        assert ada_stats["total_cached"] == 1  # "private"; the public texts belong to the shared pool


def test_the_daily_quota_refuses_a_request_whole_and_consumes_nothing(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_daily_limit=10) as client:
        key = bearer(signup(client))
        assert (
            client.post("/v1/embed/batch", json={"texts": [f"t{i}" for i in range(8)]}, headers=key).status_code == 200
        )
        refused = client.post("/v1/embed/batch", json={"texts": ["a", "b", "c"]}, headers=key)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["type"] == "rate_limited"
        assert (error["limit"], error["window"]) == (10, "day")
        assert error["reset_at"].endswith("T00:00:00Z")
        assert "10 texts" in error["message"] and error["reset_at"] in error["message"]
        assert 0 < int(refused.headers["retry-after"]) <= 86400
        # nothing of the refused request was consumed: two more texts (cache hits count) still fit, then none
        assert client.post("/v1/embed/batch", json={"texts": ["t0", "t1"]}, headers=key).status_code == 200
        assert client.post("/v1/embed", json={"text": "t0"}, headers=key).status_code == 429


def test_the_paid_tier_has_its_own_quota(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_daily_limit=2, paid_tier_daily_limit=5) as client:
        key = bearer(signup(client))
        assert client.post("/v1/embed/batch", json={"texts": ["a", "b", "c"]}, headers=key).status_code == 429
        client.app.state.container.set_tier().execute("ada@example.com", Tier.PAID)  # type: ignore[attr-defined]
        assert client.post("/v1/embed/batch", json={"texts": ["a", "b", "c"]}, headers=key).status_code == 200


def test_the_per_minute_request_limit(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_per_minute=3) as client:
        key = bearer(signup(client))
        statuses = [client.post("/v1/embed", json={"text": "x"}, headers=key).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = client.get("/v1/stats", headers=key)
        assert refused.status_code == 429
        assert refused.json()["error"]["window"] == "minute"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_every_hosted_answer_carries_the_rate_limit_headers(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_daily_limit=3, free_tier_per_minute=50) as client:
        key = bearer(signup(client))
        answers = [
            client.post("/v1/embed", json={"text": "x"}, headers=key),
            client.post("/v1/embed", json={"text": "x", "model": "no-such-model"}, headers=key),  # 400 after admission
            client.post("/embed", json={"texts": ["a", "b"]}, headers=key),  # the events dialect, same account
            client.post("/v1/embed/batch", json={"texts": ["a", "b"]}, headers=key),  # 429
            client.get("/v1/stats", headers=key),
            client.get("/v1/usage", headers=key),
        ]
        assert [a.status_code for a in answers] == [200, 400, 200, 429, 200, 200]
        for answer in answers:
            headers = answer.headers
            assert headers["ratelimit-policy"] == '"day";q=3;w=86400, "minute";q=50;w=60'
            assert headers["ratelimit"].startswith('"day";r=')
            assert headers["x-ratelimit-limit-requests"] == "50"
            assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert answers[0].headers["ratelimit"].startswith('"day";r=2;')
        assert answers[0].headers["x-ratelimit-remaining-requests"] == "49"
        assert answers[2].headers["ratelimit"].startswith('"day";r=0;')


def test_a_failed_request_gives_its_texts_back(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_daily_limit=5) as client:
        key = bearer(signup(client))
        bad = client.post("/v1/embed/batch", json={"texts": ["a"] * 5, "model": "unknown"}, headers=key)
        assert bad.status_code == 400
        assert client.post("/v1/embed/batch", json={"texts": list("abcde")}, headers=key).status_code == 200


def test_usage_per_day_and_model_with_an_api_key_or_a_session_token(tmp_path: Path) -> None:
    with hosted(tmp_path) as client:
        key = bearer(signup(client))
        client.post("/v1/embed/batch", json={"texts": ["one", "two", "one"]}, headers=key)
        client.post("/v1/embed", json={"text": "two"}, headers=key)
        by_key = client.get("/v1/usage?days=1", headers=key)
        by_token = client.get("/v1/usage?days=1", headers=bearer(login(client)))
        assert by_key.status_code == by_token.status_code == 200
        body = by_key.json()
        assert body["days"] == 1 and body["account_id"].startswith("usr_")
        (row,) = body["usage"]
        assert row["model"] == "all-mpnet-base-v2"
        # per text: the first request's three are misses ("one" twice, computed once), the second's "two" a hit
        assert (row["requests"], row["texts"], row["cache_hits"], row["cache_misses"]) == (2, 4, 1, 3)
        assert row["tokens"] > 0 and row["compute_ms"] > 0
        assert body["totals"] == {k: v for k, v in row.items() if k not in ("date", "model")}
        assert by_token.json()["usage"] == body["usage"]
        assert client.get("/v1/usage?days=0", headers=key).status_code == 422


def test_usage_is_written_at_shutdown(tmp_path: Path) -> None:
    with hosted(tmp_path, usage_flush_seconds=3600) as client:
        key = signup(client)
        for text in ("a", "b", "c"):
            client.post("/v1/embed", json={"text": text}, headers=bearer(key))
    with hosted(tmp_path) as client:
        (row,) = client.get("/v1/usage?days=1", headers=bearer(key)).json()["usage"]
        assert (row["requests"], row["texts"]) == (3, 3)


@pytest.mark.parametrize(
    ("static_key", "tenant"),
    [
        ({"embedding_api_key": API_KEY}, "default"),
        ({"peoplepad_client_key": API_KEY}, "peoplepad"),
        ({"tenant_api_keys": {"acme": API_KEY}}, "acme"),
    ],
    ids=["EMBEDDING_API_KEY", "PEOPLEPAD_CLIENT_KEY", "TENANT_API_KEYS"],
)
def test_the_static_keys_keep_working_unmetered_beside_accounts(
    tmp_path: Path, static_key: dict[str, Any], tenant: str
) -> None:
    with hosted(tmp_path, free_tier_daily_limit=1, free_tier_per_minute=2, **static_key) as client:
        account_key = bearer(signup(client))
        assert client.post("/v1/embed", json={"text": "a"}, headers=account_key).headers["ratelimit"]
        for _ in range(3):
            answer = client.post("/embed", json={"texts": ["a", "b"]}, headers=bearer(API_KEY))
            assert answer.status_code == 200
            assert "ratelimit" not in answer.headers
        answers = [
            client.post("/v1/embed", json={"text": "a"}, headers=bearer(API_KEY)),
            client.post("/v1/embed/batch", json={"texts": ["a", "b"]}, headers=bearer(API_KEY)),
            client.post(
                "/v1/embeddings", json={"input": ["a", "b"], "model": "all-mpnet-base-v2"}, headers=bearer(API_KEY)
            ),
            client.get("/v1/stats", headers=bearer(API_KEY)),
        ]
        assert [a.status_code for a in answers] == [200, 200, 200, 200]
        assert not any("ratelimit" in a.headers or "x-ratelimit-limit-requests" in a.headers for a in answers)
        assert answers[-1].json()["tenant"] == tenant
        assert client.get("/v1/usage", headers=bearer(API_KEY)).status_code == 401


def test_v1_health_needs_no_key(tmp_path: Path) -> None:
    with hosted(tmp_path) as client:
        answer = client.get("/v1/health")
        assert answer.status_code == 200
        assert answer.json() == {"status": "ok", "version": client.app.version}  # type: ignore[attr-defined]


def test_account_routes_exist_only_in_hosted_mode() -> None:
    with TestClient(create_app(fake_settings())) as client:
        assert client.post("/v1/auth/signup", json={"email": "a@example.com", "password": PASSWORD}).status_code == 404


@pytest.mark.parametrize("secret", [None, "too-short-a-secret"])
def test_hosted_mode_needs_a_jwt_secret_of_32_bytes(tmp_path: Path, secret: str | None) -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        hosted_settings(tmp_path, jwt_secret=secret)


def test_hosted_mode_refuses_several_workers_without_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOSTED", "true")
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("ENCRYPTION_KEY", ENCRYPTION_KEY)
    monkeypatch.setenv("EMBEDDER_BACKEND", "fake")
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert cli.main(["serve", "--workers", "2", "--port", str(free_port())]) == 2


def test_operators_manage_accounts_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {
        "HOSTED": "true",
        "JWT_SECRET": SECRET,
        "ENCRYPTION_KEY": ENCRYPTION_KEY,
        "DATA_DIR": str(tmp_path / "data"),
        "BCRYPT_ROUNDS": "4",
        "SIGNUP_ENABLED": "false",
        "EMBEDDER_BACKEND": "fake",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli.main(["accounts", "create", "Op@Example.com", "--tier", "paid", "--password-stdin"]) == 0
    created = dict(part.split("=", 1) for part in capsys.readouterr().out.split())
    assert created["tier"] == "paid" and created["api_key"].startswith("vec_")
    assert cli.main(["accounts", "set-tier", "op@example.com", "free"]) == 0
    assert cli.main(["accounts", "list"]) == 0
    listing = capsys.readouterr().out.strip().splitlines()
    assert listing[-1].split("\t")[:3] == [created["user_id"], "op@example.com", "free"]
    assert cli.main(["accounts", "set-tier", "nobody@example.com", "paid"]) == 2
    with hosted(tmp_path, signup_enabled=False) as client:  # the CLI's account logs in and embeds
        assert login(client, "op@example.com")
        assert client.post("/v1/embed", json={"text": "x"}, headers=bearer(created["api_key"])).status_code == 200


def test_hosted_mode_keeps_accounts_and_the_cache_in_one_postgres_database(tmp_path: Path) -> None:
    with postgres_database() as url, hosted(tmp_path, database_url=url) as client:
        key = bearer(signup(client))
        client.post("/v1/embed", json={"text": "kept"}, headers=key)
        assert client.get("/v1/stats", headers=key).json()["cache"] == "postgres"
        engine = client.app.state.container.database().engine  # type: ignore[attr-defined]
        with engine.connect() as connection:
            counts = {
                table: connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
                for table in ("embedding_accounts", "embedding_api_keys", "embedding_cache_entries")
            }
        assert counts == {"embedding_accounts": 1, "embedding_api_keys": 1, "embedding_cache_entries": 1}


def test_requests_are_served_while_redis_is_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis_server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        settings = {"redis_url": f"redis://127.0.0.1:{port}/0", "cache_retry_seconds": 0.3}
        with hosted(tmp_path, **settings) as client, caplog.at_level(logging.INFO, logger="adapters.resilience"):
            key = bearer(signup(client))
            assert client.post("/v1/embed", json={"text": "x"}, headers=key).status_code == 200
            redis_server.terminate()
            redis_server.wait(5)
            for _ in range(5):
                answer = client.post("/v1/embed", json={"text": "x"}, headers=key)
                assert answer.status_code == 200 and "ratelimit" in answer.headers
            redis_server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            time.sleep(0.6)
            for _ in range(3):
                assert client.post("/v1/embed", json={"text": "x"}, headers=key).status_code == 200
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "Redis is unreachable" in warnings[0].getMessage()
        assert any("recovered" in r.getMessage() for r in caplog.records)
    finally:
        redis_server.terminate()
        redis_server.wait(5)


def test_an_email_logs_in_as_it_was_signed_up_whatever_its_unicode_form(tmp_path: Path) -> None:
    with hosted(tmp_path) as client:
        for typed in ("jose\u0301@example.com", "u@\uff45xample.com"):  # a combining accent; a fullwidth e
            signup(client, typed)
            assert login(client, typed)
        assert login(client, "jos\u00e9@example.com")  # the precomposed form is the same account
        assert login(client, "U@EXAMPLE.COM")
        taken = client.post("/v1/auth/signup", json={"email": "u@example.com", "password": PASSWORD})
        assert taken.status_code == 409


def test_public_takes_only_a_boolean(tmp_path: Path) -> None:
    with hosted(tmp_path) as client:
        key = bearer(signup(client))
        for value in ("yes", 1, "true"):
            answer = client.post("/v1/embed", json={"text": "x", "public": value}, headers=key)
            assert answer.status_code == 422, value


def test_nul_characters_are_refused_like_any_other_wrong_value_on_postgres(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with postgres_database() as url, hosted(tmp_path, database_url=url) as client, caplog.at_level(logging.WARNING):
        signup(client)
        token = bearer(login(client))
        refused = client.post("/v1/auth/login", json={"email": "a\u0000b@example.com", "password": PASSWORD})
        assert (refused.status_code, refused.json()["error"]["type"]) == (401, "invalid_credentials")
        for prefix in ("%00", "vec_%00%00"):
            assert client.delete(f"/v1/keys/{prefix}", headers=token).status_code == 404
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []  # no outage


def test_logins_while_the_database_is_down_are_not_counted_as_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with relayed_database() as (_, relayed, proxy):
        with hosted(tmp_path, database_url=relayed, login_max_failures=2, cache_timeout_seconds=0.5) as client:
            signup(client)
            proxy.cut()
            caplog.set_level(logging.INFO, logger="adapters.resilience")
            for _ in range(4):
                down = client.post("/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
                assert down.status_code == 503 and down.json()["error"]["type"] == "accounts_unavailable"
            proxy.start()
            assert login(client)
        outage = [r for r in caplog.records if "account database" in r.getMessage()]
        assert [r.levelno for r in outage] == [logging.WARNING, logging.INFO]  # one per outage, the recovery


def test_a_request_that_could_never_succeed_is_refused_for_what_it_is_before_the_quota(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_daily_limit=5, max_batch_size=10) as client:
        key = bearer(signup(client))
        too_big = client.post("/v1/embed/batch", json={"texts": ["t"] * 11}, headers=key)
        assert (too_big.status_code, too_big.json()["error"]["type"]) == (413, "batch_too_large")
        assert too_big.headers["ratelimit"].startswith('"day";r=5;')  # the windows, untouched
        for body in ({"texts": ["t"] * 6, "model": "nope"}, {"texts": []}):
            refused = client.post("/v1/embed/batch", json=body, headers=key)
            assert refused.status_code == 400 and refused.headers["ratelimit"].startswith('"day";r=5;')
        malformed = client.post("/v1/embed", content=b"{nope", headers={**key, "content-type": "application/json"})
        assert malformed.status_code == 422 and malformed.headers["ratelimit"].startswith('"day";r=5;')
        assert client.post("/v1/embed/batch", json={"texts": list("abcde")}, headers=key).status_code == 200


def test_the_headers_of_a_failed_request_show_its_texts_given_back(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_daily_limit=5, free_tier_per_minute=50) as client:
        key = bearer(signup(client))
        client.app.state.container.host().embedder().embed = None  # type: ignore[attr-defined]  # the backend fails
        failed = client.post("/v1/embed/batch", json={"texts": ["a", "b", "c"]}, headers=key)
        assert failed.status_code == 503
        assert failed.headers["ratelimit"].startswith('"day";r=5;')  # given back
        assert failed.headers["x-ratelimit-remaining-requests"] == "49"  # the request still counts


class BrokenEmbedding:
    """An embedding use case whose inputs pass the checks and whose work then fails unexpectedly (no domain error)."""

    def check(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug, say")


def test_an_unexpected_failure_still_carries_the_rate_limit_headers(tmp_path: Path) -> None:
    app = create_app(hosted_settings(tmp_path, free_tier_daily_limit=5, free_tier_per_minute=50))
    app.state.container.embed_batch.override(providers.Object(BrokenEmbedding()))
    app.state.container.embed_inputs.override(providers.Object(BrokenEmbedding()))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        key = bearer(signup(client))
        failed = client.post("/v1/embed/batch", json={"texts": ["a", "b", "c"]}, headers=key)
        assert (failed.status_code, failed.json()) == (
            500,
            {"error": {"type": "internal_error", "message": "internal server error"}},
        )
        openai = client.post("/v1/embeddings", json={"input": ["a", "b"], "model": "all-mpnet-base-v2"}, headers=key)
        assert (openai.status_code, openai.json()["error"]["code"]) == (500, "internal_error")
    for answer, remaining in ((failed, "49"), (openai, "48")):
        assert answer.headers["ratelimit-policy"] == '"day";q=5;w=86400, "minute";q=50;w=60'
        assert answer.headers["ratelimit"].startswith('"day";r=5;')  # the texts given back
        assert answer.headers["x-ratelimit-limit-requests"] == "50"
        assert answer.headers["x-ratelimit-remaining-requests"] == remaining  # the request still counts
        assert answer.headers["x-ratelimit-reset-requests"].endswith("s")


def test_a_flood_of_logins_does_not_hold_up_embedding(tmp_path: Path) -> None:
    """bcrypt (12 rounds: ~0.2 s a check) runs on threads of its own: 16 logins at once leave the shared worker
    threads (key lookups, quotas, the cache) free, so embedding answers stay fast meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests.support import uvicorn_app

    app = create_app(hosted_settings(tmp_path, bcrypt_rounds=12, login_max_failures=1000))
    with uvicorn_app(app) as (base, _), httpx.Client(base_url=base, timeout=30) as client:
        key = bearer(
            client.post("/v1/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).json()["api_key"]
        )
        client.post("/v1/embed", json={"text": "warm"}, headers=key)

        def log_in(i: int) -> int:
            with httpx.Client(base_url=base, timeout=60) as own:
                return own.post(
                    "/v1/auth/login", json={"email": f"x{i}@example.com", "password": "wrong-one"}
                ).status_code

        with ThreadPoolExecutor(16) as pool:
            flood = [pool.submit(log_in, i) for i in range(16)]
            time.sleep(0.2)
            latencies = []
            for _ in range(10):
                started = time.perf_counter()
                assert client.post("/v1/embed", json={"text": "warm"}, headers=key).status_code == 200
                latencies.append(time.perf_counter() - started)
            assert not all(f.done() for f in flood)  # measured while the flood was on
            assert [f.result() for f in flood] == [401] * 16
        assert max(latencies) < 0.5, latencies


def test_session_routes_count_in_a_window_of_their_own_so_a_key_holder_cannot_block_revocation(
    tmp_path: Path,
) -> None:
    with hosted(tmp_path, free_tier_per_minute=4) as client:
        key = bearer(signup(client))
        token = bearer(login(client))
        by_key = [client.get("/metadata", headers=key) for _ in range(5)]  # a leaked key, used to the limit
        assert [a.status_code for a in by_key] == [200, 200, 200, 200, 429]
        assert [a.headers["x-ratelimit-remaining-requests"] for a in by_key[:4]] == ["3", "2", "1", "0"]
        answers = [
            client.get("/v1/keys", headers=token),
            client.get("/v1/usage", headers=token),
            client.delete(f"/v1/keys/{key['Authorization'][7:19]}", headers=token),  # the owner revokes it
        ]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["3", "2", "1"]
        assert client.get("/metadata", headers=key).status_code == 401
        client.get("/v1/keys", headers=token)
        refused = client.get("/v1/keys", headers=token)
        assert refused.status_code == 429 and refused.json()["error"]["window"] == "minute"


def test_requests_refused_for_their_input_still_count_in_the_minute(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_per_minute=3) as client:
        key = bearer(signup(client))
        bad_model = client.post("/v1/embed", json={"text": "x", "model": "nope"}, headers=key)
        assert (bad_model.status_code, bad_model.headers["x-ratelimit-remaining-requests"]) == (400, "2")
        not_json = client.post("/v1/embed", content=b"{", headers={**key, "content-type": "application/json"})
        assert (not_json.status_code, not_json.headers["x-ratelimit-remaining-requests"]) == (422, "1")
        assert client.post("/v1/embed", json={"text": "x"}, headers=key).status_code == 200
        over = client.post("/v1/embed", json={"text": "x", "model": "nope"}, headers=key)
        assert (over.status_code, over.json()["error"]["window"]) == (429, "minute")
        over = client.post("/v1/embed", content=b"{", headers={**key, "content-type": "application/json"})
        assert (over.status_code, over.json()["error"]["type"]) == (429, "rate_limited")


def test_a_request_refused_for_its_query_or_path_counts_once(tmp_path: Path) -> None:
    with hosted(tmp_path, free_tier_per_minute=10) as client:
        key, token = bearer(signup(client)), bearer(login(client))
        answers = [
            client.get("/v1/usage?days=0", headers=key),
            client.get("/v1/usage?days=abc", headers=token),
            client.delete("/v1/keys/" + "x" * 70, headers=token),
        ]
        assert [a.status_code for a in answers] == [422, 422, 422]
        assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["9", "9", "8"]


def test_an_address_on_a_special_use_domain_signs_up(tmp_path: Path) -> None:
    """No mail is sent: an address is the account's name, and self-hosted teams use .test, .local and the like."""
    with hosted(tmp_path) as client:
        for email in ("ada@lab.test", "ops@build.local", "grace@host.internal"):
            assert client.post("/v1/auth/signup", json={"email": email, "password": PASSWORD}).status_code == 201
        refused = client.post("/v1/auth/signup", json={"email": "no-at-sign.test", "password": PASSWORD})
        assert refused.status_code == 422
