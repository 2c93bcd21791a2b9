"""One answered request on its way to storage: both arms' results, settled exactly once each."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from router.backends import Predictions
from router.inputs import frame_of
from storage.entities import ERROR, OK, SKIPPED, PairRecord, PipelineVersion, RoutingEntry


@dataclass
class ArmResult:
    """What one arm did for a request: its predictions or its error, and how long it took.

    ``latency_ms`` is the arm's own scoring time (from the moment its call started); a shadow job's
    time in the router's queue is ``wait_ms``, kept apart. A skipped shadow job (``skip_reason``
    set: it never started scoring) has neither predictions nor error nor latency: it is coverage
    lost, never the arm's fault.
    """

    version: PipelineVersion
    predictions: Predictions | None = None
    latency_ms: float | None = None
    error: str | None = None
    exception: Exception | None = field(default=None, repr=False, compare=False)
    skip_reason: str | None = None
    wait_ms: float | None = None

    @property
    def status(self) -> str:
        """ "skipped", "error" or "ok": the one definition of what happened to the arm."""
        if self.skip_reason is not None:
            return SKIPPED
        return ERROR if self.error is not None or self.predictions is None else OK


@dataclass
class Exchange:
    """A request the router answered, kept until its shadow result (if any) is in.

    `settle_shadow` is called once by whoever finishes the shadow arm first — the shadow worker,
    the timeout watchdog, a dropped submission or shutdown; later calls are ignored, so exactly one
    record per request row reaches the recorder.

    `columns`, when given, are the converted arrays `frame` was built from; the shadow pool and
    `to_records` use them instead of the frame (much cheaper than pandas row access). `frame` may be
    None when `columns` are given (`table()` builds it on demand; `rows` counts the rows).

    `batch_frame` / `batch_offset`: when the answering arm scored this request in a batch with
    others (router.batcher), the batch's frame and this request's first row in it; the shadow pool
    scores the same frame when the whole batch is shadowed together.
    """

    request_id: str
    received_at: datetime
    entry: RoutingEntry
    key_hash: int
    served_arm: str
    frame: pd.DataFrame | None
    champion: ArmResult | None = None
    challenger: ArmResult | None = None
    columns: Mapping[str, Any] | None = field(default=None, repr=False)  # the frame's arrays (Batch.columns)
    rows: int = 0  # rows of the request (from frame when it is given)
    batch_frame: pd.DataFrame | None = field(default=None, repr=False)
    batch_offset: int = 0
    _settled: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.frame is not None:
            self.rows = len(self.frame)
        elif not self.columns:
            raise ValueError("an Exchange needs its frame or its columns")
        else:
            self.rows = len(next(iter(self.columns.values())))

    def table(self) -> pd.DataFrame:
        """Return the request's own frame (built from its columns if it was not given)."""
        if self.frame is None:
            assert self.columns is not None
            self.frame = frame_of(self.columns)
        return self.frame

    def settle_shadow(self, arm: str, result: ArmResult) -> bool:
        """Set the shadow arm's result if nobody did yet; return whether this call did it."""
        with self._lock:
            if self._settled:
                return False
            self._settled = True
        if arm == "champion":
            self.champion = result
        else:
            self.challenger = result
        return True

    def to_records(self) -> list[PairRecord]:
        """Return one PairRecord per row of the request (row_index 0..k-1)."""
        entry = self.entry
        champion, challenger = self.champion, self.challenger
        rows = self.rows
        raw = self._raw_rows(rows) if entry.store_raw_inputs else None
        c_out = _columns(champion, rows)
        h_out = _columns(challenger, rows)
        shadow = champion if self.served_arm == "challenger" else challenger
        skip = None if shadow is None else shadow.skip_reason
        wait = None if shadow is None else shadow.wait_ms
        c_status = None if champion is None else champion.status
        h_status = None if challenger is None else challenger.status
        return [
            PairRecord(
                request_id=self.request_id,
                row_index=i,
                deployment_id=entry.deployment_id,
                rollout_id=entry.rollout_id,
                step=entry.step,
                received_at=self.received_at,
                routing_key_hash=self.key_hash,
                served_arm=self.served_arm,
                champion_version_id=entry.champion.id,
                challenger_version_id=None if entry.challenger is None else entry.challenger.id,
                champion_output=c_out[0][i],
                challenger_output=h_out[0][i],
                champion_class=c_out[1][i],
                champion_score=c_out[2][i],
                champion_value=c_out[3][i],
                challenger_class=h_out[1][i],
                challenger_score=h_out[2][i],
                challenger_value=h_out[3][i],
                champion_latency_ms=None if champion is None else champion.latency_ms,
                challenger_latency_ms=None if challenger is None else challenger.latency_ms,
                champion_error=None if champion is None else champion.error,
                challenger_error=None if challenger is None else challenger.error,
                raw_input=None if raw is None else raw[i],
                champion_status=c_status,
                challenger_status=h_status,
                skip_reason=skip,
                shadow_wait_ms=wait,
                champion_proba=c_out[4][i],
                challenger_proba=h_out[4][i],
            )
            for i in range(rows)
        ]

    def _raw_rows(self, rows: int) -> list[dict[str, Any]]:
        """Return the input rows as `frame.to_dict("records")` would: Python scalars, NaN kept."""
        arrays: Mapping[Any, Any] = self.columns if self.columns is not None else self.table()
        lists = [(name, arrays[name].tolist()) for name in arrays]
        return [{name: values[i] for name, values in lists} for i in range(rows)]


def _columns(
    result: ArmResult | None, rows: int
) -> tuple[list[Any], list[Any], list[Any], list[Any], list[Any]]:
    """Return (outputs, classes, scores, values, class probabilities) per row; Nones where the arm gave nothing."""
    nothing: list[Any] = [None] * rows
    if result is None or result.predictions is None:
        return nothing, nothing, nothing, nothing, nothing
    outputs = result.predictions.outputs
    if result.version.task == "regression":
        return outputs, nothing, nothing, outputs, nothing
    scores = result.predictions.scores or nothing
    probabilities = result.predictions.probabilities or nothing
    return outputs, [None if o is None else str(o) for o in outputs], scores, nothing, probabilities
