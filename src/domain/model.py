"""Value types of the embedding domain."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
Vector = npt.NDArray[np.float32]  # one row


class InputType(StrEnum):
    """What a text is for: a search query, or a document to be found. A model trained with prompts gets the prompt of
    its type prefixed (nomic "search_query: " / "search_document: ", e5 "query: " / "passage: "); others ignore it."""

    QUERY = "query"
    DOCUMENT = "document"


@dataclass(frozen=True)
class PinnedFile:
    """A file of a model's pinned revision and its checksum: the service refuses a copy that differs."""

    path: str  # relative to the model's folder, "/"-separated
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelSpec:
    """A model this service knows how to provision, pinned to an exact upstream revision and checksums: a built-in
    one, or an entry of the models lock file (`embedding-service models add`)."""

    name: str
    hub_id: str
    revision: str
    files: tuple[PinnedFile, ...]  # every pinned file (the weights at least), each checked before a load
    dimension: int
    max_seq_length: int
    # sizes the model was trained to be truncated to (Matryoshka representation learning); () for none
    matryoshka_dimensions: tuple[int, ...] = ()
    pooling: str = "mean"
    prompts: tuple[tuple[str, str], ...] = ()  # (input type, prefix), e.g. ("query", "search_query: ")
    trust_remote_code: bool = False  # its architecture's code comes with it (or another repo): needs opting in
    code_revisions: tuple[tuple[str, str], ...] = ()  # (repo, commit) of remote code living in other repos
    required_files: tuple[str, ...] = ()  # files that must be present besides the pinned ones (not checksummed)

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.name, self.hub_id)

    def answers_to(self, requested: str) -> bool:
        return requested in self.aliases

    @property
    def weights_sha256(self) -> str:
        """One checksum naming the weights: the weights file's own, or for several (shards), the sha256 of their
        sorted "path sha256" lines."""
        weights = sorted((f.path, f.sha256) for f in self.files if f.path.endswith(WEIGHT_SUFFIXES))
        if len(weights) == 1:
            return weights[0][1]
        lines = "".join(f"{path} {sha}\n" for path, sha in (weights or sorted((f.path, f.sha256) for f in self.files)))
        return hashlib.sha256(lines.encode()).hexdigest()

    def prompt_for(self, input_type: InputType) -> str:
        """The prefix a text of this type gets before tokenization ("" for a model without prompts)."""
        return dict(self.prompts).get(input_type.value, "")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".ckpt", ".h5", ".msgpack")


# Whitespace the BERT normalizer (clean_text) turns into a plain space: tab, newline, carriage return and every
# Unicode White_Space character that is not a control character (controls such as \x0b, \x0c, \x85 it deletes).
BERT_WHITESPACE = "\t\n\r \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
_WHITESPACE_RUN = re.compile(f"[{re.escape(BERT_WHITESPACE)}]+")


