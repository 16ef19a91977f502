"""Implementations of the ports: SMTP (aiosmtplib) and the Dapr state store."""
