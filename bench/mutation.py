"""Mutation testing of the pure core: run mutmut module by module, then write the tally and every survivor.

    .venv/bin/python bench/mutation.py                          # what `make mutation` runs: all five modules
    .venv/bin/python bench/mutation.py --modules split,machine  # some of them (results of others are kept)
    .venv/bin/python bench/mutation.py --modules stats,judge --sample stats=12,judge=10  # a systematic sample

mutmut mutates the files of ``[tool.mutmut] only_mutate`` in pyproject.toml (the sticky split, the judge,
the state machine, policy validation, the statistics) and runs the fast unit tests that call each mutated
function. Modules run one after the other, smallest first, and bench/results/mutation.md is rewritten
after each, so a partial run leaves its results: per module the mutants killed, survived, timed out and
not covered, and the list of survivors. A survivor that no test can kill (an equivalent mutant) is
explained in bench/results/mutation_equivalent.md, kept by hand (``- `NAME`, `NAME`: why`` lines); this
script reads it, counts those as explained and never writes it. ``--report-only`` rewrites
mutation.md from mutmut's stored results without running anything (after an interrupted run, or
after explaining survivors).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = [sys.executable, "-m", "mutmut"]
KILLED = {"killed", "timeout", "segfault"}  # a mutant that crashes or hangs the tests is caught too
MODULES = {
    "split": "router.split",
    "machine": "controller.core.machine",
    "policy": "controller.core.policy",
    "stats": "controller.core.stats",
    "judge": "controller.core.judge",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--modules", default=",".join(MODULES), help="comma-separated, of: " + ", ".join(MODULES)
    )
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--report-only", action="store_true", help="rewrite the results file, run nothing")
    parser.add_argument(
        "--sample",
        default="1",
        help="test every Nth mutant of each module (in mutmut's order) instead of all; 1: all; "
        "per module: stats=12,judge=10",
    )
    args = parser.parse_args()
    chosen = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(MODULES))
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    try:
        every = sample_sizes(args.sample, chosen)
    except ValueError as exc:
        parser.error(f"--sample: {exc}")
    sampled = {MODULES[m]: every[m] for m in chosen if every[m] > 1}
    if args.report_only:  # a sampled module counts its sample only
        write_results({}, args.max_children, sampled)
        return 0
    minutes: dict[str, float] = {}
    for name in chosen:
        began = time.monotonic()
        module = MODULES[name]
        targets = [module + ".*"] if every[name] == 1 else undecided(sample(module, every[name]))
        if targets:  # else every sampled mutant has a result already (re-run survivors by name)
            run = subprocess.run(
                [*MUTMUT, "run", "--max-children", str(args.max_children), *targets],
                cwd=ROOT,
                stderr=subprocess.PIPE,
                text=True,
            )
            minutes[module] = (time.monotonic() - began) / 60
            if run.returncode not in (0, 1):
                sys.stderr.write(run.stderr[-3000:])
                return run.returncode
        write_results(minutes, args.max_children, sampled)
    return 0


def sample_sizes(text: str, chosen: list[str]) -> dict[str, int]:
    """Parse ``--sample``: one N for every module, or ``name=N`` pairs (modules not named: all)."""
    if "=" not in text:
        sizes = dict.fromkeys(chosen, int(text))
    else:
        sizes = dict.fromkeys(chosen, 1)
        for pair in text.split(","):
            name, _, n = pair.partition("=")
            if name.strip() not in chosen:
                raise ValueError(f"{name.strip()!r} is not among --modules")
            sizes[name.strip()] = int(n)
    if min(sizes.values(), default=1) < 1:
        raise ValueError("must be at least 1")
    return sizes


def sample(module: str, every: int, listing: str | None = None) -> list[str]:
    """Every ``every``-th mutant name of a module (a systematic sample, the same on every run)."""
    if listing is None:
        listing = subprocess.run(
            [*MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    names = [line.strip().rpartition(": ")[0] for line in listing.splitlines()]
    return [n for n in names if n.startswith(module + ".")][::every]


def undecided(names: list[str]) -> list[str]:
    """The names without a result yet (or without tests then): mutmut re-runs any mutant it is given.

    Tests are only ever added between runs, so a killed mutant stays killed; survivors are re-run by
    name (``mutmut run NAME...``) after tests are written against them.
    """
    listing = subprocess.run(
        [*MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    status = dict(line.strip().rpartition(": ")[::2] for line in listing.splitlines())
    return [n for n in names if status.get(n, "not checked") in ("not checked", "no tests")]


def write_results(minutes: dict[str, float], max_children: int, sampled: dict[str, int]) -> None:
    """Rewrite bench/results/mutation.md from mutmut's stored results (every module run so far)."""
    listing = subprocess.run(
        [*MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    explained = equivalent_mutants()
    in_sample = {module: set(sample(module, every, listing)) for module, every in sampled.items()}
    tally: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    survivors: list[str] = []
    for line in listing.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if not name or status == "not checked":  # a module not run yet
            continue
        module = name.split(".x_", 1)[0].split(".x\u01c1", 1)[0]
        if module in in_sample and name not in in_sample[module]:
            continue  # run before, outside this run's sample: counting it would bias the share
        tally[module][status] += 1
        if status in ("survived", "no tests"):
            if name in explained:
                tally[module]["equivalent"] += 1
                survivors.append(f"{name}: {status}, equivalent (see mutation_equivalent.md)")
            else:
                survivors.append(f"{name}: {status}")
    lines = [
        "# Mutation testing of the pure core",
        "",
        "Command: `nice .venv/bin/python bench/mutation.py` (`make mutation`; `--modules` for some),",
        f"`--max-children {max_children}`; load average at the end {_loadavg()}.",
        "Killed counts timeouts as killed; 'no tests' means no selected test calls the mutated function;",
        "'equivalent': survivors explained in bench/results/mutation_equivalent.md (included in 'survived').",
        "Minutes: wall-clock time of this run's `mutmut run` for the module (blank: an earlier run).",
        "Only mutants that were run are counted: a module run with `--sample N` counts every Nth mutant",
        "(in mutmut's listing order) and nothing else, even mutants an earlier run tested.",
        *[f"Sampled {module}: 1 mutant in {every}." for module, every in sampled.items()],
        "",
        "| module | mutants | killed | survived | equivalent | no tests | killed share | killed or equivalent | minutes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total = collections.Counter[str]()
    for module, counts in [*sorted(tally.items()), ("**all**", total)]:
        if module != "**all**":
            total.update(counts)
        n = max(sum(counts.values()) - counts["equivalent"], 1)
        killed = sum(counts[s] for s in KILLED)
        took = f"{minutes[module]:.1f}" if module in minutes else ""
        lines.append(
            f"| {module} | {n} | {killed} | {counts['survived']} | {counts['equivalent']} | {counts['no tests']} "
            f"| {killed / n:.1%} | {(killed + counts['equivalent']) / n:.1%} | {took} |"
        )
    lines += ["", "## Survivors", "", "Inspect one with `.venv/bin/mutmut show NAME`.", ""]
    lines += [f"- `{s}`" for s in survivors] or ["none"]
    out = ROOT / "bench" / "results" / "mutation.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: 8 + len(tally) + 1]))
    print(f"wrote {out.relative_to(ROOT)}", flush=True)


def equivalent_mutants() -> set[str]:
    """The mutant names explained by hand in bench/results/mutation_equivalent.md."""
    path = ROOT / "bench" / "results" / "mutation_equivalent.md"
    if not path.exists():
        return set()
    names = re.findall(r"`([^`\s]+__mutmut_\d+)`", path.read_text())
    return set(names)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
