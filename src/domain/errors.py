"""Domain errors, defined once and free of any transport knowledge; entrypoints translate them."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error the domain raises on purpose; `message` is safe to show to a caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def details(self) -> dict[str, object]:
        return {}


class InvalidInput(DomainError):
    """The request is well formed but its content cannot be embedded (empty batch, duplicate ids...)."""


class InputTooLong(DomainError):
    def __init__(
        self, item_id: str | None, length: int, limit: int, unit: str = "characters", index: int | None = None
    ) -> None:
        where = f"input with id {item_id!r}" if item_id is not None else "input" if index is None else f"input {index}"
        super().__init__(
            f"{where} is {length} {unit} long; the limit is {limit} {unit}. "
            "Shorten or split the text before sending it."
        )
        self.item_id, self.length, self.limit = item_id, length, limit

    @property
    def details(self) -> dict[str, object]:
        return {"id": self.item_id, "length": self.length, "limit": self.limit}


class BatchTooLarge(DomainError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"batch holds {size} inputs; the limit is {limit}. Split it into requests of at most {limit} inputs."
        )
        self.size, self.limit = size, limit

    @property
    def details(self) -> dict[str, object]:
        return {"size": self.size, "limit": self.limit}


class RequestTooLarge(DomainError):
    """A request that alone would take longer than its deadline at the model's measured speed: retrying it cannot
    help, splitting it does."""

    def __init__(self, inputs: int, estimated_s: float, limit_s: float, fitting: int) -> None:
        super().__init__(
            f"these {inputs} inputs would take about {estimated_s:.1f} s to embed at the model's recent speed, more "
            f"than the {limit_s:g} s a request may take (TIMEOUT_SECONDS); send at most about {fitting} of them per "
            "request."
        )
        self.inputs, self.estimated_s, self.limit_s, self.fitting = inputs, estimated_s, limit_s, fitting

    @property
    def details(self) -> dict[str, object]:
        return {"estimated_seconds": round(self.estimated_s, 1), "limit_seconds": self.limit_s, "fits": self.fitting}


class PayloadTooLarge(DomainError):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"request body exceeds {limit_bytes} bytes; send fewer or shorter inputs per request.")
        self.limit_bytes = limit_bytes

    @property
    def details(self) -> dict[str, object]:
        return {"limit_bytes": self.limit_bytes}


class UnknownModel(DomainError):
    def __init__(self, requested: str, served: tuple[str, ...], aliases: tuple[str, ...]) -> None:
        names = ", ".join(repr(name) for name in served)
        shown = requested if len(requested) <= 200 else requested[:200] + "…"  # a caller's string, echoed bounded
        super().__init__(
            f"model {shown!r} is not served here; this service serves {names} (accepted names: {', '.join(aliases)})."
        )
        self.requested, self.served = requested, served

    @property
    def details(self) -> dict[str, object]:
        return {"served_model": self.served[0], "served_models": list(self.served)}


class UnsupportedDimensions(DomainError):
    """`dimensions` asked of a model not trained to be truncated to that size (Matryoshka), or larger than it."""

    def __init__(self, requested: int, model: str, dimension: int, allowed: tuple[int, ...]) -> None:
        if allowed:
            choice = f"it was trained for {', '.join(map(str, allowed))} (and its full {dimension})"
        else:
            choice = (
                f"it was not trained for truncated vectors, so only its full {dimension} is served (cutting its "
                "vectors short would return worse ones)"
            )
        super().__init__(f"dimensions={requested} is not available for model {model!r}: {choice}.")
        self.requested, self.dimension, self.allowed = requested, dimension, allowed

    @property
    def details(self) -> dict[str, object]:
        return {"dimensions": self.requested, "supported": sorted({*self.allowed, self.dimension})}


class UnsupportedEncodingFormat(DomainError):
    def __init__(self, requested: str) -> None:
        super().__init__(f"encoding_format {requested!r} is not supported; use 'float'.")


class Unauthenticated(DomainError):
    def __init__(self, message: str = "missing or invalid API key; send 'Authorization: Bearer <key>'.") -> None:
        super().__init__(message)


class InvalidCredentials(Unauthenticated):
    """Login with a wrong password or an unknown email: one answer for both."""

    def __init__(self) -> None:
        super().__init__("invalid email or password.")


class SessionRequired(Unauthenticated):
    """An account route called without a valid session token (an API key is not one)."""

    def __init__(self) -> None:
        super().__init__(
            "missing, invalid or expired session token; send 'Authorization: Bearer <token>' with a token from "
            "POST /v1/auth/login."
        )


class EmailTaken(DomainError):
    def __init__(self) -> None:
        super().__init__("an account with this email already exists; log in instead.")


class SignupClosed(DomainError):
    def __init__(self) -> None:
        super().__init__("signup is closed on this service; ask its operator for an account.")


class UnknownAccount(DomainError):
    def __init__(self, email: str) -> None:
        super().__init__(f"no account with email {email!r}.")


class KeyNotFound(DomainError):
    """Never echoes what was sent: a caller may paste a whole key where a prefix belongs."""

    def __init__(self) -> None:
        super().__init__("this account has no API key with that prefix; GET /v1/keys lists them.")


class RateLimited(DomainError):
    """A limit of the caller's tier would be exceeded: the request was refused whole and consumed nothing."""

    def __init__(
        self, message: str, retry_after_s: int, limit: int, window: str, reset_at: str, admission: Any = None
    ) -> None:
        super().__init__(message)
        self.retry_after_s, self.limit, self.window, self.reset_at = retry_after_s, limit, window, reset_at
        self.admission = admission  # the windows' states (domain.model.Admission), for rate-limit headers

    @property
    def details(self) -> dict[str, object]:
        return {"limit": self.limit, "window": self.window, "reset_at": self.reset_at}


