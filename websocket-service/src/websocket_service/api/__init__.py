"""HTTP and WebSocket routes of the service: the client socket, the live page, dev tokens."""
