"""The service under the package name callers' deployments use (`embedding_service.app:app`)."""
