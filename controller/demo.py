"""`mlcanary demo`: the whole job on real scikit-learn pipelines, in one command, on the embedded default.

What it does, in order:

1. builds a realistic churn table (numeric and categorical columns, values missing) and trains four
   full preprocessing pipelines: a champion, a genuinely better challenger, a challenger with a
   training/serving skew bug, and a subtly worse challenger; registers each with its offline metrics
   and golden set (the research environment's outputs);
2. starts the real server (`mlcanary serve`: gunicorn and a controller loop) on SQLite in a fresh folder;
3. for each challenger, starts a rollout through the admin API and drives traffic from a simulated
   client population through the public data plane (MLflow and V2 protocols both), sending the ground
   truth labels with a delay, while the terminal shows the rollout live;
4. ends with a summary table and the paths of the HTML reports, and stops every process it started.

Policy values are small so that the demo ends in a few minutes (see ``demo_policy``); production
defaults are far more cautious.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from controller import registry
from storage import Database, Store
from storage import schema as db_schema

CATEGORICAL = ("contract", "payment", "region")
NUMERIC = ("age", "tenure_months", "monthly_charges", "support_calls")
FINAL_PHASES = ("promoted", "rolled_back", "aborted")


class DemoError(RuntimeError):
    """The demo could not run to the end; the message says where and why."""


# ------------------------------------------------------------------------------------------- data
def churn_table(n: int, *, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """Return n raw customer rows and whether each churned.

    The churn signal has interactions (short tenure x support calls, young x paying by check) that a
    linear model cannot represent, so a gradient-boosted challenger is genuinely better.
    """
    rng = np.random.default_rng(seed)
    age = rng.normal(44, 13, n).clip(18, 90).round(0)
    tenure = rng.integers(1, 73, n).astype("int64")
    charges = rng.normal(68, 22, n).clip(15, 150).round(2)
    calls = rng.poisson(1.4, n).astype("int64")
    contract = rng.choice(["month-to-month", "one-year", "two-year"], n, p=[0.55, 0.25, 0.2])
    payment = rng.choice(["card", "bank", "check"], n, p=[0.45, 0.35, 0.2])
    region = rng.choice(["north", "south", "east", "west"], n)
    logit = (
        -0.9
        + 1.6 * (contract == "month-to-month")
        - 1.0 * (contract == "two-year")
        + 0.03 * (charges - 68)
        - 0.045 * tenure
        + 1.3 * calls * (tenure < 12)
        + 2.5 * ((age < 30) & (payment == "check"))
        - 2.0 * ((region == "north") & (charges < 60))
        + 1.5 * (age > 65)
        + rng.normal(0, 0.3, n)
    )
    churned = pd.Series((rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64"), name="churned")
    frame = pd.DataFrame(
        {
            "age": age,
            "tenure_months": tenure,
            "monthly_charges": charges,
            "support_calls": calls,
            "contract": contract.astype(object),
            "payment": payment.astype(object),
            "region": region.astype(object),
        }
    )
    frame.loc[rng.random(n) < 0.05, "age"] = np.nan
    frame.loc[rng.random(n) < 0.03, "monthly_charges"] = np.nan
    frame.loc[rng.random(n) < 0.04, "payment"] = np.nan
    return frame, churned


def _prepare(
    *, dense: bool, numeric: tuple[str, ...] = NUMERIC, categorical: tuple[str, ...] = CATEGORICAL
) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), list(numeric)),
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=not dense),
                ),
                list(categorical),
            ),
        ]
    )


@dataclass(frozen=True)
class Candidate:
    """A trained pipeline version and the story the demo tells about it."""

    version: str
    role: str  # champion | better | skewed | worse
    description: str
    expected: str  # what should happen to it
    model: Any
    golden_set: dict[str, Any] | None = None


def train_candidates(train: pd.DataFrame, target: pd.Series, golden: pd.DataFrame) -> list[Candidate]:
    """Train the champion and the three challengers on the research data."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    champion = Pipeline([("prepare", _prepare(dense=False)), ("model", LogisticRegression(max_iter=1000))])
    better = Pipeline(
        [
            ("prepare", _prepare(dense=True)),
            ("model", HistGradientBoostingClassifier(max_iter=150, learning_rate=0.08, random_state=0)),
        ]
    )
    # Subtly worse: the research team dropped two "redundant" features.
    worse = Pipeline(
        [
            (
                "prepare",
                _prepare(dense=False, numeric=("age", "monthly_charges"), categorical=("payment", "region")),
            ),
            ("model", LogisticRegression(max_iter=1000)),
        ]
    )
    # Skew bug: the notebook converted charges to cents before fitting, outside the pipeline. The
    # research outputs (golden set) were computed on converted data; production sends dollars.
    converted = train.assign(monthly_charges=train["monthly_charges"] * 100)
    skewed = Pipeline(
        [
            ("prepare", _prepare(dense=True)),
            ("model", HistGradientBoostingClassifier(max_iter=150, learning_rate=0.08, random_state=1)),
        ]
    )
    champion.fit(train, target)
    better.fit(train, target)
    worse.fit(train, target)
    skewed.fit(converted, target)
    research_golden = golden.assign(monthly_charges=golden["monthly_charges"] * 100)
    skewed_golden = registry.golden_set_from_frame(skewed, "classification", research_golden)
    skewed_golden["inputs"] = json.loads(golden.to_json(orient="split", index=False))  # raw inputs, as served
    return [
        Candidate("1", "champion", "logistic regression (current production)", "serves", champion),
        Candidate("2-skewed", "skewed", "gradient boosting, charges converted to cents outside the pipeline",
                  "stopped by the parity gate", skewed, skewed_golden),
        Candidate("3-worse", "worse", "logistic regression without contract and tenure features",
                  "rolled back once labels prove harm", worse),
        Candidate("4-better", "better", "gradient boosting with the same features",
                  "promoted through shadow and canary steps", better),
    ]  # fmt: skip


