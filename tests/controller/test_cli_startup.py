"""A fast CLI (issue 19): the root group loads a command's module only when that command runs.

No timing here (bench/cli_speed.py measures it): the tests check what `mlcanary --help` and
`rollout status` on the database import, that
the help lists every command with the command's own short help, and the quiet exit into a closed pipe.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from controller.cli.common import single_threaded_libraries
from controller.cli.main import COMMANDS, cli
from controller.core.policy import Policy
from storage import Database, Store
from storage.entities import Column, NewPipelineVersion, PairRecord

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


STATUS_PROBE = """
import sys
from controller.cli.main import cli
try:
    cli.main(["--database-url", sys.argv[1], "rollout", "status", "churn"], prog_name="mlcanary")
except SystemExit:
    pass
print("LOADED", sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:])))
"""

# what `rollout status` on the database needs no more (bench/cli_speed.py: < 0.6 s): the admin API's
# Flask, the registry's pandas, SciPy and NumPy (no statistic is computed: p50/p99 come from
# controller.core.histograms), Alembic (the schema check reads the head from the migration files),
# psycopg on SQLite, scikit-learn and skops
NOT_FOR_STATUS = (
    "flask",
    "pandas",
    "scipy",
    "numpy",
    "alembic",
    "psycopg",
    "sklearn",
    "skops",
    "httpx",
    "mako",
)


def test_rollout_status_on_the_database_imports_no_flask_pandas_scipy_or_alembic(sqlite_url: str) -> None:
    store = Store(Database(sqlite_url))
    versions = [
        store.pipelines.add(
            NewPipelineVersion(
                name="churn", version=v, kind="http", task="classification", input_schema=(Column("age", "float"),),
                upstream_url="http://127.0.0.1:9/", upstream_protocol="v2",
            )
        )
        for v in ("1", "2")
    ]  # fmt: skip
    deployment = store.deployments.create("churn", versions[0].id)
    rollout = store.rollouts.create(deployment_id=deployment.id, challenger_id=versions[1].id, mode="canary",
                                    policy=Policy().to_dict(), created_by="t", phase="progressing", canary_weight=5.0,
                                    shadow_rate=1.0)  # fmt: skip
    store.pairs.insert_many(
        [
            PairRecord(
                request_id=f"r{i}", row_index=0, deployment_id=deployment.id, rollout_id=rollout.id, step=0,
                received_at=datetime.now(UTC), routing_key_hash=i, served_arm="champion", champion_version_id=1,
                challenger_version_id=2, champion_latency_ms=10.0, challenger_latency_ms=20.0,
            )
            for i in range(3)
        ]
    )  # fmt: skip
    store.db.dispose()
    done = subprocess.run(
        [sys.executable, "-c", STATUS_PROBE, sqlite_url, *NOT_FOR_STATUS],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert "rollout 1: progressing, mode canary" in done.stdout and "3 requests" in done.stdout, done.stdout
    assert done.stdout.splitlines()[-1] == "LOADED []", done.stdout


GC_PROBE = """
import gc, sys
import controller.server
from controller.cli import main

# a router, without serving: it keeps Python's thresholds and exits the ordinary way
controller.server.run = lambda *a, **k: print("serve", gc.get_threshold()[0], flush=True)
main.cli.main(["--data-dir", sys.argv[1], "db", "upgrade"], prog_name="mlcanary", standalone_mode=False)
sys.argv = ["mlcanary", "--data-dir", sys.argv[1], "router", "--port", "8765"]
try:
    main.main()
except SystemExit:
    print("router exited through SystemExit", flush=True)


class Command:  # what any other command runs with
    def main(self, *args, **kwargs):
        print("command", gc.get_threshold()[0])
        return 3


main.cli = Command()
main.main()
print("not reached: a short command ends the process")
"""


def test_commands_collect_cycles_less_often_and_servers_keep_pythons_own_collection(tmp_path: Path) -> None:
    # a short command's CPU goes into imports, not into walking objects that live until exit; a
    # long-running process keeps Python's own garbage collection and its ordinary exit
    done = subprocess.run([sys.executable, "-c", GC_PROBE, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.stdout.splitlines()[-3:] == [
        "serve 700",
        "router exited through SystemExit",
        "command 50000",
    ], done.stdout + done.stderr
    assert done.returncode == 3  # the command's status, output flushed before the process ended


ATEXIT_PROBE = """
import atexit, sys
from pathlib import Path
from controller.cli.main import main

marker = Path(sys.argv[1])
atexit.register(lambda: marker.write_text("ran"))
sys.argv = ["mlcanary", *sys.argv[2:]]
main()
"""


def test_a_short_command_ends_with_its_output_status_and_atexit_handlers(tmp_path: Path) -> None:
    marker = tmp_path / "atexit"
    ok = subprocess.run([sys.executable, "-c", ATEXIT_PROBE, str(marker), "--data-dir", str(tmp_path / "var"),
                         "db", "upgrade"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert marker.read_text() == "ran"
    listed = subprocess.run(
        [sys.executable, "-m", "controller", "--data-dir", str(tmp_path / "var"), "pipelines", "list"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert (listed.returncode, listed.stdout) == (0, "no pipeline versions registered\n"), listed.stderr
    assert not (tmp_path / "var" / "mlcanary.db-wal").exists()  # closed: SQLite folded its log into the file
    refused = subprocess.run(
        [sys.executable, "-m", "controller", "--data-dir", str(tmp_path / "var"), "rollout", "status", "nope"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 1 and "nope" in refused.stderr, refused.stderr


def test_commands_run_in_process_keep_no_database_open_once_finished(runner: Any, store: Store) -> None:
    # end_process closes the databases a command opened; it must not keep them alive meanwhile, or a
    # process that runs commands in-process (a test session, a notebook) holds every command's pool
    before = {id(o) for o in gc.get_objects() if isinstance(o, Database)}
    for _ in range(5):
        result = runner("deployments", "list")
        assert result.exit_code == 0, result.output
    gc.collect()
    left = [o for o in gc.get_objects() if isinstance(o, Database) and id(o) not in before]
    assert left == [], f"{len(left)} databases of finished commands still alive"


THREADS_PROBE = """
import os, sys
from controller.cli.common import single_threaded_libraries
single_threaded_libraries(sys.argv[1:], os.environ)
import numpy, threadpoolctl
print(sorted({p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"}))
"""


def test_short_commands_ask_the_libraries_for_one_thread_and_servers_keep_their_default() -> None:
    env: dict[str, str] = {}
    assert single_threaded_libraries(["pipelines", "register", "churn", "1", "--golden", "g.csv"], env)
    assert env == {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for argv in (
        ["serve"],
        ["--data-dir", "var", "serve", "--workers", "2"],
        ["router"],
        ["controller"],
        ["demo"],
    ):
        untouched: dict[str, str] = {}
        assert not single_threaded_libraries(argv, untouched) and untouched == {}
    chosen = {"OMP_NUM_THREADS": "4"}
    single_threaded_libraries(["rollout", "status", "churn"], chosen)
    assert chosen["OMP_NUM_THREADS"] == "4"  # the user's own setting wins
    # and NumPy's BLAS honours it when it is set before NumPy loads (as main() does)
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    run = [sys.executable, "-c", THREADS_PROBE]
    short = subprocess.run([*run, "pipelines", "list"], env=clean, capture_output=True, text=True, check=True)
    assert short.stdout.strip() == "[1]", short.stdout + short.stderr
