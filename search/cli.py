"""The `slimsearch` command line: one sub-command per module in `search/commands/`."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape

from evaluators.data import DataError
from search.commands import COMMANDS
from search.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slimsearch",
        description="Search compression policies and block-built CNNs for the best accuracy / latency trade-off, "
        "with latency measured on a real inference engine.",
        epilog="Start with: slimsearch run studies/digits_blocks.yaml",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; usage, recipe and data errors print one message and exit with code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        return exc.exit_code
    except DataError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] data: {escape(str(exc))}", highlight=False)
        return UsageError.exit_code
    except KeyboardInterrupt:
        Console(stderr=True, soft_wrap=True).print("interrupted; completed trials are saved — resume with the same command")
        return 130


if __name__ == "__main__":
    sys.exit(main())
