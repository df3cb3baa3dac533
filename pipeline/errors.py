"""Exceptions that reach users as one clear line (the CLI maps them to exit codes)."""

from __future__ import annotations


class OmicsclipError(Exception):
    """A failure the user should read as one line; exit code 1."""

    exit_code = 1


class InputError(OmicsclipError):
    """Bad user input (file, data, config, option); exit code 2."""

    exit_code = 2
