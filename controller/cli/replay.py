"""`mlcanary replay`: score stored raw inputs (or a CSV/Parquet file) through registered versions offline.

    mlcanary replay --version churn:2 --deployment churn --since 2026-11-28T00:00:00Z --output replay.csv
    mlcanary replay --version churn:2 --against churn:1 --file yesterday.parquet --output replay.csv

Rows are decoded exactly as the router decodes them (``router.inputs.build_batch`` against each
version's registered schema; columns a version does not take are dropped, as a file may carry the
label) and scored with the router's backend classes. A batch that fails is scored again row by row, so
one bad row costs only itself. With ``--deployment`` and no ``--against`` the deployment's current
champion is the comparison. The output CSV has one line per input row: its source, both versions'
outputs and scores, whether they agree, the absolute difference of their scores (classification) or
values (regression), and any error; the summary gives rows, agreement, mean |diff| and errors.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import pandas as pd

from controller.cli.common import echo_json, refuse_api, settings_of, store_of
from controller.encoding import finite
from router.backends import Backend, Predictions, create_backend
from router.errors import RouterError
from router.inputs import build_batch
from router.settings import RouterSettings
from storage import Store
from storage import repro_queries as queries
from storage.entities import PipelineVersion

FIELDS = (
    "source", "row_index", "version_output", "version_score", "against_output", "against_score",
    "agree", "abs_diff", "version_error", "against_error",
)  # fmt: skip


@dataclass(frozen=True)
class SourceRow:
    """One raw input row and where it came from (a request id or a file line)."""

    source: str
    row_index: int
    values: Mapping[str, Any]


@dataclass
class ReplaySummary:
    """What a replay found: rows, agreement between the two versions, score differences, errors."""

    version: str
    against: str | None
    rows: int = 0
    compared: int = 0
    agreed: int = 0
    diff_count: int = 0
    diff_sum: float = 0.0
    diff_max: float = 0.0
    errors: dict[str, int] = field(default_factory=lambda: {"version": 0, "against": 0})

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    @property
    def mean_abs_diff(self) -> float | None:
        return self.diff_sum / self.diff_count if self.diff_count else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "against": self.against,
            "rows": self.rows,
            "compared": self.compared,
            "agreement": self.agreement,
            "mean_abs_diff": self.mean_abs_diff,
            "max_abs_diff": self.diff_max if self.diff_count else None,
            "errors": dict(self.errors),
        }


def score_rows(
    version: PipelineVersion, backend: Backend, rows: Sequence[SourceRow], *, max_rows: int
) -> list[tuple[Any, float | None, str | None]]:
    """Score rows through the serving path: (output, score or value, error) per row, errors isolated per row."""
    try:
        return _score(version, backend, rows, max_rows=max_rows)
    except RouterError:
        if len(rows) == 1:
            raise
    out: list[tuple[Any, float | None, str | None]] = []
    for row in rows:
        try:
            out.extend(_score(version, backend, [row], max_rows=max_rows))
        except RouterError as exc:
            out.append(
                (None, None, f"{exc.code}: {exc.message}" if getattr(exc, "code", None) else exc.message)
            )
    return out


def _score(
    version: PipelineVersion, backend: Backend, rows: Sequence[SourceRow], *, max_rows: int
) -> list[tuple[Any, float | None, str | None]]:
    wanted = version.column_names
    columns = {
        name: [_value(r.values.get(name)) for r in rows]
        for name in wanted
        if any(name in r.values for r in rows)
    }
    batch = build_batch(columns, version.input_schema, max_rows=max(max_rows, len(rows)))
    predictions: Predictions = backend.predict(batch.frame)
    if version.task == "regression":
        return [(o, _float(o), None) for o in predictions.outputs]
    scores: list[Any] = (
        [None] * len(predictions.outputs) if predictions.scores is None else list(predictions.scores)
    )
    return [(o, _float(s), None) for o, s in zip(predictions.outputs, scores, strict=True)]


def replay(
    chunks: Iterator[Sequence[SourceRow]],
    version: PipelineVersion,
    against: PipelineVersion | None,
    output: Path,
    *,
    settings: RouterSettings,
    on_rows: Callable[[int], None] = lambda _n: None,
) -> ReplaySummary:
    """Score every chunk with both versions and write the paired comparison CSV; return the summary."""
    summary = ReplaySummary(version.ref, None if against is None else against.ref)
    primary = create_backend(version, settings)
    other = None if against is None else create_backend(against, settings)
    try:
        with output.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(FIELDS)
            for chunk in chunks:
                mine = score_rows(version, primary, chunk, max_rows=settings.max_rows)
                theirs = (
                    score_rows(against, other, chunk, max_rows=settings.max_rows)
                    if against is not None and other is not None
                    else [(None, None, None)] * len(chunk)
                )
                for row, (out_a, score_a, err_a), (out_b, score_b, err_b) in zip(
                    chunk, mine, theirs, strict=True
                ):
                    agree: bool | None = None
                    diff: float | None = None
                    if against is not None and err_a is None and err_b is None:
                        summary.compared += 1
                        agree = out_a == out_b if version.task == "classification" else None
                        if agree:
                            summary.agreed += 1
                        if score_a is not None and score_b is not None:
                            diff = abs(score_a - score_b)
                            summary.diff_count += 1
                            summary.diff_sum += diff
                            summary.diff_max = max(summary.diff_max, diff)
                    if version.task == "regression" and diff is not None:
                        agree = diff <= 1e-9 * max(abs(score_a or 0.0), 1.0)
                        summary.agreed += int(agree)
                    summary.errors["version"] += err_a is not None
                    summary.errors["against"] += err_b is not None
                    writer.writerow(
                        [
                            row.source,
                            row.row_index,
                            _cell(out_a),
                            _cell(score_a),
                            _cell(out_b),
                            _cell(score_b),
                            "" if agree is None else int(agree),
                            _cell(diff),
                            err_a or "",
                            err_b or "",
                        ]
                    )
                summary.rows += len(chunk)
                on_rows(len(chunk))
    finally:
        primary.close()
        if other is not None:
            other.close()
    return summary


def file_chunks(path: Path, *, batch_size: int) -> tuple[int, Iterator[Sequence[SourceRow]]]:
    """Read a CSV/Parquet/JSON file; return its row count and its rows in chunks."""
    from controller.registry import read_table

    frame = read_table(path)
    records = frame.to_dict("records")

    def chunks() -> Iterator[Sequence[SourceRow]]:
        for start in range(0, len(records), batch_size):
            yield [
                SourceRow(f"{path.name}:{start + i + 1}", 0, r)
                for i, r in enumerate(records[start : start + batch_size])
            ]

    return len(records), chunks()


def stored_chunks(
    store: Store, deployment_id: int, *, since: datetime | None, limit: int, batch_size: int
) -> tuple[int, Iterator[Sequence[SourceRow]]]:
    """Page through a deployment's stored raw inputs (oldest first, at most ``limit`` rows)."""
    total = min(queries.raw_input_count(store.db, deployment_id, since=since), limit)

    def chunks() -> Iterator[Sequence[SourceRow]]:
        after, left = 0, total
        while left > 0:
            page = queries.raw_input_page(
                store.db, deployment_id, after_id=after, since=since, limit=min(batch_size, left)
            )
            if not page:
                return
            after, left = page[-1].id, left - len(page)
            yield [SourceRow(p.request_id, p.row_index, p.raw_input) for p in page]

    return total, chunks()


