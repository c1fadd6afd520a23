"""The HTTP layer: routing, OCI error responses, headers. Handlers stay thin."""
