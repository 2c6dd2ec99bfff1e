"""Errors raised by the Python client; `str(error)` is a message meant for the person running the job."""

from __future__ import annotations


class EmbeddingClientError(Exception):
    """Base of every error the client raises on purpose."""


class ClientConfigurationError(EmbeddingClientError):
    """The client cannot work as configured (no model known for the local fallback, unknown model name...)."""


class ServiceUnavailable(EmbeddingClientError):
    """The service could not be reached or kept failing, and the local fallback is switched off."""


class RateLimited(EmbeddingClientError):
    """The service kept answering 429 after every retry."""


class ModelMismatchError(EmbeddingClientError):
    """The service serves a different model (or different weights) than this client's vectors come from."""


class EmbeddingRequestError(EmbeddingClientError):
    """The service refused the request itself (4xx): retrying or computing locally would not help."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"service answered {status} {error_type}: {message}")
        self.status, self.error_type, self.message = status, error_type, message