@dataclass(frozen=True)
class TextKeyRule:
    """How texts may be normalized into cache keys without changing a model's vectors.

    Only what the model's own tokenizer provably ignores: runs of BERT_WHITESPACE (collapsed to one space, stripped at
    both ends) and letter case (lowercased one character at a time, as the tokenizer does: no final-sigma rule).
    A text that contains an added token of the tokenizer in any letter case ("[CLS]", "<mask>") is keyed verbatim,
    since those are matched before normalization. The default rule keys every text verbatim.
    """

    collapse_whitespace: bool = False
    lowercase: bool = False
    verbatim_if_contains: tuple[str, ...] = ()  # lowercase forms of the tokenizer's added tokens

    def normalize(self, text: str) -> str:
        if not (self.collapse_whitespace or self.lowercase):
            return text
        lowered = text.lower()
        if any(marker in lowered for marker in self.verbatim_if_contains):
            return text
        if self.lowercase:
            text = "".join(map(str.lower, text)) if "\u03a3" in text else lowered  # str.lower turns a final Σ into ς
        if self.collapse_whitespace:
            text = _WHITESPACE_RUN.sub(" ", text).strip(" ")
        return text


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded embedder reports about itself."""

    spec: ModelSpec
    library_version: str
    device: str
    backend: str = "torch"
    precision: str = "fp32"
    min_cosine_vs_torch: float | None = None  # None: this is the torch fp32 reference itself
    text_key: TextKeyRule = TextKeyRule()

    @property
    def cache_model(self) -> str:
        """The exact weights, as cache entries name them."""
        return f"{self.spec.hub_id}@{self.spec.revision}"

    @property
    def cache_variant(self) -> str:
        """What else decides the numbers: runtime and precision (onnx and torch differ in the last bits), output."""
        return f"{self.backend}-{self.precision}/float32-l2"


@dataclass(frozen=True)
class TokenIds:
    """An input given as token ids of the served model's own tokenizer (OpenAI's token-array input), with or
    without the model's special tokens; truncated at the model's limit like a text."""

    ids: tuple[int, ...]
    prompt: str = ""  # the query/document prompt applied: its tokens go before these ids (after the special ones)

    def __len__(self) -> int:
        return len(self.ids)


EmbedInput = str | TokenIds  # what a model embeds: a text, or the token ids of one


@dataclass(frozen=True)
class TextItem:
    id: str | None
    text: EmbedInput


@dataclass(frozen=True)
class EmbeddedItem:
    id: str | None
    index: int
    embedding: npt.NDArray[np.float32]
    cached: bool = False


class Tier(StrEnum):
    FREE = "free"
    PAID = "paid"


@dataclass(frozen=True, kw_only=True)
class Caller:
    """Who sent a request, as authentication established it; cache entries and counters belong to the tenant.

    An account's API key gives its account id, key id and tier (its tenant is the account id). A static key from the
    settings (PEOPLEPAD_CLIENT_KEY, EMBEDDING_API_KEY, TENANT_API_KEYS) gives only a tenant: no quota, no ledger."""

    account_id: str | None = None
    key_id: str | None = None
    tier: Tier | None = None
    tenant: str

    @property
    def metered(self) -> bool:
        return self.account_id is not None and self.tier is not None


@dataclass(frozen=True)
class Account:
    id: str  # usr_...
    email: str  # lowercase
    password_hash: str
    tier: Tier
    created_at: datetime


@dataclass(frozen=True)
class ProviderConfig:
    """An account's bring-your-own-key embedding provider: where to send texts and how to read vectors back.

    `request_template` is a JSON body holding "$TEXT" (inside a JSON string: one text per call) or $TEXTS (in
    place of a JSON value: a JSON list of texts, one call per batch); `response_path` is a JSONPath finding one
    vector per text, or one list of vectors."""

    name: str
    endpoint: str  # https://host/path, checked against the outbound rules
    request_template: str
    response_path: str

    @property
    def host(self) -> str:
        """The endpoint's host name (lowercase; never its user info, query or fragment)."""
        return (urlsplit(self.endpoint).hostname or "").rstrip(".")


@dataclass(frozen=True)
class Provider:
    """A stored provider: its key encrypted, never the key itself; `key_last4` is what listings show."""

    id: str  # prov_...
    account_id: str
    config: ProviderConfig
    encrypted_key: bytes = field(repr=False)
    key_last4: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    """A stored key: never the key itself, only its SHA-256 and its display prefix."""

    id: str  # key_...
    account_id: str
    prefix: str
    digest: bytes
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class UsageRecord:
    """What one account did with one model on one UTC day (or in one request, before it is added up)."""

    account_id: str
    day: date
    model: str
    requests: int = 0
    texts: int = 0
    tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    compute_ms: float = 0.0

    def plus(self, other: UsageRecord) -> UsageRecord:
        return UsageRecord(
            self.account_id,
            self.day,
            self.model,
            self.requests + other.requests,
            self.texts + other.texts,
            self.tokens + other.tokens,
            self.cache_hits + other.cache_hits,
            self.cache_misses + other.cache_misses,
            self.compute_ms + other.compute_ms,
        )


@dataclass(frozen=True)
class Charge:
    """`cost` units against a counter `key` that allows `limit` units per fixed window of `window_s` seconds (windows
    start at multiples of `window_s` since the epoch: a day window starts at 00:00 UTC). `subject` is whose counter it
    is (an account): one counter per key and subject, and a store may keep one subject's counters together."""

    name: str  # what the window is called in headers and messages: "day", "minute"
    key: str
    limit: int
    window_s: int
    cost: int
    refundable: bool = False  # may be given back (`RateLimiter.refund`) after the hit
    subject: str = ""

    @property
    def counter(self) -> str:
        """The counter's identity: its key and subject."""
        return f"{self.key}:{self.subject}" if self.subject else self.key


