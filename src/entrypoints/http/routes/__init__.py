"""One APIRouter per API surface: the /embed dialects, the hosted /v1 API, accounts and keys, operations."""