def demo_policy(*, fast: bool) -> dict[str, Any]:
    """Small thresholds so the demo ends in minutes; production defaults are more cautious.

    The accuracy margin (4 points) is wide because canary steps compare the arms unpaired, which needs
    far more labels than the paired shadow stage; with the default margin of 1 point each canary step
    would need tens of thousands of labelled requests. The latency margin (3x at p99) admits the
    better challenger's slower model; the production default is 1.2x.
    """
    return {
        "mode": "shadow_then_canary",
        "shadow": {"min_pairs": 300 if fast else 600, "min_duration_s": 1.0, "max_duration_s": 150.0},
        "canary": {
            "steps": [20, 50, 100],
            "min_samples": 200 if fast else 400,
            "min_duration_s": 1.0,
            "max_duration_s": 150.0,
        },
        "gates": {
            "accuracy": {"role": "required", "margin": 0.04},
            "agreement": {"role": "required", "margin": 0.75},
            # With no errors at all, proving "at most 1 point worse" under the score variance takes
            # ~850 challenger requests at the 20% step; 2 points fits the demo's step budget.
            "error_rate": {"role": "required", "margin": 0.02},
            # Gradient boosting costs about twice a logistic regression per call: the demo accepts a
            # p99 up to 3x the champion's (still tens of milliseconds); a 1.2x guardrail would
            # rightly roll the better-but-slower challenger back.
            # A guardrail blocks promotion until it has data: a burn-in the demo's steps can reach.
            "latency_p99": {"margin": 3.0, "min_samples": 200},
        },
        "burn_in": 100,
        "n_star": 1000,
        "label_maturity_s": 1.0,
        "on_inconclusive": "rollback",
    }


