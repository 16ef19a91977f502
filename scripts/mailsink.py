#!/usr/bin/env python3
"""Development SMTP sink: accepts every mail and stores it on disk, never delivers.

SMTP on 127.0.0.1:$SMTP_PORT (default 1025), a read-only web inbox on
127.0.0.1:$MAILSINK_HTTP_PORT (default 1080; 0 disables it).

Storage, in $MAILSINK_DIR (default $TASKEVENTS_STATE/mail), per message:

* ``<id>.eml``  the message exactly as received (RFC 5322 bytes, CRLF line ends as sent);
* ``<id>.json`` the envelope and a few parsed headers::

      {"id": ..., "received_at": "2026-01-02T03:04:05.123456Z", "mail_from": ...,
       "rcpt_tos": [...], "subject": ..., "message_id": ..., "size": ..., "peer": ...,
       "helo": ..., "eml": "<id>.eml"}

Both files are written atomically (hidden temporary file, then rename), the .json last: a
message is complete once its .json exists. Ids are ``<UTC time>-<counter>-<random>``, e.g.
``20260102T030405.123456Z-000001-a1b2c3``, so sorting the names sorts by arrival.

Web inbox: ``/`` an HTML table, ``/messages`` the JSON list of the sidecars (oldest first),
``/messages/<id>`` the raw message, ``/messages/<id>.json`` one sidecar.

$MAILSINK_REJECT: comma-separated recipient addresses refused with a permanent
``550 5.1.1`` at RCPT time (case-insensitive), to exercise permanent-failure paths.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import email.message
import email.parser
import email.policy
import html
import itertools
import json
import logging
import os
import re
import secrets
import signal
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("mailsink")

ID_PATTERN = re.compile(r"^[0-9]{8}T[0-9]{6}\.[0-9]{6}Z-[0-9]{6}-[0-9a-f]{6}$")


def default_dir() -> Path:
    state = os.environ.get("TASKEVENTS_STATE")
    if not state:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        state = str(Path(xdg) / "taskevents")
    return Path(state) / "mail"


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def header_value(message: email.message.Message, name: str) -> str:
    try:
        value = message.get(name)
    except (ValueError, TypeError, LookupError):  # a header too broken to parse
        return ""
    return "" if value is None else str(value)


class Mailbox:
    """The directory of stored messages; safe to use from several threads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def new_id(self, now: dt.datetime) -> str:
        with self._lock:
            n = next(self._counter)
        return f"{now:%Y%m%dT%H%M%S.%fZ}-{n % 1_000_000:06d}-{secrets.token_hex(3)}"

    def store(
        self, content: bytes, mail_from: str, rcpt_tos: list[str], peer: str, helo: str
    ) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        message_id = self.new_id(now)
        parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            content, headersonly=True
        )
        meta: dict[str, Any] = {
            "id": message_id,
            "received_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "mail_from": mail_from,
            "rcpt_tos": rcpt_tos,
            "subject": header_value(parsed, "Subject"),
            "message_id": header_value(parsed, "Message-ID"),
            "size": len(content),
            "peer": peer,
            "helo": helo,
            "eml": f"{message_id}.eml",
        }
        write_atomically(self.directory / f"{message_id}.eml", content)
        write_atomically(
            self.directory / f"{message_id}.json",
            json.dumps(meta, ensure_ascii=False, indent=1).encode(),
        )
        return meta

    def list(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                meta = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue  # removed meanwhile, or not one of ours
            if isinstance(meta, dict) and ID_PATTERN.match(str(meta.get("id", ""))):
                messages.append(meta)
        return messages

    def raw(self, message_id: str) -> bytes | None:
        if not ID_PATTERN.match(message_id):
            return None
        try:
            return (self.directory / f"{message_id}.eml").read_bytes()
        except OSError:
            return None

    def meta(self, message_id: str) -> bytes | None:
        if not ID_PATTERN.match(message_id):
            return None
        try:
            return (self.directory / f"{message_id}.json").read_bytes()
        except OSError:
            return None


class SinkHandler:
    """aiosmtpd handler: refuse the configured recipients, store everything else."""

    def __init__(self, mailbox: Mailbox, reject: set[str]) -> None:
        self.mailbox = mailbox
        self.reject = reject

    # aiosmtpd finds its hooks by these exact names.
    async def handle_RCPT(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.lower() in self.reject:
            log.info("rejecting recipient %s (MAILSINK_REJECT)", address)
            return f"550 5.1.1 <{address}>: recipient rejected by mailsink (MAILSINK_REJECT)"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
    ) -> str:
        content = envelope.original_content
        if content is None:
            raw = envelope.content
            content = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw or b""
        try:
            meta = await asyncio.to_thread(
                self.mailbox.store,
                content,
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                peer_text(session.peer),
                session.host_name or "",
            )
        except OSError:
            log.exception("could not store a message in %s", self.mailbox.directory)
            return "451 4.3.0 mailsink could not store the message"
        log.info(
            "stored %s from <%s> to %s: %r",
            meta["id"],
            meta["mail_from"],
            meta["rcpt_tos"],
            meta["subject"],
        )
        return f"250 2.0.0 OK stored as {meta['id']}"


def peer_text(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


def inbox_page(messages: list[dict[str, Any]]) -> bytes:
    rows = "\n".join(
        '<tr><td>{}</td><td>{}</td><td>{}</td><td><a href="/messages/{}">{}</a></td></tr>'.format(
            html.escape(str(m.get("received_at", ""))),
            html.escape(str(m.get("mail_from", ""))),
            html.escape(", ".join(str(r) for r in m.get("rcpt_tos", []))),
            html.escape(str(m.get("id", ""))),
            html.escape(str(m.get("subject", "")) or "(no subject)"),
        )
        for m in reversed(messages)
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mailsink ({len(messages)})</title>
<style>body{{font-family:sans-serif}}td,th{{padding:2px 10px;text-align:left}}</style></head>
<body><h1>mailsink: {len(messages)} message(s)</h1>
<table><tr><th>received (UTC)</th><th>from</th><th>to</th><th>subject</th></tr>
{rows}
</table><p><a href="/messages">JSON</a></p></body></html>
"""
    return page.encode()


def make_http_handler(mailbox: Mailbox) -> type[BaseHTTPRequestHandler]:
    class InboxHandler(BaseHTTPRequestHandler):
        server_version = "mailsink"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            if path == "/":
                self.reply(HTTPStatus.OK, "text/html; charset=utf-8", inbox_page(mailbox.list()))
            elif path == "/messages":
                self.reply(
                    HTTPStatus.OK,
                    "application/json",
                    json.dumps(mailbox.list(), ensure_ascii=False).encode(),
                )
            elif path.startswith("/messages/"):
                name = path.removeprefix("/messages/")
                if name.endswith(".json"):
                    body = mailbox.meta(name.removesuffix(".json"))
                    content_type = "application/json"
                else:
                    body = mailbox.raw(name.removesuffix(".eml"))
                    content_type = "text/plain; charset=utf-8"
                if body is None:
                    self.reply(HTTPStatus.NOT_FOUND, "text/plain", b"no such message\n")
                else:
                    self.reply(HTTPStatus.OK, content_type, body)
            else:
                self.reply(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

        def reply(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http %s " + format, self.address_string(), *args)

    return InboxHandler


async def serve(args: argparse.Namespace) -> None:
    mailbox = Mailbox(Path(args.dir))
    reject = {a.strip().lower() for a in args.reject.split(",") if a.strip()}
    handler = SinkHandler(mailbox, reject)
    loop = asyncio.get_running_loop()

    def smtp_factory() -> SMTP:
        return SMTP(
            handler,
            hostname="mailsink",
            ident="taskevents mailsink",
            enable_SMTPUTF8=True,
            decode_data=False,
            loop=loop,
        )

    smtp_server = await loop.create_server(smtp_factory, host=args.host, port=args.port)
    log.info("SMTP on %s:%d, storing mail in %s", args.host, args.port, mailbox.directory)
    if reject:
        log.info("rejecting recipients with 550: %s", ", ".join(sorted(reject)))

    httpd: ThreadingHTTPServer | None = None
    if args.http_port:
        httpd = ThreadingHTTPServer((args.host, args.http_port), make_http_handler(mailbox))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, name="inbox", daemon=True).start()
        log.info("web inbox on http://%s:%d/", args.host, args.http_port)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down")
    smtp_server.close()
    await smtp_server.wait_closed()
    if httpd is not None:
        httpd.shutdown()
        httpd.server_close()
    log.info("stopped")


def parse_args() -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default=env.get("MAILSINK_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("SMTP_PORT", "1025")))
    parser.add_argument(
        "--http-port",
        type=int,
        default=int(env.get("MAILSINK_HTTP_PORT", "1080")),
        help="web inbox port; 0 disables it",
    )
    parser.add_argument("--dir", default=env.get("MAILSINK_DIR") or str(default_dir()))
    parser.add_argument(
        "--reject",
        default=env.get("MAILSINK_REJECT", ""),
        help="comma-separated recipients to refuse with 550",
    )
    parser.add_argument("--log-level", default=env.get("MAILSINK_LOG_LEVEL", "INFO"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiosmtpd logs every SMTP command at INFO under "mail.log"; keep only its warnings.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
