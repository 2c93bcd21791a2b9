"""Helpers every command module shares: the root group class, settings, the store, JSON output.

Imported by the command modules and by ``main``; imports no command module itself, and nothing heavy
(SQLAlchemy, pandas, NumPy, Flask) at its top: ``mlcanary --help`` imports this module.
"""

from __future__ import annotations

import gc
import getpass
import importlib
import json
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from controller.clock import Clock, system_clock
from controller.config import ConfigError, Settings

if TYPE_CHECKING:
    from storage import Database, Store


# A command such as `pipelines register` imports ~1,900 modules and exits. Two costs of a long-lived
# interpreter are wasted on it (bench/cli_speed.py): the cyclic garbage collector, run every 700 new
# objects by default, walks those modules' objects again and again (~10% of the CPU time), and the
# interpreter's teardown frees every object one by one at exit (~20%). main() raises the youngest
# generation's threshold and, once the command is done, ends the process with end_process(): output
# flushed and atexit handlers run (logging, temporary files), the teardown skipped (as mypy does). The
# long-running processes (serve, router, controller, demo) call long_running() and keep Python's own.
GC_THRESHOLDS = gc.get_threshold()  # Python's (unless the embedding process changed them)
SHORT_LIVED_GC_THRESHOLD = 50_000
_long_running = False
_short_lived = False  # main() runs this process as one command (not commands run in-process)
# closed by end_process (SQLite checkpoints its WAL into the file on close); kept only in a short-lived
# process: one that runs commands in-process (tests, a notebook) must not hold every command's pool
_opened: list[Database] = []


# The commands that run until stopped (they call long_running()); every other command scores a few
# rows at most, where a pool of BLAS/OpenMP threads costs more to start (and spins on idle cores) than
# it saves: ~0.4 s of CPU of a `pipelines register` on 2 cores.
LONG_RUNNING_COMMANDS = frozenset({"serve", "router", "controller", "demo"})
LIBRARY_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def single_threaded_libraries(argv: Sequence[str], environ: MutableMapping[str, str]) -> bool:
    """Ask NumPy's BLAS and OpenMP for one thread, for a short command (before NumPy loads).

    Not when any argument names a long-running command (cautious: a short command with such an
    argument simply keeps the libraries' default), and never over a value the user set. Return
    whether this is a short command.
    """
    if LONG_RUNNING_COMMANDS.intersection(argv):
        return False
    for name in LIBRARY_THREAD_VARIABLES:
        environ.setdefault(name, "1")
    return True


def short_lived() -> None:
    """Collect cycles less often: this process is a command that exits when done."""
    global _short_lived
    _short_lived = True
    gc.set_threshold(max(SHORT_LIVED_GC_THRESHOLD, GC_THRESHOLDS[0]), *GC_THRESHOLDS[1:])


def long_running() -> None:
    """Keep Python's garbage collection and exit (for serve, router, controller and demo)."""
    global _long_running
    _long_running = True
    gc.set_threshold(*GC_THRESHOLDS)


def end_process(code: object) -> NoReturn:
    """End a short command with status ``code`` without the interpreter's teardown (see above).

    Falls back to ``sys.exit`` for a long-running process, while other threads run (their owners
    expect to be joined), or for a status that is not a number.
    """
    import atexit
    import os
    import sys
    import threading

    if _long_running or threading.active_count() > 1 or not (code is None or isinstance(code, int)):
        sys.exit(code)  # type: ignore[arg-type]
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
    for database in _opened:  # what the teardown would have closed (SQLite folds its WAL into the file)
        database.dispose()
    atexit._run_exitfuncs()  # logging.shutdown, weakref finalizers (temporary folders), coverage
    os._exit(code or 0)


def close_at_exit(database: Database) -> Database:
    """Have end_process close this database's connections (the interpreter's teardown would have)."""
    if _short_lived:
        _opened.append(database)
    return database


def expected_errors() -> tuple[type[BaseException], ...]:
    """The errors an operator can cause: shown as one line (imported only once one is raised)."""
    from storage import StorageError
    from storage.artifacts import ArtifactError

    return (StorageError, ConfigError, ArtifactError, ValueError, OSError)


