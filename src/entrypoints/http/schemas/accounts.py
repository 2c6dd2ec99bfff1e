"""Bodies of the account routes: signup, login, and an account's API keys. A key appears in a body once, when it is
created; listings show its prefix."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any

import email_validator
from pydantic import AfterValidator, BaseModel, Field, WithJsonSchema

from domain.model import ApiKey
from domain.use_cases import NewAccount

# No mail is ever sent: an address is an account's name, so any well-formed one is accepted, special-use domains
# (.test, .local: self-hosted deployments) too, as the documented format (RFC 5321) allows; this list is
# email-validator's documented setting for it, set once here for the process.
email_validator.SPECIAL_USE_DOMAIN_NAMES = []


def _deliverable_shape(value: str) -> str:
    """An address email-validator accepts (no DNS lookup); kept as sent: the domain normalizes it (NFKC, lowercase)
    the same way at signup and at login."""
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(unicodedata.normalize("NFKC", value), check_deliverability=False)  # the form stored
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return value


Email = Annotated[str, AfterValidator(_deliverable_shape), WithJsonSchema({"type": "string", "format": "email"})]


class Credentials(BaseModel):
    email: Email = Field(description="the account's email (compared after NFKC normalization, in lowercase)")
    password: str = Field(min_length=8, description="at least 8 characters and at most 72 bytes in UTF-8")


class SignupResponse(BaseModel):
    user_id: str = Field(description="usr_...")
    api_key: str = Field(description="vec_... (36 characters): shown once, store it now")


class LoginRequest(BaseModel):
    email: str = Field(description="normalized as at signup; anything that is no account's email gets the same 401")
    password: str


class LoginResponse(BaseModel):
    token: str = Field(description="a session token (JWT, HS256) for the account routes: Authorization: Bearer ...")
    expires_in: int = Field(description="seconds until the token expires")


class NewKeyResponse(BaseModel):
    api_key: str = Field(description="shown once, store it now")
    prefix: str = Field(description="names the key in listings and in DELETE /v1/keys/{prefix}")


class KeyInfo(BaseModel):
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = Field(description="updated within seconds of use, not on every request")
    revoked_at: datetime | None


class KeyList(BaseModel):
    keys: list[KeyInfo]


class RevokedResponse(BaseModel):
    revoked: bool


def render_signup(created: NewAccount) -> dict[str, Any]:
    return SignupResponse(user_id=created.account.id, api_key=created.api_key).model_dump()


def render_login(token: str, expires_in: int) -> dict[str, Any]:
    return LoginResponse(token=token, expires_in=expires_in).model_dump()


def render_new_key(key: str, record: ApiKey) -> dict[str, Any]:
    return NewKeyResponse(api_key=key, prefix=record.prefix).model_dump()


def render_revoked() -> dict[str, Any]:
    return RevokedResponse(revoked=True).model_dump()


def render_keys(keys: list[ApiKey]) -> dict[str, Any]:
    listed = [
        KeyInfo(prefix=k.prefix, created_at=k.created_at, last_used_at=k.last_used_at, revoked_at=k.revoked_at)
        for k in keys
    ]
    return KeyList(keys=listed).model_dump(mode="json")
