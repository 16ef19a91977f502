"""The service's own HTTP API (preferences, sent notifications) comes with issue #4; the
subscription route and the probes are registered in app.py."""
