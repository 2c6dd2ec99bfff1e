"""Security of the hosted mode over HTTP: no credential ever reaches a log line or an error body, forged, expired
and mistyped session tokens are refused, API keys and session tokens open only their own routes, SQL injection
attempts are inert (on SQLite and PostgreSQL), and a malformed key is refused without a database lookup."""

from __future__ import annotations

import base64
import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import jwt
import pytest
from fastapi.testclient import TestClient

from domain.api_keys import looks_like_account_key, new_api_key, well_formed
from entrypoints.http.app import create_app
from tests.support import (
    API_KEY,
    ENCRYPTION_KEY,
    fake_settings,
    postgres_database,
    relayed_database,
    wait_ready,
)

JWT_SECRET = "contract-test-jwt-secret-0123456789abcdef"
PASSWORD = "correct horse battery staple"

UNAUTHENTICATED = {
    "error": {"type": "unauthenticated", "message": "missing or invalid API key; send 'Authorization: Bearer <key>'."}
}
REVOKED = {
    "error": {
        "type": "unauthenticated",
        "message": "this API key was revoked; create a new one with POST /v1/keys.",
    }
}
SESSION_REQUIRED = {
    "error": {
        "type": "unauthenticated",
        "message": "missing, invalid or expired session token; send 'Authorization: Bearer <token>' with a token "
        "from POST /v1/auth/login.",
    }
}
INVALID_CREDENTIALS = {"error": {"type": "invalid_credentials", "message": "invalid email or password."}}
KEY_NOT_FOUND = {
    "error": {
        "type": "not_found",
        "message": "this account has no API key with that prefix; GET /v1/keys lists them.",
    }
}
ACCOUNTS_UNAVAILABLE = {
    "error": {"type": "accounts_unavailable", "message": "the account database is unavailable; retry shortly."}
}
CLIENT_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2")


