"""Adapters: implementations of the domain ports (real model backends, fakes, model sources)."""
