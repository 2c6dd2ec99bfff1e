"""HTTP entrypoint: translates HTTP requests to use cases and domain errors to HTTP responses."""
