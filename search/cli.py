"""The `slimsearch` command line: one sub-command per module in `search/commands/`."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape

from search.commands import COMMANDS
from search.errors import UsageError
from search.study.interrupt import exit_code_after_interrupt, interruptible

USAGE_ERRORS = (  # (module, class): errors of the layers below that are bad input, printed as one message
    ("evaluators.latency.table", "TableError"), ("evaluators.to_onnx", "ExportError"),
    ("registry", "UnknownName"), ("spaces.compress.errors", "CompressError"),
)

STORAGE_ERRORS = (("sqlalchemy.exc", "DatabaseError"), ("optuna.exceptions", "StorageInternalError"))


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


def database_reason(exc: BaseException) -> str:
    """The database's own words for a failed query (SQLAlchemy wraps them with the SQL, Optuna wraps SQLAlchemy)."""
    while exc.__cause__ is not None and getattr(exc, "orig", None) is None:
        exc = exc.__cause__
    return str(getattr(exc, "orig", None) or exc)


def loaded(pairs: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    """The classes named by (module, class) whose modules are imported: an error can only come from a module
    that was, so the command line needs not import torch to recognise one."""
    return tuple(getattr(sys.modules[module], name) for module, name in pairs if module in sys.modules)


def main(argv: list[str] | None = None) -> int:
    """Entry point; usage, recipe, data, checkpoint, export, latency-table, storage and unknown-name errors print one
    message and exit with code 2; Ctrl-C (or SIGTERM) prints one line and exits with 128 + the signal (130, 143)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with interruptible():
            return int(args.func(args) or 0)
    except UsageError as exc:
        _error(str(exc))
        return exc.exit_code
    except Exception as exc:
        if isinstance(exc, loaded((("evaluators.splits", "DataError"),))):
            _error(f"data: {exc}")
        elif isinstance(exc, loaded(STORAGE_ERRORS)):
            _error(f"storage: the study database failed: {database_reason(exc)}")
        elif isinstance(exc, loaded(USAGE_ERRORS)):
            _error(str(exc))
        else:
            raise
        return UsageError.exit_code
    except KeyboardInterrupt:
        Console(stderr=True, soft_wrap=True).print("interrupted; completed trials are saved — resume with the same command")
        return exit_code_after_interrupt()


if __name__ == "__main__":
    sys.exit(main())