@dataclass(frozen=True)
class WindowState:
    charge: Charge
    used: int  # after this request (or, when refused, before it)
    reset_s: float  # seconds until the window ends

    @property
    def remaining(self) -> int:
        return max(0, self.charge.limit - self.used)

    @property
    def retry_after_s(self) -> int:
        """Whole seconds until the window ends (at least 1): what a refusal's Retry-After says."""
        return max(1, int(self.reset_s + 0.999))

    def resets_at(self, now: float) -> str:
        """When the window ends, in UTC ISO 8601 (`now`: the epoch seconds `reset_s` was reckoned from)."""
        return datetime.fromtimestamp(round(now + self.reset_s), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Admission:
    """What a rate limiter answered: every window's state; `refused` names the first window the charge would exceed
    (then nothing was consumed)."""

    windows: tuple[WindowState, ...]
    refused: WindowState | None = None
    provisional: bool = False  # counted by one process alone while the shared store was unreachable

    @property
    def allowed(self) -> bool:
        return self.refused is None


# The tenant name of the shared public pool (filled by `embedding-service cache seed --shared`); no caller has it.
SHARED_POOL = "_shared"
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class CacheScope:
    """The entries a lookup may see: one tenant's, of one model revision and output variant."""

    tenant: str
    model: str
    variant: str

    def readable_tenants(self, shared_pool: bool) -> tuple[str, ...]:
        """Whose entries a lookup may serve, in order of preference: the tenant's own, then the shared pool's."""
        return (self.tenant, SHARED_POOL) if shared_pool and self.tenant != SHARED_POOL else (self.tenant,)


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int


@dataclass(frozen=True)
class Limits:
    max_input_length: int
    max_batch_size: int


# The files a built-in model's folder holds besides its weights (the upstream layout of sentence-transformers models).
BUILT_IN_LAYOUT = (
    "modules.json",
    "config.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "1_Pooling/config.json",
)

KNOWN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="all-mpnet-base-v2",
            hub_id="sentence-transformers/all-mpnet-base-v2",
            revision="e8c3b32edf5434bc2275fc9bab85f82640a19130",
            files=(
                PinnedFile(
                    "model.safetensors", "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658", 437971872
                ),
            ),
            dimension=768,
            max_seq_length=384,
            required_files=BUILT_IN_LAYOUT,
        ),
        ModelSpec(
            name="all-MiniLM-L6-v2",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            revision="1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
            files=(
                PinnedFile(
                    "model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", 90868376
                ),
            ),
            dimension=384,
            max_seq_length=256,
            required_files=BUILT_IN_LAYOUT,
        ),
    )
}


def resolve_model(name: str, catalog: Sequence[ModelSpec] = ()) -> ModelSpec:
    """Find a model by short name or hub id: a built-in one, or one of `catalog` (the models lock file's)."""
    known = [*KNOWN_MODELS.values(), *catalog]
    for spec in known:
        if spec.answers_to(name):
            return spec
    raise KeyError(f"unknown model {name!r}; known: {', '.join(spec.name for spec in known)}")


# The fixed texts a non-reference backend (ONNX Runtime, OpenVINO, fp16, int8) must embed like torch fp32 before it
# may serve: short and long, several scripts, numbers, an empty string and one longer than any model's limit.
BACKEND_CHECK_TEXTS: tuple[str, ...] = (
    "Ada Lovelace",
    "Jane Doe, ACME Corp, jane.doe@example.com, +1 555 0100",
    "Jazz night at the harbour with the Lisbon quartet, doors open 19:30",
    "Farmers market",
    "",
    "a",
    "Quarterly board meeting: review of the 2026 budget, hiring plan and the new office lease in Rotterdam.",
    "Été à Paris — café, crème brûlée et musées; à bientôt !",
    "Встреча с клиентом в пятницу в 10 утра",  # noqa: RUF001 (Cyrillic on purpose)
    "東京で来週の木曜日に打ち合わせ",
    "3.14159 2.71828 1.41421 42 1e-9 0xFF",
    "Follow up with Dr. O'Neil re: invoice #4471 (overdue 30 days) and the revised statement of work.",
    "the the the the the the the the the the",
    "UPPERCASE SHOUTING ABOUT THE OPEN-AIR CINEMA ON THE PIER",
    "Note: met at the regional sales conference. She leads procurement and asked for a follow-up call about the "
    "renewal, pricing for the enterprise tier, onboarding for new staff and a demo of the reporting features.",
    " ".join(f"word{i}" for i in range(600)),
)
