"""What the quality gates (issue 15) add to one controller look: measure + judge with and without them.

    .venv/bin/python bench/quality_look.py [--rows 100000] [--pg postgresql://postgres@127.0.0.1:5432/test]

Same steps as bench/controller_look.py (classification shadow step, 70% labelled, no scores), then
measure + judge timed 5 times (median) with the default policy (balanced accuracy, macro-F1,
per-class recall/precision, log loss, Brier) and with the quality aggregates replaced by nothing,
in the same run. Prints one line per database and writes bench/results/quality_look.md (``--out``).
The scratch databases come from bench/controller_look.py's `filled_step`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from controller_look import T0, filled_step, load_average  # noqa: E402

import controller.loop.measure as measure_module  # noqa: E402
from controller.core import metrics as quality  # noqa: E402
from controller.core.judge import judge  # noqa: E402
from controller.core.policy import Policy  # noqa: E402
from storage import Store  # noqa: E402


def time_look(store: Store, rollout: object, policy: Policy) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        m = measure_module.measure(
            store,
            rollout,
            task="classification",
            policy=policy,
            now=T0 + timedelta(hours=1),
            classes=(0, 1),  # type: ignore[arg-type]
        )
        judge(
            m.metrics,
            policy.to_judge_policy("classification", "shadow", final=m.final, classes=("0", "1")),
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality_look.md")
    args = parser.parse_args()
    policy = Policy.parse({"mode": "shadow"})
    real = measure_module.measure_quality
    before = load_average()
    rows: list[str] = []
    for dialect in ("sqlite", "postgresql"):
        with filled_step(dialect, args.rows, args.pg) as (store, rollout, _):
            measure_module.measure_quality = real
            with_quality = time_look(store, rollout, policy)
            measure_module.measure_quality = lambda *a, **k: quality.QualityStats()  # type: ignore[assignment]
            without = time_look(store, rollout, policy)
            measure_module.measure_quality = real
        print(
            f"{dialect} {args.rows} pairs: look {with_quality * 1000:.0f} ms with the quality gates, "
            f"{without * 1000:.0f} ms without (x{with_quality / without:.2f})",
            flush=True,
        )
        rows.append(
            f"| {dialect} | {with_quality * 1000:,.0f} | {without * 1000:,.0f} | {with_quality / without:.2f} |"
        )
    lines = [
        "## Quality gates in one controller look",
        "",
        f"Command: `.venv/bin/python bench/quality_look.py --rows {args.rows}`",
        "",
        f"A shadow step of {args.rows:,} pairs (70% labelled), measure + judge, median of 5 looks, with the",
        "default policy's quality gates and with the quality aggregates replaced by nothing, in the same run.",
        f"Load average (1, 5, 15 min) before / after: {before} / {load_average()} (2 cores).",
        "",
        "| database | with quality gates (ms) | without (ms) | ratio |",
        "|---|---:|---:|---:|",
        *rows,
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
