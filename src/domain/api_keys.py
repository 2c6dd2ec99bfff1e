"""The hosted mode's API key format: `vec_` + 26 random base62 characters + a 6-character CRC-32 checksum (36 in
all). A key that is not well formed (a typo, a truncated paste, a JWT) is refused without a database lookup; only
the SHA-256 of a key is stored, and its first 12 characters are shown to name it."""

from __future__ import annotations

import hashlib
import secrets
import string
import zlib

KEY_PREFIX = "vec_"
ALPHABET = string.digits + string.ascii_letters  # base62
RANDOM_CHARS = 26  # 154 bits
CHECKSUM_CHARS = 6  # 62**6 > 2**32
KEY_LENGTH = len(KEY_PREFIX) + RANDOM_CHARS + CHECKSUM_CHARS
DISPLAY_PREFIX_LENGTH = 12  # vec_ + 8 random characters: how listings and DELETE /v1/keys/{prefix} name a key


def _base62(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        out.append(ALPHABET[digit])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_CHARS)


def new_api_key() -> str:
    body = KEY_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_CHARS))
    return body + _checksum(body)


def well_formed(key: str) -> bool:
    if len(key) != KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return False
    rest = key[len(KEY_PREFIX) :]
    if not all(c in ALPHABET for c in rest):
        return False
    body = key[:-CHECKSUM_CHARS]
    return secrets.compare_digest(_checksum(body), key[-CHECKSUM_CHARS:])


def looks_like_account_key(presented: str) -> bool:
    """Shaped like an account key (whatever its checksum): such a key is never compared with the static keys."""
    return presented.startswith(KEY_PREFIX) and len(presented) == KEY_LENGTH


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LENGTH]


ID_ALPHABET = string.digits + string.ascii_lowercase  # an account id is also its cache tenant name: lowercase


def new_id(kind: str) -> str:
    """usr_..., key_...: 20 random lowercase base36 characters (103 bits) after the kind."""
    return f"{kind}_" + "".join(secrets.choice(ID_ALPHABET) for _ in range(20))
