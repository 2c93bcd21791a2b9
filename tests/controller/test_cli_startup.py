"""A fast CLI (issue 19): the root group loads a command's module only when that command runs.

No timing here (bench/cli_speed.py measures it): the test checks what `mlcanary --help` imports, that
the help lists every command with the command's own short help, and the quiet exit into a closed pipe.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from controller.cli.main import COMMANDS, cli

HEAVY = ("pandas", "sqlalchemy", "sklearn", "scipy", "flask", "numpy", "httpx", "alembic", "skops")

PROBE = """
import sys
from controller.cli.main import cli
for args in (["--help"], ["--version"], ["rollout", "--help"]):
    try:
        cli.main(args, prog_name="mlcanary", standalone_mode=False)
    except SystemExit:
        pass
print("LOADED", sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:])))
"""


def test_help_and_version_import_no_pandas_sqlalchemy_or_scikit_learn() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *HEAVY], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.splitlines()[-1] == "LOADED []", done.stdout


def test_the_root_help_lists_every_command_with_its_own_short_help() -> None:
    context = click.Context(cli)
    for name, (_module, listed) in COMMANDS.items():
        command = cli.get_command(context, name)
        assert command is not None, name
        assert listed == command.get_short_help_str(limit=300), name
    assert set(COMMANDS) == set(cli.list_commands(context))


def test_output_piped_into_a_closed_reader_exits_without_a_traceback(tmp_path: Path) -> None:
    # `mlcanary ... | head -1`: the reader closes the pipe early; no "Broken pipe" error or traceback.
    writer = subprocess.Popen(
        [sys.executable, "-m", "controller", "--data-dir", str(tmp_path), "db", "upgrade"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert writer.stdout is not None
    writer.stdout.close()  # nobody reads: every write hits a closed pipe
    _, err = writer.communicate(timeout=120)
    assert (tmp_path / "mlcanary.db").is_file()  # the command did its work
    assert b"Traceback" not in err and b"Broken pipe" not in err and b"Error" not in err, err.decode()
