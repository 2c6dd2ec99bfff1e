"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.fuzz.hooks): generated bodies are adjusted where the service refuses
them for a reason JSON Schema cannot state, in every phase, just before they are sent. Nothing else is changed, and
every check stays on."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Every phase's requests pass here (the coverage phase's are not generated through the body hooks)."""
    case.body = adjusted(case.operation.path, case.body)


def adjusted(path: str, body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    if path == "/embed/batch" and isinstance(body.get("inputs"), list):
        # ids must be unique within a batch (they match vectors to records): uniqueItems compares whole items
        seen: set[str] = set()
        for number, item in enumerate(body["inputs"]):
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                if item["id"] in seen:
                    item["id"] = f"{item['id']}#{number}"
                seen.add(item["id"])
    if path == "/v1/auth/signup" and isinstance(body.get("password"), str):
        # a password is at most 72 bytes of UTF-8 (bcrypt's limit): maxLength counts characters
        password = body["password"]
        while len(password.encode("utf-8", "surrogatepass")) > 72:
            password = password[:-1]
        body["password"] = password
    return body
