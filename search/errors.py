"""Errors the CLI turns into one clear message and an exit code instead of a traceback."""


class UsageError(Exception):
    """Bad input from the user (recipe, flag, path): exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A recipe that does not validate; the message names the field and what was expected."""
