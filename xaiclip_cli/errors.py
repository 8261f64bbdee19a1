"""Exceptions that carry the exit code a user sees (library-level, no CLI imports)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


class XaiclipError(Exception):
    """A runtime failure with a one-line message for the user (exit code 1)."""

    exit_code = EXIT_RUNTIME


class UsageError(XaiclipError):
    """Bad input from the user: a flag, a setting, a path or a file's content (exit code 2)."""

    exit_code = EXIT_USAGE


class PartialFailure(XaiclipError):
    """Some shards or items failed while the rest finished (exit code 3)."""

    exit_code = EXIT_PARTIAL
