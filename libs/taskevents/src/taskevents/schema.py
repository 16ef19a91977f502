"""Write or check the published JSON Schema: `python -m taskevents.schema [--check] PATH`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskevents.events import json_schema


def render() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path)
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args()
    if args.check:
        if not args.path.exists() or args.path.read_text() != render():
            sys.stderr.write(f"{args.path} is stale: run `make schema`\n")
            return 1
        return 0
    args.path.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
