"""The `taskevents` command line: publish events through a Dapr sidecar, run a demo stream,
handle the dead letters the audit log keeps."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from taskevents.events import InvalidEventError, TaskEvent
from taskevents.tracing import configure_tracing

DEFAULT_HTTP_PORT = 3500
DEFAULT_GRPC_PORT = 50001


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    # The Dapr SDK reads its ports and token from the environment when it is imported.
    os.environ["DAPR_HTTP_PORT"] = str(args.dapr_http_port)
    os.environ["DAPR_GRPC_PORT"] = str(args.dapr_grpc_port)
    if not os.environ.get("DAPR_API_TOKEN") and (token := _local_dapr_api_token()):
        os.environ["DAPR_API_TOKEN"] = token
    # With OTEL_EXPORTER_OTLP_ENDPOINT set, each publish starts a trace (exported at exit).
    configure_tracing("taskevents-cli")
    try:
        code = asyncio.run(args.run(args))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _local_dapr_api_token() -> str | None:
    """The sidecars' API token of `make run` (see `make tokens`), when there is one."""
    state = os.environ.get("TASKEVENTS_STATE") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "taskevents"
    )
    try:
        with open(os.path.join(state, "tokens", "dapr-api-token"), encoding="utf-8") as file:
            return file.read().strip() or None
    except OSError:
        return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskevents", description=__doc__)
    parser.add_argument(
        "--dapr-http-port",
        type=int,
        default=int(os.environ.get("DAPR_HTTP_PORT", DEFAULT_HTTP_PORT)),
        help="HTTP port of the sidecar to publish through (env DAPR_HTTP_PORT)",
    )
    parser.add_argument(
        "--dapr-grpc-port",
        type=int,
        default=int(os.environ.get("DAPR_GRPC_PORT", DEFAULT_GRPC_PORT)),
        help="gRPC port of that sidecar (env DAPR_GRPC_PORT; default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TASKEVENTS_TOKEN"),
        help="bearer token (JWT) for the services' APIs (env TASKEVENTS_TOKEN); in "
        "development one is minted with the development key when none is given",
    )
    parser.add_argument("--pubsub", default="kafka-pubsub")
    parser.add_argument("--topic", default="task-events")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    publish = commands.add_parser("publish", help="publish one event")
    publish.add_argument("type", help="event type, e.g. task.created")
    publish.add_argument("--task-id", required=True)
    publish.add_argument("--user-id", required=True)
    publish.add_argument("--payload", default="{}", help="the payload as a JSON object")
    publish.add_argument("--event-id", help="default: a new UUID")
    publish.set_defaults(run=_publish)

    demo = commands.add_parser("demo", help="publish a realistic stream of task life-cycles")
    demo.add_argument("--users", type=int, default=10)
    demo.add_argument("--rate", type=float, default=5.0, help="events per second")
    demo.add_argument("--duration", type=float, default=60.0, help="seconds; 0 = until Ctrl-C")
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--user-prefix", default="user", help="user ids are PREFIX-0, PREFIX-1, …")
    demo.set_defaults(run=_demo)
    _add_dlq_commands(commands)

    token = commands.add_parser(
        "token",
        help="development: mint a bearer token for a user with the development key",
    )
    token.add_argument("--user", default=os.environ.get("USER") or "developer")
    token.add_argument("--operator", action="store_true", help="with the operator role")
    token.add_argument("--ttl", type=int, default=8 * 3600, help="seconds (default 8 h)")
    token.set_defaults(run=_token)
    return parser


def _development_token(user_id: str, *, operator: bool, ttl_seconds: int) -> str:
    """A token signed with the development key (TASKEVENTS_JWT_SECRET, else the public
    default): only development services accept it."""
    from pydantic import SecretStr

    from taskevents.auth import TokenVerifier
    from taskevents.settings import DEVELOPMENT_JWT_SECRET

    key = os.environ.get("TASKEVENTS_JWT_SECRET") or DEVELOPMENT_JWT_SECRET
    role = os.environ.get("TASKEVENTS_OPERATOR_ROLE") or "operator"
    minting = TokenVerifier(SecretStr(key), operator_role=role)
    return minting.issue(user_id, ttl_seconds=ttl_seconds, roles=[role] if operator else []).token


