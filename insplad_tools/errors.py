"""Errors that the command line turns into one clear line and a non-zero exit."""

from __future__ import annotations

import click


class InspladError(click.ClickException):
    """A problem with the user's input or environment, reported as a single line."""


class DatasetError(InspladError):
    """A dataset folder does not have the expected MVTec AD layout."""