@contextmanager
def hosted_client(**overrides: Any) -> Iterator[TestClient]:
    settings = fake_settings(
        hosted=True,
        jwt_secret=JWT_SECRET,
        encryption_key=ENCRYPTION_KEY,
        free_tier_compute="local",
        bcrypt_rounds=4,
        **overrides,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Settings for the accounts' database: a SQLite file in DATA_DIR, or a fresh PostgreSQL database."""
    if kind == "sqlite":
        yield {"data_dir": tmp_path / "data"}
        return
    with postgres_database() as url:
        yield {"database_url": url}


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def signup(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, str]:
    response = client.post("/v1/auth/signup", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    assert set(body) == {"user_id", "api_key"} and well_formed(body["api_key"])
    return body


def login(client: TestClient, email: str, password: str = PASSWORD) -> str:
    response = client.post("/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def embed(client: TestClient, credential: str) -> httpx2.Response:
    return client.post("/v1/embed", json={"text": "hello"}, headers=bearer(credential))


def assert_refused(response: httpx2.Response, body: dict[str, Any], status: int = 401) -> None:
    assert (response.status_code, response.json()) == (status, body)
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def b64url(claims: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()


def test_no_credential_appears_in_logs_or_error_bodies(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    for name in CLIENT_LOGGERS:  # the test's own HTTP client logs whole URLs, query strings included
        caplog.set_level(logging.WARNING, logger=name)
    caplog.set_level(logging.DEBUG)  # last: it also sets the capturing handler's level
    wrong_password = "Tr0ub4dor&3-not-mine"
    short_password = "s3cr7!x"
    taken_password = "another-secret-password-taken"
    invalid_email_password = "hunter2-hunter2-invalid-email"
    broken_json_password = "broken-json-secret-password"
    secrets: list[str] = [PASSWORD, wrong_password, short_password, taken_password]
    secrets += [invalid_email_password, broken_json_password]
    responses: list[httpx2.Response] = []

    def sent(response: httpx2.Response) -> httpx2.Response:
        responses.append(response)
        return response

    with hosted_client(data_dir=tmp_path / "data") as client:
        account = signup(client, "owner@example.com")
        key = account["api_key"]
        token = login(client, "owner@example.com")
        second = sent(client.post("/v1/keys", headers=bearer(token))).json()["api_key"]
        doomed = sent(client.post("/v1/keys", headers=bearer(token))).json()["api_key"]
        revoked = sent(client.delete(f"/v1/keys/{doomed[:12]}", headers=bearer(token)))
        assert (revoked.status_code, revoked.json()) == (200, {"revoked": True})
        unknown = new_api_key()
        malformed = key[:-1] + ("B" if key[-1] == "A" else "A")
        truncated = key[:-3]
        secrets += [key, second, doomed, token, unknown, malformed, truncated]

        for email in ("owner@example.com", "nobody@example.com"):
            bad_login = sent(client.post("/v1/auth/login", json={"email": email, "password": wrong_password}))
            assert_refused(bad_login, INVALID_CREDENTIALS)
        for wrong in (unknown, malformed, truncated, "not-a-key-at-all"):
            assert_refused(sent(embed(client, wrong)), UNAUTHENTICATED)
        assert_refused(sent(embed(client, doomed)), REVOKED)
        basic = sent(client.post("/v1/embed", json={"text": "x"}, headers={"Authorization": f"Basic {key}"}))
        assert_refused(basic, UNAUTHENTICATED)
        assert_refused(sent(client.get("/v1/keys", headers=bearer(key))), SESSION_REQUIRED)
        assert_refused(sent(client.post("/v1/keys", headers=bearer(second))), SESSION_REQUIRED)
        assert_refused(sent(client.delete(f"/v1/keys/{key[:12]}", headers=bearer(key))), SESSION_REQUIRED)
        assert_refused(sent(embed(client, token)), UNAUTHENTICATED)
        assert_refused(sent(client.get("/v1/stats", headers=bearer(token))), UNAUTHENTICATED)

        short = sent(client.post("/v1/auth/signup", json={"email": "short@example.com", "password": short_password}))
        invalid_email = {"email": "not an email", "password": invalid_email_password}
        invalid = sent(client.post("/v1/auth/signup", json=invalid_email))
        for response in (short, invalid):
            assert (response.status_code, response.json()["error"]["type"]) == (422, "invalid_request")
        broken = f'{{"email": "owner@example.com", "password": "{broken_json_password}"'
        for path in ("/v1/auth/signup", "/v1/auth/login"):
            response = sent(client.post(path, content=broken, headers={"Content-Type": "application/json"}))
            assert (response.status_code, response.json()["error"]["type"]) == (422, "invalid_request")
        taken = sent(client.post("/v1/auth/signup", json={"email": "OWNER@example.com", "password": taken_password}))
        assert (taken.status_code, taken.json()["error"]["type"]) == (409, "email_taken")

        assert_refused(sent(client.delete(f"/v1/keys/{key}", headers=bearer(token))), KEY_NOT_FOUND, 404)
        assert_refused(sent(client.get(f"/v1/keys?token={token}")), SESSION_REQUIRED)
        assert_refused(sent(client.get(f"/v1/keys?access_token={token}&api_key={key}")), SESSION_REQUIRED)
        assert_refused(sent(client.post(f"/v1/embed?api_key={key}", json={"text": "x"})), UNAUTHENTICATED)
        assert_refused(sent(client.get(f"/v1/usage?access_token={token}")), UNAUTHENTICATED)

        assert sent(embed(client, key)).status_code == 200
        assert sent(embed(client, second)).status_code == 200
        assert sent(client.get("/v1/usage", headers=bearer(token))).status_code == 200

    assert any(r.name == "entrypoints.http.access" for r in caplog.records), "the access log was not captured"
    formatter = logging.Formatter()
    logged = caplog.text.splitlines() + [
        f"{formatter.format(r)} {r.args!r} {r.exc_text or ''} {vars(r)!r}" for r in caplog.records
    ]
    assert [line for line in logged if any(secret in line for secret in secrets)] == []
    refusals = [r for r in responses if not 200 <= r.status_code < 300]
    assert len(refusals) >= 20
    echoed = [
        f"{r.request.method} {r.request.url.path} {r.status_code} {r.text} {sorted(r.headers.items())}"
        for r in refusals
        if any(secret in r.text or secret in repr(r.headers.items()) for secret in secrets)
    ]
    assert echoed == []


def test_forged_expired_and_mistyped_session_tokens_are_refused(tmp_path: Path) -> None:
    with hosted_client(data_dir=tmp_path / "data") as client:
        user_id = signup(client, "owner@example.com")["user_id"]
        real = login(client, "owner@example.com")
        assert jwt.decode(real, JWT_SECRET, algorithms=["HS256"])["sub"] == user_id
        now = int(time.time())
        claims = {"sub": user_id, "iat": now, "exp": now + 3600, "jti": "forged", "typ": "session"}
        alg_none = f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims)}."
        wrong_secret = jwt.encode(claims, "another-secret-of-at-least-32-bytes-long", algorithm="HS256")
        expired = jwt.encode(claims | {"iat": now - 7200, "exp": now - 3600}, JWT_SECRET, algorithm="HS256")
        other_type = jwt.encode(claims | {"typ": "refresh"}, JWT_SECRET, algorithm="HS256")
        with warnings.catch_warnings(action="ignore"):  # PyJWT: the secret is short for HS512 (it is for HS256)
            other_algorithm = jwt.encode(claims, JWT_SECRET, algorithm="HS512")
        honest = jwt.encode(claims, JWT_SECRET, algorithm="HS256")  # the same claims, rightly signed: accepted

        for token in (real, honest):
            response = client.get("/v1/keys", headers=bearer(token))
            assert response.status_code == 200 and len(response.json()["keys"]) == 1
        for token in (alg_none, wrong_secret, expired, other_type, other_algorithm):
            assert_refused(client.get("/v1/keys", headers=bearer(token)), SESSION_REQUIRED)
            assert_refused(client.post("/v1/keys", headers=bearer(token)), SESSION_REQUIRED)
        assert len(client.get("/v1/keys", headers=bearer(real)).json()["keys"]) == 1


def test_api_keys_never_open_account_routes_nor_tokens_embedding_routes(tmp_path: Path) -> None:
    with hosted_client(data_dir=tmp_path / "data") as client:
        key = signup(client, "owner@example.com")["api_key"]
        token = login(client, "owner@example.com")
        for credential in (key, API_KEY):
            assert_refused(client.get("/v1/keys", headers=bearer(credential)), SESSION_REQUIRED)
            assert_refused(client.post("/v1/keys", headers=bearer(credential)), SESSION_REQUIRED)
            assert_refused(client.delete(f"/v1/keys/{key[:12]}", headers=bearer(credential)), SESSION_REQUIRED)
        listed = client.get("/v1/keys", headers=bearer(token)).json()["keys"]
        assert [(k["prefix"], k["revoked_at"]) for k in listed] == [(key[:12], None)]

        assert_refused(embed(client, token), UNAUTHENTICATED)
        batch = client.post("/v1/embed/batch", json={"texts": ["a", "b"]}, headers=bearer(token))
        assert_refused(batch, UNAUTHENTICATED)
        assert_refused(client.get("/v1/stats", headers=bearer(token)), UNAUTHENTICATED)

        assert embed(client, key).status_code == 200
        assert client.get("/v1/stats", headers=bearer(key)).status_code == 200
        for credential in (key, token):
            assert client.get("/v1/usage", headers=bearer(credential)).status_code == 200


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sql_injection_attempts_are_inert(kind: str, tmp_path: Path) -> None:
    injections = ["x' OR '1'='1@example.com", "a@example.com'; DROP TABLE embedding_accounts;--", "' OR '1'='1"]
    with database(kind, tmp_path) as where, hosted_client(**where) as client:
        key = signup(client, "victim@example.com")["api_key"]
        token = login(client, "victim@example.com")
        second = client.post("/v1/keys", headers=bearer(token)).json()["api_key"]

        for email in injections:
            response = client.post("/v1/auth/signup", json={"email": email, "password": PASSWORD})
            assert (response.status_code, response.json()["error"]["type"]) == (422, "invalid_request")
        for email in [*injections, "victim@example.com' --", "victim@example.com' OR '1'='1"]:
            attempt = client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
            assert_refused(attempt, INVALID_CREDENTIALS)
        for password in ("' OR '1'='1", "' OR 1=1 --", "x'); DROP TABLE embedding_accounts;--"):
            attempt = client.post("/v1/auth/login", json={"email": "victim@example.com", "password": password})
            assert_refused(attempt, INVALID_CREDENTIALS)

        for prefix in ("' OR '1'='1", "%", "vec_%", "vec_________", "%' OR '1'='1"):
            response = client.delete(f"/v1/keys/{quote(prefix, safe='')}", headers=bearer(token))
            assert (response.status_code, response.json()) == (404, KEY_NOT_FOUND), prefix
        listed = client.get("/v1/keys", headers=bearer(token)).json()["keys"]
        assert sorted((k["prefix"], k["revoked_at"]) for k in listed) == sorted([(key[:12], None), (second[:12], None)])
        for credential in (key, second):
            assert embed(client, credential).status_code == 200

        newcomer = signup(client, "newcomer@example.com")
        assert embed(client, newcomer["api_key"]).status_code == 200
        assert login(client, "newcomer@example.com") and login(client, "victim@example.com")


def test_malformed_key_is_refused_without_a_database_lookup() -> None:
    with relayed_database() as (_, relayed, proxy):
        with hosted_client(database_url=relayed, cache_timeout_seconds=0.5) as client:
            key = signup(client, "owner@example.com")["api_key"]
            assert embed(client, key).status_code == 200
            malformed = key[:-1] + ("B" if key[-1] == "A" else "A")
            unknown = new_api_key()
            assert looks_like_account_key(malformed) and not well_formed(malformed) and well_formed(unknown)

            proxy.cut()
            try:
                assert_refused(embed(client, malformed), UNAUTHENTICATED)
                for credential in (unknown, key):
                    down = embed(client, credential)
                    assert (down.status_code, down.headers["retry-after"], down.json()) == (
                        503,
                        "5",
                        ACCOUNTS_UNAVAILABLE,
                    )
                started = time.monotonic()
                assert_refused(embed(client, malformed), UNAUTHENTICATED)
                assert time.monotonic() - started < 0.5
            finally:
                proxy.start()

            deadline = time.monotonic() + 10
            while (back := embed(client, unknown)).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert_refused(back, UNAUTHENTICATED)
            assert embed(client, key).status_code == 200
            assert_refused(embed(client, malformed), UNAUTHENTICATED)
