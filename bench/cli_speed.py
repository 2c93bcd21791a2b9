"""How long the `mlcanary` command line takes to answer (issue 19: a fast CLI).

    .venv/bin/python bench/cli_speed.py            # --runs 7; writes bench/results/cli_speed.md (--out)

Times whole processes (`.venv/bin/mlcanary ...`), median of N runs, wall clock and CPU (user + sys of
the child), next to `python -c pass` measured in the same run (the interpreter's own floor): on these
shared 2-core machines the wall clock drifts with the neighbours' load, the CPU time much less.
Everything runs in a temporary folder: a fresh SQLite database, the README's two churn pipelines, a
real `mlcanary serve` on a loopback port for the commands that go through the admin API (`--api`).
`rollout status` shows a deployment with an active shadow rollout (churn:1 against churn:0), so the
status document holds a rollout, its policy and live figures, as it does in use.

Goals: --help / --version < 0.3 s, rollout status < 0.6 s, register of the README's pipeline < 2 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MLCANARY = str(Path(sys.executable).parent / "mlcanary")

MAKE_PIPELINES = """
import numpy as np, pandas as pd, skops.io as sio
from sklearn.base import clone
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
rng = np.random.default_rng(0)
X = pd.DataFrame({"age": rng.integers(18, 80, 3000).astype(float),
                  "plan": rng.choice(["basic", "plus", "pro"], 3000)})
y = (((X.age < 35) | (X.plan == "basic")) ^ (rng.random(3000) < 0.1)).astype(int).rename("churned")
prepare = make_column_transformer((StandardScaler(), ["age"]), (OneHotEncoder(handle_unknown="ignore"), ["plan"]))
sio.dump(make_pipeline(clone(prepare), LogisticRegression()).fit(X[:2000], y[:2000]), "churn-1.skops")
X[2000:].assign(churned=y[2000:]).to_csv("holdout.csv", index=False)
X[2000:2100].to_csv("golden.csv", index=False)
"""


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run a command once; return (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli_speed.md")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mlcanary-cli-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLCANARY_")}
    env["MLCANARY_DATA_DIR"] = str(folder / "var")
    server = None
    try:
        subprocess.run([sys.executable, "-c", MAKE_PIPELINES], cwd=folder, check=True)
        subprocess.run([MLCANARY, "db", "upgrade"], cwd=folder, env=env, check=True, capture_output=True)
        token = subprocess.run(
            [MLCANARY, "tokens", "create", "bench", "--role", "operator"],
            cwd=folder, env=env, check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        register = [
            "pipelines", "register", "churn", "{n}", "--artifact", "churn-1.skops", "--task", "classification",
            "--holdout", "holdout.csv", "--target", "churned", "--golden", "golden.csv",
        ]  # fmt: skip
        subprocess.run([MLCANARY, *[a.format(n=0) for a in register]], cwd=folder, env=env, check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run([MLCANARY, "deployments", "create", "churn", "--champion", "churn:0"], cwd=folder, env=env,
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run([MLCANARY, *[a.format(n=1) for a in register]], cwd=folder, env=env, check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run([MLCANARY, "rollout", "start", "churn", "--challenger", "churn:1", "--mode", "shadow"],
                       cwd=folder, env=env, check=True, capture_output=True)  # fmt: skip
        port = free_port()
        server = subprocess.Popen(
            [MLCANARY, "--data-dir", str(folder / "var"), "serve", "--port", str(port), "--workers", "1"],
            cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=(folder / "serve.log").open("wb"),
        )  # fmt: skip
        api = ["--api", f"http://127.0.0.1:{port}", "--token", token]
        deadline = time.monotonic() + 600  # a loaded shared machine can take minutes to boot the workers
        while (probe := subprocess.run([MLCANARY, *api, "rollout", "status", "churn"], env=env, cwd=folder,
                                       capture_output=True, text=True)).returncode != 0:  # fmt: skip
            if time.monotonic() > deadline or server.poll() is not None:
                log = (folder / "serve.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"the server did not start: {probe.stderr.strip()}\n{log}")
            time.sleep(0.5)
        counter = iter(range(2, 10_000))
        cases: list[tuple[str, object, float | None]] = [
            ("python -c pass", lambda: [sys.executable, "-c", "pass"], None),
            ("mlcanary --help", lambda: [MLCANARY, "--help"], 0.3),
            ("mlcanary --version", lambda: [MLCANARY, "--version"], 0.3),
            ("rollout status (--api)", lambda: [MLCANARY, *api, "rollout", "status", "churn"], 0.6),
            ("rollout status (database)", lambda: [MLCANARY, "rollout", "status", "churn"], 0.6),
            ("pipelines register (database)",
             lambda: [MLCANARY, *[a.format(n=next(counter)) for a in register]], 2.0),
            ("pipelines register (--api)",
             lambda: [MLCANARY, *api, *[a.format(n=next(counter)) for a in register]], 2.0),
        ]  # fmt: skip
        lines = [
            f"{args.runs} runs each, median; CPU = user + sys of the process; "
            f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            f"{'command':32} {'wall s':>8} {'CPU s':>8} {'goal s':>7}",
        ]
        print(*lines, sep="\n", flush=True)
        for name, build, goal in cases:
            walls, cpus = [], []
            for _ in range(args.runs):
                wall, cpu = timed(build(), folder, env)  # type: ignore[operator]
                walls.append(wall)
                cpus.append(cpu)
            shown = f"{goal:7.1f}" if goal else f"{'':7}"
            lines.append(f"{name:32} {statistics.median(walls):8.3f} {statistics.median(cpus):8.3f} {shown}")
            print(lines[-1], flush=True)
        lines.append(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(lines[-1])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "# CLI speed (bench/cli_speed.py)\n\n"
            f"`.venv/bin/python bench/cli_speed.py --runs {args.runs}`\n\n```\n"
            + "\n".join(lines)
            + "\n```\n"
        )
        print(f"wrote {args.out}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