# ------------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(data_dir: Path, port: int, *, log: Path) -> Iterator[str]:
    """Start `mlcanary serve` in its own process group; stop it (SIGTERM, then SIGKILL) on exit."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLCANARY_")},
        "MLCANARY_DATA_DIR": str(data_dir),
        "MLCANARY_PORT": str(port),
        "MLCANARY_WORKERS": "2",
        "MLCANARY_CONTROLLER_INTERVAL": "0.5",
        "MLCANARY_LOG_LEVEL": "warning",
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "controller", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (data_dir / "server.pid").write_text(str(process.pid))  # its own process group: gunicorn + controller
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise DemoError(f"the server exited with status {process.returncode}; see {log}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise DemoError(f"the server did not become ready within 60 s; see {log}")
            time.sleep(0.2)
        yield url
    finally:
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


# ----------------------------------------------------------------------------------------- traffic
@dataclass
class Tally:
    requests: int = 0
    failed: int = 0
    labels: int = 0
    by_arm: dict[str, int] = field(default_factory=lambda: {"champion": 0, "challenger": 0})


class Traffic:
    """A simulated client population: sticky routing keys, MLflow and V2 requests, delayed labels."""

    def __init__(
        self,
        url: str,
        deployment: str,
        rows: pd.DataFrame,
        truth: pd.Series,
        *,
        seed: int,
        label_delay_s: float,
    ) -> None:
        self.url, self.deployment = url, deployment
        self.records = json.loads(rows.to_json(orient="records"))
        self.truth = truth.tolist()
        self.rng = random.Random(seed)
        self.customers = [f"customer-{i}" for i in range(500)]
        self.label_delay_s = label_delay_s
        self.pending: queue.Queue[tuple[float, str, int]] = queue.Queue()
        self.tally = Tally()
        self.lock = threading.Lock()
        self.client = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=8))

    def close(self) -> None:
        self.flush_labels(force=True)
        self.client.close()

    def send(self, count: int, *, workers: int = 4) -> None:
        """Send count requests from `workers` threads; labels are queued with their due time."""
        per_worker = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
        threads = [threading.Thread(target=self._worker, args=(n, i)) for i, n in enumerate(per_worker)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.flush_labels()

    def _worker(self, count: int, index: int) -> None:
        rng = random.Random(self.rng.random() + index)
        for _ in range(count):
            row = rng.randrange(len(self.records))
            request_id = uuid.uuid4().hex
            headers = {"X-Request-Id": request_id, "X-Routing-Key": rng.choice(self.customers)}
            record = self.records[row]
            try:
                if rng.random() < 0.5:
                    response = self.client.post(
                        f"{self.url}/v1/models/{self.deployment}/invocations",
                        json={"dataframe_records": [record]},
                        headers=headers,
                    )
                else:
                    response = self.client.post(
                        f"{self.url}/v2/models/{self.deployment}/infer", json=v2_body(record), headers=headers
                    )
                ok = response.status_code == 200
                arm = response.headers.get("X-Mlcanary-Arm", "champion")
            except httpx.HTTPError:
                ok, arm = False, "champion"
            with self.lock:
                self.tally.requests += 1
                self.tally.failed += not ok
                self.tally.by_arm[arm] = self.tally.by_arm.get(arm, 0) + 1
            if ok:
                self.pending.put((time.monotonic() + self.label_delay_s, request_id, int(self.truth[row])))

    def flush_labels(self, *, force: bool = False) -> None:
        """Post every label whose delay has passed (all of them with force)."""
        due: list[dict[str, Any]] = []
        later: list[tuple[float, str, int]] = []
        now = time.monotonic()
        while True:
            try:
                item = self.pending.get_nowait()
            except queue.Empty:
                break
            (
                due.append({"request_id": item[1], "label": item[2]})
                if force or item[0] <= now
                else later.append(item)
            )
        for item in later:
            self.pending.put(item)
        for start in range(0, len(due), 500):
            response = self.client.post(
                f"{self.url}/v1/models/{self.deployment}/feedback", json={"labels": due[start : start + 500]}
            )
            if response.status_code == 200:
                self.tally.labels += int(response.json().get("stored", 0))


def v2_body(record: dict[str, Any]) -> dict[str, Any]:
    """One V2 (Open Inference) request with one tensor per column, as a tabular V2 client sends it."""
    inputs = []
    for name, value in record.items():
        if isinstance(value, str) or (value is None and name in CATEGORICAL):
            inputs.append({"name": name, "shape": [1], "datatype": "BYTES", "data": [value]})
        elif isinstance(value, int) and not isinstance(value, bool):
            inputs.append({"name": name, "shape": [1], "datatype": "INT64", "data": [value]})
        else:
            inputs.append({"name": name, "shape": [1], "datatype": "FP64", "data": [value]})
    return {"inputs": inputs}


# ------------------------------------------------------------------------------------------- runner
@dataclass
class RolloutResult:
    version: str
    role: str
    expected: str
    rollout_id: int | None
    phase: str
    reason: str
    requests: int
    labels: int
    seconds: float
    report: str | None = None

    @property
    def as_expected(self) -> bool:
        wanted = {"skewed": ("blocked",), "worse": ("rolled_back",), "better": ("promoted",)}[self.role]
        return self.phase in wanted


class Demo:
    """Run the demo against a live server; `console` shows progress (rich)."""

    def __init__(self, *, data_dir: Path, fast: bool, seed: int = 7, console: Any = None) -> None:
        from rich.console import Console

        self.data_dir = data_dir
        self.fast = fast
        self.seed = seed
        self.console = console or Console()
        self.rows = 3000 if fast else 8000
        self.budget_requests = 10000 if fast else 30000

    # -- set-up ------------------------------------------------------------------------------
    def prepare(self) -> tuple[list[Candidate], pd.DataFrame, pd.Series]:
        if self.data_dir.exists():
            if not (self.data_dir / ".mlcanary-demo").exists() and any(self.data_dir.iterdir()):
                raise DemoError(
                    f"{self.data_dir} exists and is not a demo folder; choose an empty --data-dir"
                )
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        (self.data_dir / ".mlcanary-demo").touch()
        self.console.print(f"[bold]1.[/] Training four pipelines on {self.rows:,} research rows…")
        frame, target = churn_table(self.rows, seed=self.seed)
        cut = int(len(frame) * 0.7)
        train, holdout = frame.iloc[:cut], frame.iloc[cut:]
        train_y, holdout_y = target.iloc[:cut], target.iloc[cut:]
        golden = holdout.head(200).reset_index(drop=True)
        candidates = train_candidates(train, train_y, golden)
        traffic_rows, traffic_truth = churn_table(4000, seed=self.seed + 1)
        db = Database(f"sqlite:///{(self.data_dir / 'mlcanary.db').resolve()}")
        db_schema.upgrade(db)
        store = Store(db)
        artifacts = self.data_dir / "research"
        artifacts.mkdir()
        from storage.skops_trust import import_skops

        sio = import_skops()
        for c in candidates:
            path = artifacts / f"churn-{c.version}.skops"
            sio.dump(c.model, path)
            version = registry.register_artifact(
                store,
                name="churn",
                version=c.version,
                artifact=path,
                task="classification",
                artifact_dir=self.data_dir / "artifacts",
                holdout=holdout.assign(churned=holdout_y),
                target="churned",
                golden=None if c.golden_set else golden,
                golden_set=c.golden_set,
                metadata={"description": c.description},
                actor="demo",
            )
            accuracy = version.offline_metrics.get("accuracy", float("nan"))
            self.console.print(
                f"   registered {version.ref:16} offline accuracy {accuracy:.3f}  {c.description}"
            )
        store.deployments.create("churn", store.pipelines.get_by_ref("churn:1").id)
        token, _ = store.tokens.create("demo-operator", "operator")
        (self.data_dir / "operator.token").write_text(token)
        labeller, _ = store.tokens.create("demo-labeller", "labeller")  # labels need a labeller token
        (self.data_dir / "labeller.token").write_text(labeller)
        db.dispose()
        return candidates, traffic_rows, traffic_truth

    # -- one rollout ---------------------------------------------------------------------------
    def run_rollout(self, api: httpx.Client, traffic: Traffic, candidate: Candidate) -> RolloutResult:
        started = time.monotonic()
        before = (traffic.tally.requests, traffic.tally.labels)
        response = api.post(
            "/api/v1/deployments/churn/rollouts",
            json={"challenger": f"churn:{candidate.version}", "policy": demo_policy(fast=self.fast)},
        )
        if response.status_code >= 400:
            message = response.json().get("error", {}).get("message", response.text)
            self.console.print(f"   [red]refused[/]: {message}")
            phase = "blocked" if "parity" in message.lower() else "refused"
            return RolloutResult(
                candidate.version, candidate.role, candidate.expected, None, phase, message, 0, 0, 0.0
            )
        rollout_id = int(response.json()["id"])
        phase, reason, shown = "pending", "", ""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("   traffic"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), console=self.console, transient=True,
        ) as progress:  # fmt: skip
            bar = progress.add_task("", total=self.budget_requests)
            while traffic.tally.requests - before[0] < self.budget_requests:
                traffic.send(100)
                progress.update(bar, completed=traffic.tally.requests - before[0])
                rollout = api.get("/api/v1/deployments/churn").json().get("rollout") or {}
                if rollout.get("id") not in (None, rollout_id):
                    break
                phase = rollout.get("phase", phase)
                state = (
                    f"{phase:12} step {rollout.get('step_index', 0)}  challenger weight "
                    f"{rollout.get('canary_weight', 0):>5.1f}%"
                )
                progress.update(bar, description=f"{state}  labels {traffic.tally.labels - before[1]:,}")
                if state != shown:
                    progress.console.print(
                        f"   {state}  after {traffic.tally.requests - before[0]:>6,} requests, "
                        f"{traffic.tally.labels - before[1]:>6,} labels"
                    )
                    shown = state
                if phase in FINAL_PHASES:
                    break
        mine: dict[str, Any] = next(
            (
                r
                for r in api.get("/api/v1/deployments/churn/rollouts").json()["rollouts"]
                if r["id"] == rollout_id
            ),
            {},
        )
        phase = mine.get("phase", phase)
        reason = self.last_word(api, rollout_id) or mine.get("reason") or ""
        if phase not in FINAL_PHASES:
            api.post("/api/v1/deployments/churn/rollout/abort", json={"reason": "demo budget exhausted"})
            reason = f"undecided after {self.budget_requests:,} requests; aborted by the demo"
        report = self.data_dir / "reports" / f"rollout-{rollout_id}-{candidate.role}.html"
        report.parent.mkdir(exist_ok=True)
        html = api.get("/api/v1/deployments/churn/report", params={"format": "html", "rollout": rollout_id})
        if html.status_code == 200:
            report.write_text(html.text)
        return RolloutResult(
            candidate.version, candidate.role, candidate.expected, rollout_id, phase, reason or "",
            traffic.tally.requests - before[0], traffic.tally.labels - before[1], time.monotonic() - started,
            str(report) if report.exists() else None,
        )  # fmt: skip

    @staticmethod
    def last_word(api: httpx.Client, rollout_id: int) -> str:
        """The message of the rollout's last transition, as the controller (or an operator) wrote it."""
        events = api.get("/api/v1/deployments/churn/events", params={"limit": 1000}).json()["events"]
        mine = [e for e in events if e["rollout_id"] == rollout_id and e["action"].startswith("rollout.")]
        return str(mine[-1]["message"]) if mine else ""

    # -- whole demo ----------------------------------------------------------------------------
    def run(self, *, port: int | None = None) -> list[RolloutResult]:
        candidates, rows, truth = self.prepare()
        port = port or free_port()
        self.console.print(
            f"[bold]2.[/] Starting mlcanary serve (gunicorn, 2 workers, controller) on port {port}…"
        )
        outcomes: list[RolloutResult] = []
        with running_server(self.data_dir, port, log=self.data_dir / "server.log") as url:
            token = (self.data_dir / "operator.token").read_text()
            traffic = Traffic(url, "churn", rows, truth, seed=self.seed, label_delay_s=1.0)
            traffic.client.headers["Authorization"] = (
                f"Bearer {(self.data_dir / 'labeller.token').read_text()}"
            )
            api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            try:
                traffic.send(200)  # warm up: the champion alone
                for number, candidate in enumerate(c for c in candidates if c.role != "champion"):
                    self.console.print(
                        f"[bold]{3 + number}.[/] Rollout of churn:{candidate.version} "
                        f"({candidate.description}); expected: {candidate.expected}"
                    )
                    outcome = self.run_rollout(api, traffic, candidate)
                    outcomes.append(outcome)
                    self.console.print(f"   → [bold]{outcome.phase}[/]: {outcome.reason}")
            finally:
                traffic.close()
                api.close()
        self.summarise(outcomes)
        return outcomes

    def summarise(self, outcomes: list[RolloutResult]) -> None:
        from rich.table import Table

        table = Table(title="mlcanary demo: what happened")
        for column in ("challenger", "expected", "outcome", "requests", "labels", "seconds"):
            table.add_column(column)
        for o in outcomes:
            mark = "[green]✔[/]" if o.as_expected else "[red]✘[/]"
            table.add_row(
                f"churn:{o.version}", o.expected, f"{mark} {o.phase}", f"{o.requests:,}", f"{o.labels:,}",
                f"{o.seconds:.0f}",
            )  # fmt: skip
        self.console.print(table)
        for o in outcomes:
            self.console.print(f"   [bold]churn:{o.version}[/] {o.phase}: {o.reason[:300]}")
            if o.report:
                self.console.print(f"      report: {o.report}")
        summary = self.data_dir / "summary.json"
        summary.write_text(
            json.dumps([o.__dict__ | {"as_expected": o.as_expected} for o in outcomes], indent=2)
        )
        self.console.print(f"   summary: {summary}")
        self.console.print(
            "   (demo policy: small thresholds, a 4-point accuracy margin and a 3x p99 latency margin so it ends in minutes; "
            "see controller/demo.py demo_policy)"
        )