async def _token(args: argparse.Namespace) -> int:
    if os.environ.get("TASKEVENTS_ENV", "development") != "development":
        print("error: `taskevents token` mints development tokens only", file=sys.stderr)
        return 2
    print(_development_token(args.user, operator=args.operator, ttl_seconds=args.ttl))
    return 0


AUDIT_APP_ID = "audit-log-service"
DLQ_TIMEOUT_SECONDS = 60.0


def _add_dlq_commands(commands: Any) -> None:
    """`taskevents dlq …`: the dead letters the audit log keeps. The calls go to
    audit-log-service through the sidecar (Dapr service invocation, by app-id), or straight
    to --audit-url when there is no sidecar to go through."""
    dlq = commands.add_parser("dlq", help="list, show, replay or discard dead letters")
    dlq.add_argument(
        "--audit-app-id",
        default=AUDIT_APP_ID,
        help="app-id to invoke through the sidecar (default %(default)s)",
    )
    dlq.add_argument(
        "--audit-url",
        default=os.environ.get("TASKEVENTS_AUDIT_URL"),
        help="call the audit API here directly instead, e.g. http://127.0.0.1:8003 "
        "(env TASKEVENTS_AUDIT_URL)",
    )
    actions = dlq.add_subparsers(required=True, metavar="ACTION")

    def add_operator(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--operator",
            default=os.environ.get("TASKEVENTS_OPERATOR") or os.environ.get("USER"),
            help="development: the subject of the operator token minted when no --token is "
            "given (default: $TASKEVENTS_OPERATOR, else $USER, else developer); the audit "
            "log records the token's subject as who replayed or discarded",
        )

    def add_filters(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--status", choices=("new", "replayed", "discarded"))
        parser.add_argument("--original-topic")
        parser.add_argument("--type", help="event type")
        parser.add_argument("--since", help="first seen at or after (ISO 8601, with zone)")
        parser.add_argument("--until", help="first seen before (ISO 8601, with zone)")
        parser.add_argument("--limit", type=int)

    listing = actions.add_parser("list", help="dead letters, newest first (JSON)")
    add_filters(listing)
    listing.add_argument("--cursor", type=int, help="next_cursor of the page before")
    listing.set_defaults(run=_dlq_list)

    show = actions.add_parser("show", help="one dead letter, whole (JSON)")
    show.add_argument("id", type=int)
    show.set_defaults(run=_dlq_show)

    replay = actions.add_parser(
        "replay",
        help="publish a dead letter's event to task-events again; without an id, every "
        "dead letter matching the filters (default: status new)",
    )
    replay.add_argument("id", type=int, nargs="?")
    add_filters(replay)
    add_operator(replay)
    replay.set_defaults(run=_dlq_replay)

    discard = actions.add_parser("discard", help="discard a dead letter (kept, marked)")
    discard.add_argument("id", type=int)
    add_operator(discard)
    discard.set_defaults(run=_dlq_discard)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    names = ("status", "original_topic", "type", "since", "until", "limit")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


async def _dlq_list(args: argparse.Namespace) -> int:
    params = _filters(args)
    if args.cursor is not None:
        params["cursor"] = args.cursor
    return await _audit_call(args, "GET", "audit/dead-letters", params=params)


async def _dlq_show(args: argparse.Namespace) -> int:
    return await _audit_call(args, "GET", f"audit/dead-letters/{args.id}")


async def _dlq_replay(args: argparse.Namespace) -> int:
    if args.id is not None:
        return await _audit_call(args, "POST", f"audit/dead-letters/{args.id}/replay")
    return await _audit_call(args, "POST", "audit/dead-letters/replay", body=_filters(args))


async def _dlq_discard(args: argparse.Namespace) -> int:
    return await _audit_call(args, "DELETE", f"audit/dead-letters/{args.id}")


async def _audit_call(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
) -> int:
    import httpx

    if args.audit_url:
        url = f"{args.audit_url.rstrip('/')}/{path}"
    else:
        url = (
            f"http://127.0.0.1:{args.dapr_http_port}/v1.0/invoke/{args.audit_app_id}/method/{path}"
        )
    headers: dict[str, str] = {}
    if token := os.environ.get("DAPR_API_TOKEN"):
        headers["dapr-api-token"] = token
    bearer = args.token
    if not bearer and os.environ.get("TASKEVENTS_ENV", "development") == "development":
        operator = getattr(args, "operator", None) or "developer"
        bearer = _development_token(operator, operator=True, ttl_seconds=300)
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    async with httpx.AsyncClient(timeout=DLQ_TIMEOUT_SECONDS) as http:
        try:
            response = await http.request(method, url, params=params, json=body, headers=headers)
        except httpx.HTTPError as error:
            print(f"error: {method} {url} failed: {error}", file=sys.stderr)
            return 1
    if not response.is_success:
        print(f"error: {response.status_code} from {url}: {response.text}", file=sys.stderr)
        return 1 if response.status_code >= 500 else 2
    print(json.dumps(response.json(), indent=2))
    return 0


def _publisher(args: argparse.Namespace) -> Any:
    from taskevents.publisher import EventPublisher

    return EventPublisher(
        pubsub_name=args.pubsub,
        topic=args.topic,
        http_port=args.dapr_http_port,
        grpc_port=args.dapr_grpc_port,
    )


async def _publish(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
        if not isinstance(payload, dict):
            raise InvalidEventError("--payload must be a JSON object")
        event = TaskEvent.create(
            args.type,
            task_id=args.task_id,
            user_id=args.user_id,
            payload=payload,
            event_id=args.event_id,
        )
    except (json.JSONDecodeError, InvalidEventError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    publisher = _publisher(args)
    try:
        await publisher.publish(event)
    except Exception as error:
        print(f"error: publishing failed: {error}", file=sys.stderr)
        return 1
    finally:
        await publisher.close()
    print(event.event_id)
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from taskevents_cli.demo import DemoStream

    if args.rate <= 0:
        print("error: --rate must be positive", file=sys.stderr)
        return 2
    stream = DemoStream(users=args.users, seed=args.seed, user_prefix=args.user_prefix)
    publisher = _publisher(args)
    started = time.monotonic()
    sent = failed = 0
    counts: dict[str, int] = {}
    try:
        for event in stream:
            elapsed = time.monotonic() - started
            if args.duration and elapsed >= args.duration:
                break
            # Pace by schedule, not by sleeping a fixed gap, so slow publishes catch up.
            ahead = (sent + failed) / args.rate - elapsed
            if ahead > 0:
                await asyncio.sleep(ahead)
            try:
                await publisher.publish(event)
                sent += 1
                counts[event.type] = counts.get(event.type, 0) + 1
            except Exception as error:
                failed += 1
                print(f"\npublish failed: {error}", file=sys.stderr)
            _progress(sent, failed, time.monotonic() - started, counts)
    finally:
        await publisher.close()
        print(file=sys.stderr)
    summary = {"published": sent, "failed": failed, "by_type": counts}
    print(json.dumps(summary))
    return 0 if failed == 0 else 1


def _progress(sent: int, failed: int, elapsed: float, counts: dict[str, int]) -> None:
    rate = sent / elapsed if elapsed > 0 else 0.0
    kinds = " ".join(f"{k.removeprefix('task.')}={v}" for k, v in sorted(counts.items()))
    line = f"\r{sent} published, {failed} failed, {elapsed:5.1f}s, {rate:6.1f}/s  {kinds}"
    print(line, end="", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
