"""Account use cases: sign up (or an operator creating an account), log in for a session token, the account behind
a session token, and an operator's tier changes and listing."""

from __future__ import annotations

import asyncio
import hashlib
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from domain.api_keys import new_id
from domain.errors import (
    InvalidCredentials,
    InvalidInput,
    RateLimited,
    SessionRequired,
    SignupClosed,
)
from domain.model import Account, Charge, Tier
from domain.ports import AccountStore, PasswordHasher, RateLimiter, TokenIssuer
from domain.use_cases.keys import new_key_record, utc_now

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 72  # what bcrypt reads; a longer password is refused rather than cut


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidInput(f"password must be at least {MIN_PASSWORD_CHARS} characters long.")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise InvalidInput(f"password must be at most {MAX_PASSWORD_BYTES} bytes long in UTF-8.")


def normalize_email(email: str) -> str:
    """The form an email is stored and looked up in: NFKC (a fullwidth or compatibility letter is its plain one),
    lowercase, trimmed. Signup and login both go through it."""
    email = unicodedata.normalize("NFKC", email).strip().lower()
    local, at, domain = email.partition("@")
    if not (local and at and "." in domain) or len(email) > 254 or not email.isprintable():
        raise InvalidInput("email must be an address such as name@example.com.")
    return email


@dataclass(frozen=True)
class NewAccount:
    account: Account
    api_key: str  # shown once


class SignUp:
    """Create an account (free tier unless an operator says otherwise) with its first API key, in one transaction.
    The password is kept as a bcrypt hash. SIGNUP_ENABLED=false closes it to the public, not to operators."""

    def __init__(
        self, accounts: AccountStore, hasher: PasswordHasher, enabled: bool, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._accounts = accounts
        self._hasher = hasher
        self._enabled = enabled
        self._clock = clock

    async def execute(self, email: str, password: str, tier: Tier = Tier.FREE, by_operator: bool = False) -> NewAccount:
        if not (self._enabled or by_operator):
            raise SignupClosed()
        email = normalize_email(email)
        check_password(password)
        hashed = await self._hasher.hash(password)
        now = self._clock()
        account = Account(id=new_id("usr"), email=email, password_hash=hashed, tier=tier, created_at=now)
        key, record = new_key_record(account.id, now)
        await asyncio.to_thread(self._accounts.add, account, record)
        return NewAccount(account, key)


@dataclass(frozen=True)
class LoginThrottle:
    """Failed logins allowed per email and window before login for that email is refused (429) until it ends."""

    failures: int = 10
    window_s: int = 900


class LogIn:
    """Exchange email and password for a session token. A wrong password and an unknown email get the same answer
    after the same work (an unknown email is checked against a dummy hash). Failures per email are counted in the
    rate limiter's store (shared by every process); past the throttle's allowance logins for that email are
    refused until the window ends, whatever the password."""

    def __init__(
        self,
        accounts: AccountStore,
        hasher: PasswordHasher,
        tokens: TokenIssuer,
        limiter: RateLimiter,
        throttle: LoginThrottle = LoginThrottle(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._accounts = accounts
        self._hasher = hasher
        self._tokens = tokens
        self._limiter = limiter
        self._throttle = throttle
        self._clock = clock

    async def execute(self, email: str, password: str) -> tuple[str, int]:
        try:
            email = normalize_email(email)
        except InvalidInput:
            email = ""  # no account has it: the same work and answer as any unknown email
        failure = Charge(
            name="login",
            key="login:" + hashlib.sha256(email.encode("utf-8", "surrogatepass")).hexdigest(),
            limit=self._throttle.failures,
            window_s=self._throttle.window_s,
            cost=1,
        )
        now = self._clock()
        (window,) = (await asyncio.to_thread(self._limiter.hit, [replace(failure, cost=0)], now)).windows
        if window.used >= failure.limit:  # read, not counted: logins in progress are no failures
            raise RateLimited(
                f"too many failed logins for this email; try again in {window.retry_after_s} s.",
                retry_after_s=window.retry_after_s,
                limit=self._throttle.failures,
                window=f"{self._throttle.window_s}s",
                reset_at=window.resets_at(now),
            )
        account = await asyncio.to_thread(self._accounts.by_email, email) if email else None
        hashed = account.password_hash if account is not None else self._hasher.dummy_hash
        ok = await self._hasher.verify(password, hashed)  # Overloaded, or cancelled: never checked, nothing counted
        if account is None or not ok:
            await asyncio.to_thread(self._limiter.hit, [failure], now)  # only a checked, wrong password counts
            raise InvalidCredentials()
        return self._tokens.issue(account.id), self._tokens.expires_in


class AuthenticateAccount:
    """The account behind a session token (never an API key)."""

    def __init__(self, tokens: TokenIssuer, accounts: AccountStore) -> None:
        self._tokens = tokens
        self._accounts = accounts

    async def execute(self, token: str | None) -> Account:
        account_id = self._tokens.subject(token) if token else None
        if account_id is None:
            raise SessionRequired()
        account = await asyncio.to_thread(self._accounts.by_id, account_id)
        if account is None:
            raise SessionRequired()
        return account


class SetTier:
    """An operator moves an account to another tier; its quotas change from its next request."""

    def __init__(self, accounts: AccountStore) -> None:
        self._accounts = accounts

    def execute(self, email: str, tier: Tier) -> Account:
        return self._accounts.set_tier(normalize_email(email), tier)


class ListAccounts:
    def __init__(self, accounts: AccountStore) -> None:
        self._accounts = accounts

    def execute(self) -> list[Account]:
        return self._accounts.list()
