"""Errors the CLI turns into one clear message and an exit code instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class UsageError(Exception):
    """Bad input from the user (recipe, flag, path): exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A recipe that does not validate; the message names the field and what was expected."""


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a file (None where it can): missing, a folder, or not a regular file (a pipe or
    a device, which reading could block on)."""
    if path.is_dir():
        return "a folder, not a file"
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a regular file"
    return None