class ModelNotReady(DomainError):
    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is still loading; retry shortly.")


class ShuttingDown(DomainError):
    """This process is draining before it stops (SIGTERM): the requests it holds finish, new ones go elsewhere."""

    def __init__(self) -> None:
        super().__init__("this server is shutting down; retry (another replica answers).")


class Overloaded(DomainError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the service is at capacity; retry later.")
        self.retry_after_s = retry_after_s


class Timeout(DomainError):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"embedding did not finish within {timeout_s:g} s; send fewer or shorter inputs.")


class BackendFailure(DomainError):
    """The model backend failed; the cause is logged, never shown to the caller."""

    def __init__(self) -> None:
        super().__init__("the embedding backend failed; retry later.")


class CacheUnavailable(DomainError):
    """The embedding cache's storage cannot be reached (embedding itself goes on without it)."""

    def __init__(self) -> None:
        super().__init__("the embedding cache is unavailable; embeddings are still served, retry stats later.")


class AccountsUnavailable(DomainError):
    """The database holding accounts, keys and usage cannot be reached; the cause is logged, never shown."""

    def __init__(self) -> None:
        super().__init__("the account database is unavailable; retry shortly.")


class ModelIntegrityError(DomainError):
    """Model weights on disk or from a source do not match the pinned checksum."""


class BackendDisagrees(DomainError):
    """A configured inference backend does not reproduce the torch fp32 vectors closely enough to be served."""

    def __init__(self, backend: str, min_cosine: float, required: float) -> None:
        super().__init__(
            f"backend {backend} reached a minimum cosine of {min_cosine:.6f} against torch fp32 on the check texts; "
            f"{required} is required. Refusing to serve it."
        )
        self.backend, self.min_cosine, self.required = backend, min_cosine, required

    @property
    def details(self) -> dict[str, object]:
        return {"backend": self.backend, "min_cosine": self.min_cosine, "required": self.required}


class EndpointRefused(DomainError):
    """A provider endpoint this service will not call (SSRF protection); `rule` names the rule it breaks."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"endpoint refused ({rule}): {detail}")
        self.rule = rule

    @property
    def details(self) -> dict[str, object]:
        return {"rule": self.rule}


class ProviderNotFound(DomainError):
    def __init__(self) -> None:
        super().__init__("this account has no provider; register one with POST /v1/provider.")


class ByokRequired(DomainError):
    """A free-tier account without a provider, on a service that computes the free tier on the caller's own key."""

    def __init__(self) -> None:
        super().__init__(
            "the free tier embeds with your own provider key: register one with POST /v1/provider "
            '{"name", "endpoint", "api_key", "request_template", "response_path"}, or upgrade to the paid tier.'
        )


class ProviderRejected(DomainError):
    """The provider answered 4xx: the request or the key is wrong; its status is passed on, its body never."""

    def __init__(self, status: int) -> None:
        super().__init__(f"your provider refused the request with HTTP {status}; check its key and request template.")
        self.status = status

    @property
    def details(self) -> dict[str, object]:
        return {"provider_status": self.status}


class ProviderBadResponse(DomainError):
    """The provider's answer held no usable vectors (not JSON, no match, not finite floats of one dimension)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"your provider's answer could not be used: {reason}.")


class ProviderUnavailable(DomainError):
    """The provider kept failing (5xx, 429, connection errors) through the retries, or its circuit is open."""

    def __init__(self, reason: str, retry_after_s: int = 5) -> None:
        super().__init__(f"your provider is unavailable: {reason}; retry later.")
        self.retry_after_s = retry_after_s


class ProviderTimeout(DomainError):
    """The provider did not answer in time."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"your provider did not answer within {timeout_s:g} s.")
