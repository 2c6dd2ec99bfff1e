"""Python client for the embedding service, with an in-process fallback to the same model."""

from embedding_client.client import EmbeddingClient, load_local_embedder
from embedding_client.errors import (
    ClientConfigurationError,
    EmbeddingClientError,
    EmbeddingRequestError,
    ModelMismatchError,
    RateLimited,
    ServiceUnavailable,
)

__all__ = [
    "ClientConfigurationError",
    "EmbeddingClient",
    "EmbeddingClientError",
    "EmbeddingRequestError",
    "ModelMismatchError",
    "RateLimited",
    "ServiceUnavailable",
    "load_local_embedder",
]
