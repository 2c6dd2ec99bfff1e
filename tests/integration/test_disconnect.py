"""A client that disconnects while its texts wait in the queue: the real uvicorn server drops them."""

from __future__ import annotations

import json
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from dependency_injector import providers

from adapters.fake_embedder import FakeEmbedder, FakeEmbedderLoader
from domain.model import KNOWN_MODELS
from entrypoints.http.app import create_app
from tests.support import API_KEY, AUTH, fake_settings, uvicorn_app

MINILM = KNOWN_MODELS["all-MiniLM-L6-v2"]


def raw_request(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def test_texts_of_a_client_that_hung_up_are_never_embedded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="entrypoints.http.access")
    app = create_app(fake_settings(model_name="all-MiniLM-L6-v2", batch_wait_ms=0))
    app.state.container.loader.override(providers.Object(FakeEmbedderLoader(MINILM, delay_per_text_s=0.4)))
    with uvicorn_app(app) as (url, port), ThreadPoolExecutor() as pool:
        embedder = app.state.container.host().embedder()
        assert isinstance(embedder, FakeEmbedder)
        busy = pool.submit(httpx.post, f"{url}/embed", json={"texts": ["busy"]}, headers=AUTH, timeout=10)
        time.sleep(0.1)  # the model is busy with "busy" for 0.4 s
        gone = raw_request(port, json.dumps({"texts": [f"gone {i}" for i in range(10)]}).encode())
        time.sleep(0.1)
        gone.close()
        assert busy.result().status_code == 200
        time.sleep(0.5)  # the worker is free: queued texts of the closed connection would be running now
        assert list(embedder.calls) == [1]
        after = httpx.post(f"{url}/embed", json={"texts": ["after"]}, headers=AUTH, timeout=10)
        assert after.status_code == 200
        assert list(embedder.calls) == [1, 1]
    access = [r.getMessage() for r in caplog.records if r.name == "entrypoints.http.access"]
    assert "POST /embed client disconnected; cancelling its work" in access
    statuses = [line.split()[2] for line in access if line.startswith("POST /embed") and line.endswith(" ms")]
    assert sorted(statuses) == ["200", "200", "499"]
