"""The `slimsearch` command line: one sub-command per module in `search/commands/`."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape

from evaluators.data import DataError
from evaluators.latency.table import TableError
from evaluators.onnx_export import ExportError
from registry import UnknownName
from search.commands import COMMANDS
from search.errors import UsageError
from spaces.compress import CompressError


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command, each registered by its module."""
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


def _error(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point; usage, recipe, data, checkpoint, export, latency-table and unknown-name errors print one
    message and exit with code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        _error(str(exc))
        return exc.exit_code
    except DataError as exc:
        _error(f"data: {exc}")
        return UsageError.exit_code
    except (CompressError, ExportError, TableError, UnknownName) as exc:
        _error(str(exc))
        return UsageError.exit_code
    except KeyboardInterrupt:
        Console(stderr=True, soft_wrap=True).print("interrupted; completed trials are saved — resume with the same command")
        return 130


if __name__ == "__main__":
    sys.exit(main())
