"""The OpenAPI document describes the bodies actually sent: every answer of every route (successes and errors, in
hosted mode) validates against the schema documented for its status code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
from httpx import Response

from tests.contract.test_accounts_api import bearer, hosted, login, signup
from tests.support import API_KEY


def check(spec: dict[str, Any], method: str, path: str, response: Response) -> None:
    operation = spec["paths"][path][method]
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{method.upper()} {path} answered an undocumented {response.status_code}"
    schema = documented["content"]["application/json"]["schema"]
    jsonschema.validate(response.json(), {**schema, "components": spec["components"]})


def test_every_answer_matches_its_documented_schema(tmp_path: Path) -> None:
    with hosted(tmp_path, embedding_api_key=API_KEY, free_tier_daily_limit=6, cache_backend="memory") as client:
        spec = client.get("/openapi.json").json()
        key = bearer(signup(client))
        token = bearer(login(client))
        static = bearer(API_KEY)
        calls: list[tuple[str, str, Response]] = []

        def call(method: str, path: str, url: str | None = None, **kwargs: Any) -> None:
            calls.append((method, path, client.request(method.upper(), url or path, **kwargs)))

        call("post", "/embed", json={"input": "one"}, headers=static)
        call("post", "/embed", json={"texts": ["one", "two"]}, headers=static)
        call("post", "/embed", json={"texts": []}, headers=static)
        call("post", "/embed/batch", json={"inputs": [{"id": "a", "text": "x"}]}, headers=static)
        call("post", "/embed/batch", json={"inputs": [{"id": "a", "text": "x"}] * 2}, headers=static)
        call("post", "/v1/embed", json={"text": "one"}, headers=key)
        call("post", "/v1/embed", json={"text": "one", "model": "nope"}, headers=key)
        call("post", "/v1/embed/batch", json={"texts": ["a", "b", "c", "d"]}, headers=key)
        call("post", "/v1/embed/batch", json={"texts": ["a", "b"]}, headers=key)  # 429
        call("post", "/v1/embed", json={"text": "x"})  # 401
        call("post", "/v1/embeddings", json={"input": "one"}, headers=static)
        call("post", "/v1/embeddings", json={"input": [[5, 6]], "encoding_format": "base64"}, headers=static)
        call("post", "/v1/embeddings", json={"input": ""}, headers=static)  # 400
        call("post", "/v1/embeddings", json={"input": [["a"]]}, headers=static)  # 400 (malformed)
        call("post", "/v1/embeddings", json={"input": "x", "model": "nope"}, headers=static)  # 404
        call("post", "/v1/embeddings", json={"input": "x"})  # 401
        call("post", "/v1/embeddings", json={"input": ["x", "y"]}, headers=key)  # 429: 5 of 6 texts spent
        call("get", "/v1/models", headers=static)
        call("get", "/v1/models/{model}", "/v1/models/sentence-transformers/all-mpnet-base-v2", headers=static)
        call("get", "/v1/models/{model}", "/v1/models/nope", headers=static)  # 404
        call("get", "/v1/models")  # 401
        call("get", "/v1/stats", headers=key)
        call("get", "/v1/usage", "/v1/usage?days=3", headers=key)
        call("get", "/v1/usage", "/v1/usage?days=0", headers=key)
        call("get", "/v1/health")
        call("get", "/health")
        call("get", "/metadata", headers=static)
        call("post", "/v1/auth/signup", json={"email": "grace@example.com", "password": "long enough"})
        call("post", "/v1/auth/signup", json={"email": "grace@example.com", "password": "long enough"})  # 409
        call("post", "/v1/auth/signup", json={"email": "x", "password": "y"})  # 422
        call("post", "/v1/auth/login", json={"email": "ada@example.com", "password": "wrong"})
        call("post", "/v1/auth/login", json={"email": "grace@example.com", "password": "long enough"})
        call("post", "/v1/keys", headers=token)
        call("get", "/v1/keys", headers=token)
        call("get", "/v1/keys", headers=key)  # 401
        call("delete", "/v1/keys/{prefix}", "/v1/keys/vec_nosuchkey", headers=token)  # 404
        prefix = client.get("/v1/keys", headers=token).json()["keys"][1]["prefix"]
        call("delete", "/v1/keys/{prefix}", f"/v1/keys/{prefix}", headers=token)
        statuses = sorted({response.status_code for _, _, response in calls})
        openai = sorted({r.status_code for _, path, r in calls if path.startswith(("/v1/embeddings", "/v1/models"))})
        assert openai == [200, 400, 401, 404, 429]
        assert statuses == [200, 201, 400, 401, 404, 409, 422, 429]
        for method, path, response in calls:
            check(spec, method, path, response)
