"""Reading what the development SMTP server received (scripts/mailsink.py stores each
message as <id>.eml plus an <id>.json envelope written last)."""

from __future__ import annotations

import email
import email.policy
import json
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path


@dataclass(frozen=True)
class ReceivedMail:
    rcpt_tos: list[str]
    mail_from: str
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def header(self, name: str) -> str | None:
        value = self.message[name]
        return None if value is None else str(value)

    def part(self, content_type: str) -> str | None:
        for part in self.message.walk():
            if part.get_content_type() == content_type and not part.is_multipart():
                return str(part.get_content())
        return None


def mails_to(mail_dir: Path, recipient: str) -> list[ReceivedMail]:
    found = []
    for meta_path in sorted(mail_dir.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        if recipient.lower() not in [r.lower() for r in meta.get("rcpt_tos", [])]:
            continue
        raw = (mail_dir / meta["eml"]).read_bytes()
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        found.append(ReceivedMail(meta["rcpt_tos"], meta.get("mail_from", ""), message))
    return found
