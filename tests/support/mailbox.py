"""Reading what the development SMTP server received (scripts/mailsink.py stores each
message as <id>.eml plus an <id>.json envelope written last), and a sink of a test's own
that the test may stop and start again (never the shared one)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from tests.support.stack import ROOT
from tests.support.waiting import eventually


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


@dataclass
class Sink:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "SMTP_PORT": str(self.port),
            "MAILSINK_HTTP_PORT": "0",
            "MAILSINK_DIR": str(self.directory),
            "MAILSINK_REJECT": "",
        }
        log = open(self.directory.parent / "mailsink.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "mailsink.py")],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)
            self.process = None

    async def wait_accepting(self) -> None:
        async def accepting() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            return True

        await eventually(accepting, timeout=20, what="own SMTP sink listening")

    def mails_to(self, address: str) -> list[ReceivedMail]:
        return mails_to(self.directory, address)
