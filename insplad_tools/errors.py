"""Errors that the command line turns into one clear line and a non-zero exit."""

from __future__ import annotations

import click


class InspladError(click.ClickException):
    """A problem with the user's input or environment, reported as a single line."""


class DatasetError(InspladError):
    """A dataset folder does not have the expected MVTec AD layout."""


def os_error(exc: OSError, where: object = None) -> InspladError:
    """An environment fault (permission denied, disk full, not a directory) as one line naming the file."""
    name = exc.filename if exc.filename is not None else where
    reason = exc.strerror or str(exc) or type(exc).__name__
    return InspladError(f"{name}: {reason}" if name is not None else reason)


def one_line_os_errors(func):  # type: ignore[no-untyped-def]
    """Decorate a click command so an ``OSError`` ends in one line and exit 1, never a traceback."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return func(*args, **kwargs)
        except OSError as exc:
            raise os_error(exc) from None

    return wrapper
