"""Service configuration, read from the environment and `.env` (see .env.example)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.model import KNOWN_MODELS, resolve_model

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s - %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt=LOG_DATEFMT)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    model_name: str = Field("all-mpnet-base-v2", description=f"one of {', '.join(KNOWN_MODELS)} or its hub id")
    model_path: Path = Path("./models")
    embedder_backend: Literal["sentence_transformers", "fake"] = "sentence_transformers"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:0, mps ...")
    inference_backend: Literal["auto", "torch", "onnx", "openvino"] = Field(
        "auto", description="auto: torch on a CUDA GPU, onnx (ONNX Runtime) on CPU; or torch, onnx, openvino"
    )
    precision: Literal["auto", "fp32", "fp16"] = Field("auto", description="auto: fp16 for torch on CUDA, else fp32")
    quantization: Literal["none", "int8"] = Field("none", description="int8: opt-in, onnx backend only, lossy")
    backend_min_cosine: float = Field(
        0.9999, gt=0, le=1, description="agreement with torch fp32 a non-reference backend must reach to be served"
    )

    max_input_length: int = Field(8192, gt=0, description="characters per input")
    max_batch_size: int = Field(100, gt=0)
    max_body_bytes: int = Field(1_048_576, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)
    max_workers: int = Field(1, gt=0, description="inference threads taking batches from the shared queue")
    max_queued_texts: int = Field(1024, gt=0, description="texts allowed to wait or run before 503 overloaded")
    micro_batch_size: int = Field(32, gt=0, description="most texts in one model call, across requests")
    max_batch_tokens: int = Field(8192, gt=0, description="most padded tokens in one model call")
    batch_wait_ms: float = Field(50.0, ge=0, description="how long a worker waits for stragglers to fill a batch")

    peoplepad_client_key: SecretStr | None = None
    embedding_api_key: SecretStr | None = None
    allow_unauthenticated: bool = False

    hf_endpoint: str | None = None
    hf_token: SecretStr | None = None
    hf_hub_offline: bool = False

    host: str = "0.0.0.0"
    port: int = 8080
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="DEBUG logs every batch")

    @field_validator("model_name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        try:
            return resolve_model(value).name
        except KeyError as exc:
            raise ValueError(str(exc)) from None

    def api_keys(self) -> list[str]:
        return [s.get_secret_value() for s in (self.peoplepad_client_key, self.embedding_api_key) if s]


class ConfigurationError(RuntimeError):
    """The service refuses to start with this configuration."""


def check_startup(settings: Settings) -> None:
    if not settings.api_keys() and not settings.allow_unauthenticated:
        raise ConfigurationError(
            "no API key configured: set PEOPLEPAD_CLIENT_KEY or EMBEDDING_API_KEY "
            "(or ALLOW_UNAUTHENTICATED=true to serve without authentication)"
        )
