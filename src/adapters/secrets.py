"""Secrets at rest: provider keys encrypted with Fernet (AES-128-CBC and HMAC-SHA256, from `cryptography`).

ENCRYPTION_KEY holds one or more comma-separated Fernet keys (`embedding-service keygen --fernet` makes one): the
first encrypts, every one decrypts (MultiFernet), so a new key is put first, `embedding-service providers
rotate-keys` re-encrypts every stored key under it, and the old one can then be removed."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class FernetSecretBox:
    def __init__(self, keys: str) -> None:
        parts = [part.strip() for part in keys.split(",") if part.strip()]
        if not parts:
            raise ValueError("ENCRYPTION_KEY holds no key")
        try:
            self._fernet = MultiFernet([Fernet(part.encode("ascii")) for part in parts])
        except (ValueError, UnicodeEncodeError):
            raise ValueError(
                "ENCRYPTION_KEY must be comma-separated Fernet keys (32 url-safe base64-encoded bytes each; "
                "`embedding-service keygen --fernet` makes one)"
            ) from None

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode("utf-8")
        except InvalidToken:
            raise ValueError("a stored provider key cannot be decrypted with any key in ENCRYPTION_KEY") from None

    def rotate(self, token: bytes) -> bytes:
        try:
            return self._fernet.rotate(token)
        except InvalidToken:
            raise ValueError("a stored provider key cannot be decrypted with any key in ENCRYPTION_KEY") from None


def new_fernet_key() -> str:
    return Fernet.generate_key().decode("ascii")
