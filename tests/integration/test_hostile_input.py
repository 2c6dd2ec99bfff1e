"""One caller's bad text never fails another caller's request: the real MiniLM behind a real server, one tenant
sending unpaired surrogates while another embeds, concurrently."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest

from entrypoints.http.app import create_app
from tests.support import real_model_settings, uvicorn_app

pytestmark = pytest.mark.integration

ALICE, MALLORY = "alice-key-0123456789", "mallory-key-0123456789"


def test_unpaired_surrogates_are_refused_alone_while_other_tenants_get_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = real_model_settings("all-MiniLM-L6-v2", tenant_api_keys={"alice": ALICE, "mallory": MALLORY})
    statuses: dict[str, list[int]] = {"alice": [], "mallory": []}
    bodies: list[dict[str, object]] = []
    stop = threading.Event()

    def alice(base: str, worker: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ALICE}"}, timeout=60) as client:
            n = 0
            while not stop.is_set():
                response = client.post("/v1/embed", json={"text": f"alice's note {worker}-{n}"})
                statuses["alice"].append(response.status_code)
                n += 1

    def mallory(base: str) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {MALLORY}"}, timeout=60) as client:
            while not stop.is_set():
                for path, body in (
                    ("/v1/embed", b'{"text": "a \\ud800"}'),
                    ("/embed", b'{"texts": ["fine", "b \\udfff c"]}'),
                    ("/embed/batch", b'{"inputs": [{"id": "\\ud83d", "text": "x"}]}'),
                ):
                    response = client.post(path, content=body, headers={"content-type": "application/json"})
                    statuses["mallory"].append(response.status_code)
                    bodies.append(response.json())
                time.sleep(0.05)

    with caplog.at_level(logging.INFO), uvicorn_app(create_app(settings)) as (base, _):
        workers = [threading.Thread(target=alice, args=(base, w)) for w in range(4)]
        workers.append(threading.Thread(target=mallory, args=(base,)))
        for worker in workers:
            worker.start()
        time.sleep(4)
        stop.set()
        for worker in workers:
            worker.join(60)

    assert len(statuses["alice"]) >= 20 and set(statuses["alice"]) == {200}
    assert len(statuses["mallory"]) >= 9 and set(statuses["mallory"]) == {422}
    assert all(body["error"]["type"] == "invalid_request" for body in bodies)  # type: ignore[index]
    assert any("surrogate" in body["error"]["message"] for body in bodies)  # type: ignore[index]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
