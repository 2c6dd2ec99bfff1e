"""Pure domain of the embedding service: value types, errors, ports and use cases (no web or ML imports)."""
