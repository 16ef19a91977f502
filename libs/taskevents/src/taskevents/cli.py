"""The `taskevents` command line: publish events through a Dapr sidecar, run a demo stream."""

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

DEFAULT_HTTP_PORT = 3500
DEFAULT_GRPC_PORT = 50001


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    # The Dapr SDK reads its ports from the environment when it is imported.
    os.environ["DAPR_HTTP_PORT"] = str(args.dapr_http_port)
    os.environ["DAPR_GRPC_PORT"] = str(args.dapr_grpc_port)
    try:
        code = asyncio.run(args.run(args))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


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
    return parser


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
    from taskevents.demo import DemoStream

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
