"""Run a benchmark command that only prints, and write what it printed to its own results file.

    .venv/bin/python bench/record.py bench/results/storage.md -- .venv/bin/python bench/storage_bench.py

The file gets the exact command, the commit (with "+ changes" when the worktree differs from it), the
UTC time and the load average before and after, then the command's output as printed (the benchmarks
print Markdown). Output is also shown as it comes. The file is written only when the command exits 0,
so a failed or interrupted run never replaces the results of a good one. Scripts that write their own
results file (``--out``) need no wrapper.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: bench/record.py RESULTS_FILE -- COMMAND [ARGS...]\n")
        return 2
    out, command = Path(argv[0]), argv[2:]
    if out.suffix != ".md":
        sys.stderr.write(f"error: the results file must be Markdown (.md), not {out}\n")
        return 2
    began, before = datetime.now(UTC), load_average()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    printed: list[str] = []
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        printed.append(line)
    code = process.wait()
    if code != 0:
        sys.stderr.write(f"error: the command exited {code}; {out} left as it was\n")
        return code
    header = [
        f"Command: `{shlex.join(command)}` (recorded by `bench/record.py {out} -- ...`)",
        "",
        f"Commit {commit()}, started {began:%Y-%m-%d %H:%M} UTC, took "
        f"{(datetime.now(UTC) - began).total_seconds():.0f} s; load average (1, 5, 15 min) before / after: "
        f"{before} / {load_average()} (2 cores).",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header) + "".join(printed))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
