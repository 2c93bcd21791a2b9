"""Operator commands: rollout start/promote/rollback/pause/resume/abort/status/events and labels upload."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import adminapp
import pytest
from click.testing import CliRunner, Result
from werkzeug.serving import make_server

from controller.cli.main import cli
from controller.cli.rollout import actor
from storage import Store
from storage.entities import Column, Deployment, NewPipelineVersion, PairRecord


@pytest.fixture
def churn(store: Store) -> Deployment:
    """Deployment "churn" served by churn:1, with churn:2 registered (HTTP upstreams: nothing to fit)."""

    def version(v: str) -> int:
        return store.pipelines.add(
            NewPipelineVersion(
                name="churn", version=v, kind="http", task="classification", input_schema=(Column("age", "float"),),
                upstream_url="http://127.0.0.1:9/", upstream_protocol="v2",
            )
        ).id  # fmt: skip

    deployment = store.deployments.create("churn", version("1"))
    version("2")
    return deployment


@pytest.fixture
def mlcanary(database_url: str, tmp_path: Path) -> Any:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, ["--database-url", database_url, "--data-dir", str(tmp_path), *args])

    return invoke


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_rollout_starts_with_a_policy_file_and_is_audited_as_the_cli_user(
    mlcanary: Any, store: Store, churn: Deployment, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("mode: canary\ncanary:\n  steps: [10, 50, 100]\n")
    result = mlcanary("rollout", "start", "churn", "--challenger", "churn:2", "--policy", str(policy))
    assert result.exit_code == 0, result.output
    assert "started rollout" in result.output and "pending" in result.output
    (rollout,) = store.rollouts.list()
    assert (rollout.mode, rollout.policy["canary"]["steps"]) == ("canary", [10.0, 50.0, 100.0])
    event = store.events.list(limit=100)[-1]
    assert (event.action, event.actor) == ("rollout.create", actor())
    assert actor().startswith("cli:")


def test_operator_mistakes_are_one_line_and_exit_1(
    mlcanary: Any, store: Store, churn: Deployment, tmp_path: Path
) -> None:
    bad_policy = tmp_path / "bad.json"
    bad_policy.write_text('{"alpha": 7}')
    assert "alpha" in one_line_error(
        mlcanary("rollout", "start", "churn", "--challenger", "churn:2", "--policy", str(bad_policy))
    )
    assert "churn:9" in one_line_error(mlcanary("rollout", "start", "churn", "--challenger", "churn:9"))
    assert "nope" in one_line_error(mlcanary("rollout", "start", "nope", "--challenger", "churn:2"))
    assert "no active rollout" in one_line_error(mlcanary("rollout", "pause", "churn"))
    assert "no active rollout" in one_line_error(mlcanary("rollout", "promote", "churn", "--full"))
    assert store.rollouts.list() == []


def test_actions_move_the_rollout_through_its_phases(mlcanary: Any, store: Store, churn: Deployment) -> None:
    assert mlcanary("rollout", "start", "churn", "--challenger", "churn:2", "--mode", "shadow").exit_code == 0
    assert "aborted" in mlcanary("rollout", "abort", "churn", "--reason", "wrong build").output
    store.rollouts.create(deployment_id=churn.id, challenger_id=2, mode="shadow", policy={}, created_by="t",
                          phase="shadowing", shadow_rate=1.0)  # fmt: skip
    assert "paused" in mlcanary("rollout", "pause", "churn", "--reason", "freeze").output
    assert "cannot pause" in one_line_error(mlcanary("rollout", "pause", "churn"))
    assert "shadowing" in mlcanary("rollout", "resume", "churn").output
    result = mlcanary("rollout", "promote", "churn", "--full", "--reason", "great")
    assert "promoted" in result.output, result.output
    assert store.deployments.get("churn").champion_id == 2
    reasons = [
        e.details.get("operator_reason")
        for e in store.events.list(limit=100)
        if e.action.startswith("rollout.")
    ]
    assert "wrong build" in reasons and "freeze" in reasons and "great" in reasons


def test_rollback_ends_a_canary(mlcanary: Any, store: Store, churn: Deployment) -> None:
    store.rollouts.create(deployment_id=churn.id, challenger_id=2, mode="canary", policy={}, created_by="t",
                          phase="progressing", canary_weight=5.0, shadow_rate=1.0)  # fmt: skip
    assert "rolled_back" in mlcanary("rollout", "rollback", "churn", "--reason", "errors").output
    assert store.rollouts.list()[0].phase == "rolled_back"
    assert store.deployments.get("churn").champion_id == 1


def test_status_shows_phase_weights_and_live_figures(mlcanary: Any, store: Store, churn: Deployment) -> None:
    assert "no rollout yet" in mlcanary("rollout", "status", "churn").output
    rollout = store.rollouts.create(deployment_id=churn.id, challenger_id=2, mode="canary", policy={}, created_by="t",
                                    phase="progressing", canary_weight=25.0, shadow_rate=1.0)  # fmt: skip
    store.pairs.insert_many(
        [
            PairRecord(
                request_id=f"r{i}", row_index=0, deployment_id=churn.id, rollout_id=rollout.id, step=0,
                received_at=datetime.now(UTC), routing_key_hash=i, served_arm="champion", champion_version_id=1,
                challenger_version_id=2, champion_latency_ms=10.0, challenger_latency_ms=20.0,
                challenger_error="boom" if i == 0 else None,
            )
            for i in range(4)
        ]
    )  # fmt: skip
    text = mlcanary("rollout", "status", "churn").output
    assert "rollout 1: progressing, mode canary, step 0" in text
    assert "champion 75% / challenger 25%" in text
    assert "4 requests" in text and "(25.00%)" in text and "p50 10.0 ms" in text
    document = json.loads(mlcanary("rollout", "status", "churn", "--json").output)
    assert document["live"]["arms"]["challenger"]["errors"] == 1
    assert document["weights"]["challenger"] == 25.0


def test_events_list_the_audit_log(mlcanary: Any, store: Store, churn: Deployment) -> None:
    mlcanary("rollout", "start", "churn", "--challenger", "churn:2")
    mlcanary("rollout", "abort", "churn")
    text = mlcanary("rollout", "events", "churn").output
    assert "rollout.create" in text and "rollout.abort" in text and actor() in text
    listed = json.loads(mlcanary("rollout", "events", "churn", "--json", "--limit", "1").output)
    assert [e["action"] for e in listed] == ["rollout.create"]


def test_labels_upload_stores_labels_and_reports_ids_without_a_pair_yet(
    mlcanary: Any, store: Store, churn: Deployment, tmp_path: Path
) -> None:
    store.pairs.insert_many(
        [
            PairRecord(
                request_id=rid, row_index=row, deployment_id=churn.id, rollout_id=None, step=None,
                received_at=datetime.now(UTC), routing_key_hash=0, served_arm="champion", champion_version_id=1,
                challenger_version_id=None,
            )
            for rid, row in (("a", 0), ("b", 0), ("b", 1))
        ]
    )  # fmt: skip
    csv = tmp_path / "labels.csv"
    csv.write_text("request_id,label,row\na,1,\nb,yes,1\nghost,0,0\n")
    result = mlcanary("labels", "upload", "churn", str(csv))
    assert result.exit_code == 0, result.output
    assert "stored 3 labels; 1 unknown request ids" in result.output and "ghost" in result.output
    assert store.labels.get("a").label == 1 and store.labels.get("b", 1).label == "yes"
    assert store.labels.get("ghost").label == 0
    event = store.events.list(limit=100)[-1]
    assert (event.action, event.actor, event.details["stored"]) == ("labels.upload", actor(), 3)


def test_labels_upload_reads_an_outcome_column_next_to_or_instead_of_labels(
    mlcanary: Any, store: Store, churn: Deployment, tmp_path: Path
) -> None:
    csv = tmp_path / "revenue.csv"
    csv.write_text("request_id,label,outcome\na,1,12.5\nb,,0\nc,0,\n")
    assert mlcanary("labels", "upload", "churn", str(csv)).exit_code == 0
    assert (store.labels.get("a").label, store.labels.get("a").outcome) == (1, 12.5)
    assert (store.labels.get("b").label, store.labels.get("b").outcome) == (None, 0.0)
    assert (store.labels.get("c").label, store.labels.get("c").outcome) == (0, None)
    only = tmp_path / "only.csv"
    only.write_text("request_id,outcome\nd,-2\n")
    assert mlcanary("labels", "upload", "churn", str(only)).exit_code == 0
    assert store.labels.get("d").outcome == -2.0
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,outcome\ne,lots\n")
    assert "outcome must be a finite number" in one_line_error(
        mlcanary("labels", "upload", "churn", str(bad))
    )


def test_malformed_label_files_are_refused_in_one_line(
    mlcanary: Any, store: Store, churn: Deployment, tmp_path: Path
) -> None:
    cases = {
        "columns.csv": ("id,label\na,1\n", "must have the columns"),
        "extra.csv": ("request_id,label,when\na,1,now\n", "must have the columns"),
        "row.csv": ("request_id,label,row\na,1,first\n", "row must be an integer"),
        "empty.csv": ("request_id,label\n", "no labels"),
        "blank.csv": ("request_id,label\n,1\n", "request_id"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert expected in one_line_error(mlcanary("labels", "upload", "churn", str(path))), name
    path = tmp_path / "ok.csv"
    path.write_text("request_id,label\na,1\n")
    assert "nope" in one_line_error(mlcanary("labels", "upload", "nope", str(path)))
    assert store.labels.count() == 0


@pytest.fixture
def server(store: Store, tmp_path: Path, churn: Deployment) -> Iterator[str]:
    """The real app on a loopback port."""
    with adminapp.running(store, tmp_path) as app:
        http = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=http.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{http.server_port}"
        http.shutdown()


def test_commands_can_go_through_the_admin_api(
    mlcanary: Any, store: Store, server: str, tmp_path: Path
) -> None:
    token, _ = store.tokens.create("ops-bot", "operator")
    remote = ("--api", server, "--token", token)
    result = mlcanary(
        "rollout",
        *remote,
        "start",
        "churn",
        "--challenger",
        "churn:2",
        "--mode",
        "shadow",
        "--reason",
        "via api",
    )
    assert result.exit_code == 0, result.output
    assert store.events.list(limit=100)[-1].message == "via api"
    assert "pending" in mlcanary("rollout", *remote, "status", "churn").output
    assert "aborted" in mlcanary("rollout", *remote, "abort", "churn", "--reason", "api test").output
    assert [e.actor for e in store.events.list(limit=100) if e.action.startswith("rollout.")] == [
        "ops-bot"
    ] * 2
    assert "rollout.abort" in mlcanary("rollout", *remote, "events", "churn").output
    csv = tmp_path / "labels.csv"
    csv.write_text("request_id,label\nghost,1\n")
    assert "1 unknown" in mlcanary("labels", *remote, "upload", "churn", str(csv)).output
    viewer, _ = store.tokens.create("reader", "viewer")
    refused = mlcanary("rollout", "--api", server, "--token", viewer, "pause", "churn")
    assert "403" in one_line_error(refused)
    assert "401" in one_line_error(
        mlcanary("rollout", "--api", server, "--token", "mlc_wrongtoken", "status", "churn")
    )
    assert "needs --token" in mlcanary("rollout", "--api", server, "status", "churn").output
