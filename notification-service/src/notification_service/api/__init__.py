"""The service's own HTTP API: preferences and the sent-notification history. The
subscription route and the probes are registered in app.py."""
