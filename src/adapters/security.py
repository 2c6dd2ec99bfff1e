"""Account security adapters: bcrypt password hashes (PasswordHasher) and HS256 session JWTs (TokenIssuer)."""

from __future__ import annotations

import asyncio
import math
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bcrypt
import jwt

from domain.errors import Overloaded

MAX_PASSWORD_BYTES = 72  # bcrypt ignores everything after the 72nd byte
MIN_SECRET_BYTES = 32  # RFC 7518 section 3.2: an HS256 key at least as long as the hash
SESSION_TYPE = "session"
ALGORITHM = "HS256"
IAT_LEEWAY_SECONDS = 30  # tolerated clock skew between the instances that issue and check a token


def _seconds(value: object) -> float | None:
    """A finite JSON number; None for anything else (a missing claim, a string, a bool, NaN, Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class BcryptPasswordHasher:
    """bcrypt hashes of UTF-8 passwords of at most 72 bytes, as `$2b$<rounds>$...` strings.

    `dummy_hash` is a hash of a random password with the same cost, made once: verifying against it for an unknown
    email takes as long as a real check and is always False, so the answer time does not tell which emails exist.
    """

    def __init__(self, rounds: int = 12) -> None:
        if not 4 <= rounds <= 31:
            raise ValueError(f"bcrypt rounds must be between 4 and 31, got {rounds}")
        self.rounds = rounds
        self.dummy_hash = self.hash(secrets.token_urlsafe(32))

    def hash(self, password: str) -> str:
        """Raises ValueError for a password longer than 72 UTF-8 bytes rather than truncate it."""
        encoded = password.encode("utf-8")
        if len(encoded) > MAX_PASSWORD_BYTES:
            raise ValueError(f"a password may be at most {MAX_PASSWORD_BYTES} bytes in UTF-8")
        return bcrypt.hashpw(encoded, bcrypt.gensalt(self.rounds)).decode("ascii")

    def verify(self, password: str, hashed: str) -> bool:
        """False for a wrong password, a password too long to have been hashed, or a malformed hash."""
        encoded = password.encode("utf-8", errors="surrogatepass")  # never the bytes of a hashed (valid) password
        if len(encoded) > MAX_PASSWORD_BYTES:
            bcrypt.checkpw(b"", self.dummy_hash.encode("ascii"))  # as slow as a real check
            return False
        try:
            return bcrypt.checkpw(encoded, hashed.encode("ascii"))
        except ValueError:  # not a bcrypt hash (UnicodeEncodeError included)
            return False


class IsolatedPasswordHasher:
    """A hasher's slow calls (bcrypt: ~0.2 s at 12 rounds) on `threads` threads of their own, so a flood of logins
    or signups never holds the shared worker threads that key lookups, quota checks and the cache use. At most
    `max_waiting` calls wait for those threads; past that a call is refused at once (503 overloaded, Retry-After)
    instead of queueing without bound."""

    def __init__(self, hasher: BcryptPasswordHasher, threads: int = 2, max_waiting: int = 32) -> None:
        self._hasher = hasher
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="password-hash")
        self._slots = threading.BoundedSemaphore(threads + max_waiting)

    @property
    def dummy_hash(self) -> str:
        return self._hasher.dummy_hash

    async def hash(self, password: str) -> str:
        hashed: str = await self._run(self._hasher.hash, password)
        return hashed

    async def verify(self, password: str, hashed: str) -> bool:
        ok: bool = await self._run(self._hasher.verify, password, hashed)
        return ok

    async def _run(self, call: Callable[..., Any], *args: Any) -> Any:
        if not self._slots.acquire(blocking=False):
            raise Overloaded(retry_after_s=1)
        try:
            return await asyncio.wrap_future(self._executor.submit(call, *args))
        finally:
            self._slots.release()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class JwtTokenIssuer:
    """HS256 JWTs with `sub` (the account id), `iat`, `exp`, `jti` and `typ: "session"` claims.

    Only HS256 is accepted (never `none` nor another algorithm named in the header); times are read from `clock`.
    """

    def __init__(self, secret: str, expires_in: int = 86400, clock: Callable[[], float] = time.time) -> None:
        if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
            raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
        if expires_in <= 0:
            raise ValueError("expires_in must be positive")
        self._secret = secret
        self._expires_in = expires_in
        self._clock = clock

    @property
    def expires_in(self) -> int:
        return self._expires_in

    def issue(self, account_id: str) -> str:
        now = int(self._clock())
        claims = {
            "sub": account_id,
            "iat": now,
            "exp": now + self._expires_in,
            "jti": secrets.token_urlsafe(16),
            "typ": SESSION_TYPE,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def subject(self, token: str) -> str | None:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                # exp, iat and nbf are checked below against `clock`, not PyJWT's own reading of the time
                options={
                    "require": ["exp", "iat", "sub"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except (jwt.PyJWTError, ValueError):  # ValueError: a string that is not even encodable, e.g. a lone surrogate
            return None
        now = self._clock()
        sub = claims.get("sub")
        iat, exp, nbf = (_seconds(claims.get("iat")), _seconds(claims.get("exp")), _seconds(claims.get("nbf", 0)))
        if claims.get("typ") != SESSION_TYPE or not isinstance(sub, str) or not sub:
            return None
        if iat is None or exp is None or nbf is None:
            return None
        if now >= exp or iat > now + IAT_LEEWAY_SECONDS or nbf > now + IAT_LEEWAY_SECONDS:
            return None
        return sub
