"""Use cases by capability: what callers and operators of the service can do, each a class with `execute()` that
takes ports, never adapters."""

from domain.use_cases.accounts import (
    AuthenticateAccount,
    ListAccounts,
    LogIn,
    LoginThrottle,
    NewAccount,
    SetTier,
    SignUp,
)
from domain.use_cases.cache import CacheReport, GetCacheStats, SeedCache, SeedReport
from domain.use_cases.embedding import EmbedBatch, EmbeddingResult, EmbedInputs, EmbedOne, unpaired_surrogate
from domain.use_cases.keys import ANONYMOUS, AuthenticateCaller, CreateKey, ListKeys, RevokeKey
from domain.use_cases.operations import GetHealth, GetMetadata, HealthReport, ListModels, ServedModelReport
from domain.use_cases.providers import (
    DeleteProvider,
    GetProvider,
    RotateProviderKeys,
    RotationReport,
    SetProvider,
)
from domain.use_cases.usage import GetUsage, Metered, MeterRequests, TierLimits, UsageReport

__all__ = [
    "ANONYMOUS",
    "AuthenticateAccount",
    "AuthenticateCaller",
    "CacheReport",
    "CreateKey",
    "DeleteProvider",
    "EmbedBatch",
    "EmbedInputs",
    "EmbedOne",
    "EmbeddingResult",
    "GetCacheStats",
    "GetHealth",
    "GetMetadata",
    "GetProvider",
    "GetUsage",
    "HealthReport",
    "ListAccounts",
    "ListKeys",
    "ListModels",
    "LogIn",
    "LoginThrottle",
    "MeterRequests",
    "Metered",
    "NewAccount",
    "RevokeKey",
    "RotateProviderKeys",
    "RotationReport",
    "SeedCache",
    "SeedReport",
    "ServedModelReport",
    "SetProvider",
    "SetTier",
    "SignUp",
    "TierLimits",
    "UsageReport",
    "unpaired_surrogate",
]
