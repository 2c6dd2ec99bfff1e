"""Bodies of an account's bring-your-own-key provider (POST, GET, DELETE /v1/provider). The provider's key goes in
once and never comes back out: listings show its last 4 characters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, SecretStr

from domain.model import Provider, ProviderConfig


class ProviderRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="a name of your choice, e.g. openai")
    endpoint: str = Field(
        min_length=1,
        max_length=2048,
        description="https URL on an allowed host (BYOK_ALLOWED_HOSTS), e.g. https://api.openai.com/v1/embeddings",
    )
    api_key: SecretStr = Field(description="your provider key: stored encrypted, never shown again")
    request_template: str = Field(
        min_length=1,
        max_length=16384,
        description='JSON body with "$TEXT" inside a string (one call per text) or $TEXTS as a value (a list of '
        'texts per call), e.g. {"model": "text-embedding-3-small", "input": $TEXTS}',
    )
    response_path: str = Field(
        min_length=1,
        max_length=1024,
        description="JSONPath to one vector per text, or to one list of vectors, e.g. $.data[*].embedding",
    )

    def config(self) -> ProviderConfig:
        return ProviderConfig(
            name=self.name,
            endpoint=self.endpoint.strip(),
            request_template=self.request_template,
            response_path=self.response_path,
        )


class ProviderCreated(BaseModel):
    provider_id: str


class ProviderResponse(BaseModel):
    provider_id: str
    name: str
    endpoint: str
    request_template: str
    response_path: str
    api_key_last4: str = Field(description="the last 4 characters of the stored key: all that is ever shown")
    created_at: str


class ProviderDeleted(BaseModel):
    deleted: bool


def render_created(provider: Provider) -> dict[str, Any]:
    return {"provider_id": provider.id}


def render_deleted() -> dict[str, Any]:
    return ProviderDeleted(deleted=True).model_dump()


def render_provider(provider: Provider) -> dict[str, Any]:
    config = provider.config
    return ProviderResponse(
        provider_id=provider.id,
        name=config.name,
        endpoint=config.endpoint,
        request_template=config.request_template,
        response_path=config.response_path,
        api_key_last4=provider.key_last4,
        created_at=provider.created_at.isoformat(),
    ).model_dump()
