"""Request and response bodies, one module per API surface, each with the functions that render its answers."""
