"""Mutation testing of the pure core: run mutmut, then write the tally and every survivor.

    .venv/bin/python bench/mutation.py            # what `make mutation` runs (~15-60 min on 2 cores)

mutmut mutates the files of ``[tool.mutmut] only_mutate`` in pyproject.toml (the sticky split and
controller/core: statistics, judge, policy, state machine, reproducibility) and runs the fast tests of
behaviour that cover each mutated function. Writes bench/results/mutation.md: per module the mutants
killed, survived, timed out and not covered, and the list of survivors to kill or explain.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = [sys.executable, "-m", "mutmut"]
KILLED = {"killed", "timeout", "segfault"}  # a mutant that crashes or hangs the tests is caught too


def main() -> int:
    began = time.monotonic()
    run = subprocess.run(
        [*MUTMUT, "run"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    took = time.monotonic() - began
    if run.returncode not in (0, 1):
        sys.stderr.write(run.stderr[-3000:])
        return run.returncode
    listing = subprocess.run(
        [*MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    tally: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    survivors: list[str] = []
    for line in listing.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if not name:
            continue
        module = name.split(".x_", 1)[0].split(".x\u01c1", 1)[0]
        tally[module][status] += 1
        if status in ("survived", "no tests"):
            survivors.append(f"{name}: {status}")
    lines = [
        "# Mutation testing of the pure core",
        "",
        f"Command: `.venv/bin/python bench/mutation.py` (`make mutation`), {took / 60:.1f} min.",
        "Killed counts timeouts as killed; 'no tests' means no selected test calls the mutated function.",
        "",
        "| module | mutants | killed | survived | no tests | killed share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    total = collections.Counter[str]()
    for module, counts in sorted(tally.items()):
        total.update(counts)
        n = sum(counts.values())
        killed = sum(counts[s] for s in KILLED)
        lines.append(
            f"| {module} | {n} | {killed} | {counts['survived']} | {counts['no tests']} | {killed / n:.1%} |"
        )
    n = sum(total.values())
    killed = sum(total[s] for s in KILLED)
    lines.append(
        f"| **all** | {n} | {killed} | {total['survived']} | {total['no tests']} | {killed / max(n, 1):.1%} |"
    )
    lines += ["", "## Survivors", "", "Inspect one with `.venv/bin/mutmut show NAME`.", ""]
    lines += [f"- `{s}`" for s in survivors] or ["none"]
    out = ROOT / "bench" / "results" / "mutation.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: 8 + len(tally) + 1]))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
