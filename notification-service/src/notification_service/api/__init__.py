"""The service's HTTP API, one module per resource, and the sidecar's routes
(subscriptions.py)."""