def one_line(error: BaseException) -> str:
    """Return the first line of an error's text (its type name when it has none)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


class Cli(click.Group):
    """The root group: expected errors become one line and exit status 1; commands load lazily.

    ``lazy_commands`` maps a command name to ``(module:attribute, short help)``: a command's module is
    imported only when that command runs (or its own --help is asked for), so ``mlcanary --help`` and
    ``--version`` import no pandas, SQLAlchemy or scikit-learn.
    """

    def __init__(self, *args: Any, lazy_commands: Mapping[str, tuple[str, str]] | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            module, attribute = self.lazy_commands[cmd_name][0].split(":")
            command: click.Command = getattr(importlib.import_module(module), attribute)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy_commands[name][1]) for name in sorted(self.lazy_commands)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own (usage errors, --help's exit): no need to look at ours
        except (ConfigError, ValueError, OSError) as error:
            if isinstance(error, BrokenPipeError):
                _quiet_broken_pipe()
            raise click.ClickException(one_line(error)) from error
        except Exception as error:
            if isinstance(error, expected_errors()):
                raise click.ClickException(one_line(error)) from error
            raise


def _quiet_broken_pipe() -> None:
    """`mlcanary ... | head` closed our stdout: exit quietly, as the shell's own tools do."""
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


def settings_of(ctx: click.Context) -> Settings:
    """Return the settings the root command built from the environment and its options."""
    settings: Settings = ctx.find_root().obj
    return settings


CLOCK = "mlcanary.clock"


def clock_of(ctx: click.Context) -> Clock:
    """Return the commands' clock: ``ctx.meta["mlcanary.clock"]`` if a caller set one, else the system's."""
    clock: Clock = ctx.meta.get(CLOCK, system_clock)
    return clock


VERBOSE = "mlcanary.verbose"
API = "mlcanary.api"


def say_database(ctx: click.Context, *, always: bool = False) -> None:
    """Print which database this command uses (on stderr; always, or with --verbose)."""
    if always or ctx.find_root().meta.get(VERBOSE):
        click.echo(f"mlcanary: {settings_of(ctx).database_description()}", err=True)


def store_of(ctx: click.Context) -> Store:
    """Open the store of the configured database (the schema checked); never creates one.

    Only ``serve``, ``controller`` and ``db upgrade`` create a database: any other command refuses a
    missing one, naming the command that creates it. With --api given, refused in one line.
    """
    from controller.app import open_store

    # every command goes through the admin API when --api is given, or refuses it (refuse_api) before
    # this point: a command that reaches here with --api has no route, and never quietly uses a database
    refuse_api(ctx, "it has no admin API route")
    say_database(ctx)
    store = open_store(settings_of(ctx), create_embedded=False)
    close_at_exit(store.db)
    return store


def api_of(ctx: click.Context) -> tuple[str, str | None] | None:
    """The (admin API URL, token) given by the global --api/--token (or a group's), else None."""
    found: tuple[str, str | None] | None = ctx.find_root().meta.get(API)
    return found if found and found[0] else None


def archive_or_restore(
    ctx: click.Context, path: str, verb: str, what: str, reason: str, local: Callable[[Store, str], str]
) -> None:
    """POST {path}/{verb} through the admin API when --api is given; else run ``local(store, actor)``
    on the database and print the line it returns (``verb``: "archive" or "restore")."""
    given = api_of(ctx)
    if given is not None:
        from controller.cli.remote import ApiClient

        ApiClient(*given).call("POST", f"{path}/{verb}", {"reason": reason} if reason else {})
        click.echo(f"{verb}d {what} through {given[0]}")
        return
    click.echo(local(store_of(ctx), actor()))
    say_database(ctx, always=True)


def actor() -> str:
    """Return ``cli:<login>`` (who ran the command, for the event log)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli:unknown"


def echo_json(value: Any) -> None:
    """Print a value as indented JSON."""
    from controller.encoding import dumps

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
    """Parse an age such as 30d, 12h or 90m (controller.clock.parse_age); BadParameter if not."""
    from controller.clock import parse_age as parse

    try:
        return parse(text)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


def refuse_api(ctx: click.Context, why: str) -> None:
    """Refuse a command that has no admin API route when --api (or MLCANARY_API_URL) is given: one line."""
    given = api_of(ctx)
    if given is not None:
        command = " ".join(["mlcanary", *ctx.command_path.split(" ")[1:]])
        raise click.ClickException(
            f"{command} does not work through the admin API ({given[0]}): {why}; "
            "run it without --api (unset MLCANARY_API_URL) on a host that reaches the database"
        )
