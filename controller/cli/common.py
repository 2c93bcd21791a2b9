"""Helpers every command module shares: the root group class, settings, the store, JSON output.

Imported by the command modules and by ``main``; imports no command module itself.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from controller.clock import Clock, system_clock
from controller.config import ConfigError, Settings
from controller.encoding import dumps
from storage import StorageError, Store
from storage.artifacts import ArtifactError

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    StorageError,
    ConfigError,
    ArtifactError,
    ValueError,
    OSError,
)


def one_line(error: BaseException) -> str:
    """Return the first line of an error's text (its type name when it has none)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


class Cli(click.Group):
    """A group that turns expected errors into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as error:
            raise click.ClickException(one_line(error)) from error


def settings_of(ctx: click.Context) -> Settings:
    """Return the settings the root command built from the environment and its options."""
    settings: Settings = ctx.find_root().obj
    return settings


CLOCK = "mlcanary.clock"


def clock_of(ctx: click.Context) -> Clock:
    """Return the commands' clock: ``ctx.meta["mlcanary.clock"]`` if a caller set one, else the system's."""
    clock: Clock = ctx.meta.get(CLOCK, system_clock)
    return clock


def store_of(ctx: click.Context) -> Store:
    """Open the store of the configured database (the schema checked)."""
    from controller.app import open_store

    return open_store(settings_of(ctx))


def echo_json(value: Any) -> None:
    """Print a value as indented JSON."""
    click.echo(dumps(value, indent=2))


def json_option(value: str | None, what: str) -> Any:
    """Parse an option given as inline JSON or as the path of a .json file."""
    if value is None:
        return None
    path = Path(value)
    try:
        text = path.read_text() if path.suffix == ".json" and path.is_file() else value
        return json.loads(text)
    except (json.JSONDecodeError, OSError) as error:
        raise click.BadParameter(f"{what} must be JSON or a .json file: {error}") from error


def parse_age(text: str) -> timedelta:
    """Parse an age such as 30d, 12h or 90m."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) <= 0:
        raise click.BadParameter(f"{text!r}: write a positive number followed by d, h or m (e.g. 30d)")
    return timedelta(**{units[unit]: int(number)})