def parse_since(text: str | None) -> datetime | None:
    """Parse an ISO 8601 time; a time without zone is UTC."""
    if text is None:
        return None
    from datetime import UTC

    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"--since must be an ISO 8601 time, got {text!r}") from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@click.command("replay")
@click.option("--version", "version_ref", required=True, help="Version to score, NAME:VERSION.")
@click.option(
    "--against", "against_ref", help="Version to compare with (default: the deployment's champion)."
)
@click.option("--deployment", help="Replay this deployment's stored raw inputs.")
@click.option("--since", help="Only requests received at or after this ISO time (with --deployment).")
@click.option(
    "--limit",
    default=100_000,
    show_default=True,
    type=click.IntRange(1, 10_000_000),
    help="Most rows replayed (with --deployment).",
)
@click.option(
    "--file", "file_path", type=click.Path(path_type=Path), help="CSV, Parquet or JSON file of raw inputs."
)
@click.option(
    "--output", required=True, type=click.Path(path_type=Path), help="CSV of the paired comparison."
)
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def replay_command(
    ctx: click.Context,
    version_ref: str,
    against_ref: str | None,
    deployment: str | None,
    since: str | None,
    limit: int,
    file_path: Path | None,
    output: Path,
    batch_size: int,
    as_json: bool,
) -> None:
    """Score stored raw inputs or a file through a registered version offline and compare with another."""
    refuse_api(
        ctx,
        "it loads the pipelines and scores them in this process, reading their artifact files and the "
        "stored raw inputs directly (minutes of CPU that do not belong on a serving host)",
    )
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from controller.app import router_settings

    if bool(deployment) == bool(file_path):
        raise click.UsageError("give exactly one of --deployment NAME or --file FILE")
    if since is not None and deployment is None:
        raise click.UsageError("--since only applies to --deployment")
    store = store_of(ctx)
    settings = router_settings(settings_of(ctx))
    version = store.pipelines.get_by_ref(version_ref)
    against = store.pipelines.get_by_ref(against_ref) if against_ref else None
    if deployment is not None:
        target = store.deployments.get(deployment)
        if against is None and target.champion_id != version.id:
            against = store.pipelines.get(target.champion_id)
        total, chunks = stored_chunks(
            store, target.id, since=parse_since(since), limit=limit, batch_size=batch_size
        )
    else:
        assert file_path is not None
        total, chunks = file_chunks(file_path, batch_size=batch_size)
    if against is not None and against.task != version.task:
        raise click.UsageError(f"{version.ref} is a {version.task}, {against.ref} a {against.task}")
    console = Console(stderr=True)
    columns = (
        TextColumn("replay {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(version.ref, total=total)
        summary = replay(
            chunks, version, against, output, settings=settings, on_rows=lambda n: progress.advance(task, n)
        )
    if as_json:
        echo_json(summary.to_dict())
        return
    agreement = "n/a" if summary.agreement is None else f"{summary.agreement:.2%}"
    diff = "n/a" if summary.mean_abs_diff is None else f"{summary.mean_abs_diff:.4g}"
    click.echo(
        f"replayed {summary.rows} rows through {version.ref}"
        + (f" against {against.ref}" if against is not None else "")
        + f": agreement {agreement}, mean |diff| {diff}, errors {summary.errors['version']}"
        + (f" / {summary.errors['against']}" if against is not None else "")
        + f"; wrote {output}"
    )


def _value(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return _value(value.item())
    return value


_float = finite  # controller.encoding's one definition of a JSON-able number


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value
