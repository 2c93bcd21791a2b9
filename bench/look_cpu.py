"""CPU of the controller process per look at one active shadow rollout, SQLite and PostgreSQL.

    .venv/bin/python bench/look_cpu.py [--rows 5000 100000] [--looks 10] [--profile]

Each size: a shadow step with that many pairs (bench/controller_look.py's ``filled_step``:
classification, 3% / 5% errors, 70% labelled), then ``controller.loop.assess.assess`` — what one
look of ``mlcanary serve``'s controller computes — run ``--looks`` times. Prints the controller
process's CPU seconds per look (``time.process_time``: on SQLite the queries run inside the process,
on PostgreSQL in the server) and the wall time, median of the looks. ``--profile``: the top of a
cProfile of the looks (cumulative). ``--loop-seconds S``: then the controller's loop itself
(``controller.loop.control.run``, ``--interval``) for S s with each ``--busy-shares`` value, printing
the share of a core the controller process used and the passes made. Figures only; nothing is written.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from controller_look import T0, filled_step, load_average  # noqa: E402

from controller.config import Settings  # noqa: E402
from controller.loop import control  # noqa: E402
from controller.loop.assess import assess  # noqa: E402
from storage import ConcurrentUpdate  # noqa: E402


def loop_share(store: object, seconds: float, interval: float, busy_share: float) -> tuple[float, int]:
    """Run the controller loop for ``seconds``; return (process CPU s per wall s, passes made).

    Decisions are not applied (as if another controller had changed the rollout meanwhile), so the
    rollout stays active and every pass looks at it, as at saturation where the step keeps growing.
    """

    def not_applied(*_: object, **__: object) -> None:
        raise ConcurrentUpdate("bench: decisions are not applied")

    control.apply_decision = not_applied  # type: ignore[assignment]
    event = threading.Event()
    settings = Settings(controller_interval=interval, controller_busy_share=busy_share)
    passes: list[int] = []
    c0, w0 = time.process_time(), time.perf_counter()
    worker = threading.Thread(
        target=lambda: passes.append(
            control.run(store, settings, stop=event, clock=lambda: T0 + timedelta(hours=1))  # type: ignore[arg-type]
        )
    )
    worker.start()
    event.wait(seconds)
    event.set()
    worker.join()
    return (time.process_time() - c0) / (time.perf_counter() - w0), passes[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[5_000, 100_000])
    parser.add_argument("--looks", type=int, default=10)
    parser.add_argument("--dialects", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--loop-seconds", type=float, default=0.0)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--busy-shares", type=float, nargs="+", default=[1.0, 0.25])
    args = parser.parse_args()
    print(f"load average before: {load_average()}", flush=True)
    for rows in args.rows:
        for dialect in args.dialects:
            with filled_step(dialect, rows, args.pg) as (store, rollout, _):
                now = T0 + timedelta(hours=1)
                assess(store, rollout, now=now)  # warm: imports, connection pool, statement caches
                cpu, wall = [], []
                profiler = cProfile.Profile() if args.profile else None
                for _ in range(args.looks):
                    c0, w0 = time.process_time(), time.perf_counter()
                    if profiler is not None:
                        profiler.enable()
                    assess(store, rollout, now=now)
                    if profiler is not None:
                        profiler.disable()
                    cpu.append(time.process_time() - c0)
                    wall.append(time.perf_counter() - w0)
                for share in args.busy_shares if args.loop_seconds > 0 else []:
                    used, passes = loop_share(store, args.loop_seconds, args.interval, share)
                    print(
                        f"{dialect} {rows:,} pairs: loop every {args.interval:g} s, busy share {share:g}: "
                        f"{passes} passes in {args.loop_seconds:g} s, controller CPU {used:.0%} of a core "
                        f"(load {load_average()})",
                        flush=True,
                    )
            print(
                f"{dialect} {rows:,} pairs: CPU {statistics.median(cpu) * 1000:.0f} ms / look, "
                f"wall {statistics.median(wall) * 1000:.0f} ms (median of {args.looks}; "
                f"load {load_average()})",
                flush=True,
            )
            if profiler is not None:
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)


if __name__ == "__main__":
    main()
