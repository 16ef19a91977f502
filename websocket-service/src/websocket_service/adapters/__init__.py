"""Implementations of the ports: JWT client tokens (PyJWT)."""
