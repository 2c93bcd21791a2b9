"""Operator commands: rollout start/promote/rollback/pause/resume/abort/status/events and labels upload."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import adminapp
import pytest
from click.testing import Result
from werkzeug.serving import make_server

from controller.cli.common import actor
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


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_rollout_starts_with_a_policy_file_and_is_audited_as_the_cli_user(
    runner: Any, store: Store, churn: Deployment, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("mode: canary\ncanary:\n  steps: [10, 50, 100]\n")
    result = runner("rollout", "start", "churn", "--challenger", "churn:2", "--policy", str(policy))
    assert result.exit_code == 0, result.output
    assert "started rollout" in result.output and "pending" in result.output
    (rollout,) = store.rollouts.list()
    assert (rollout.mode, rollout.policy["canary"]["steps"]) == ("canary", [10.0, 50.0, 100.0])
    event = store.events.list(limit=100)[-1]
    assert (event.action, event.actor) == ("rollout.create", actor())
    assert actor().startswith("cli:")


def test_operator_mistakes_are_one_line_and_exit_1(
    runner: Any, store: Store, churn: Deployment, tmp_path: Path
) -> None:
    bad_policy = tmp_path / "bad.json"
    bad_policy.write_text('{"alpha": 7}')
    assert "alpha" in one_line_error(
        runner("rollout", "start", "churn", "--challenger", "churn:2", "--policy", str(bad_policy))
    )
    assert "churn:9" in one_line_error(runner("rollout", "start", "churn", "--challenger", "churn:9"))
    assert "nope" in one_line_error(runner("rollout", "start", "nope", "--challenger", "churn:2"))
    assert "no active rollout" in one_line_error(runner("rollout", "pause", "churn"))
    assert "no active rollout" in one_line_error(runner("rollout", "promote", "churn", "--full"))
    assert store.rollouts.list() == []


def test_actions_move_the_rollout_through_its_phases(runner: Any, store: Store, churn: Deployment) -> None:
    assert runner("rollout", "start", "churn", "--challenger", "churn:2", "--mode", "shadow").exit_code == 0
    assert "aborted" in runner("rollout", "abort", "churn", "--reason", "wrong build").output
    store.rollouts.create(deployment_id=churn.id, challenger_id=2, mode="shadow", policy={}, created_by="t",
                          phase="shadowing", shadow_rate=1.0)  # fmt: skip
    assert "paused" in runner("rollout", "pause", "churn", "--reason", "freeze").output
    assert "cannot pause" in one_line_error(runner("rollout", "pause", "churn"))
    assert "shadowing" in runner("rollout", "resume", "churn").output
    result = runner("rollout", "promote", "churn", "--full", "--reason", "great")
    assert "promoted" in result.output, result.output
    assert store.deployments.get("churn").champion_id == 2
    reasons = [
        e.details.get("operator_reason")
        for e in store.events.list(limit=100)
        if e.action.startswith("rollout.")
    ]
    assert "wrong build" in reasons and "freeze" in reasons and "great" in reasons


def test_rollback_ends_a_canary(runner: Any, store: Store, churn: Deployment) -> None:
    store.rollouts.create(deployment_id=churn.id, challenger_id=2, mode="canary", policy={}, created_by="t",
                          phase="progressing", canary_weight=5.0, shadow_rate=1.0)  # fmt: skip
    assert "rolled_back" in runner("rollout", "rollback", "churn", "--reason", "errors").output
    assert store.rollouts.list()[0].phase == "rolled_back"
    assert store.deployments.get("churn").champion_id == 1


def test_status_shows_phase_weights_and_live_figures(runner: Any, store: Store, churn: Deployment) -> None:
    assert "no rollout yet" in runner("rollout", "status", "churn").output
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
    text = runner("rollout", "status", "churn").output
    assert "rollout 1: progressing, mode canary, step 0" in text
    assert "champion 75% / challenger 25%" in text
    assert "4 requests" in text and "(25.00%)" in text
    p50 = float(re.search(r"p50 ([0-9.]+) ms", text).group(1))  # type: ignore[union-attr]
    assert p50 == pytest.approx(10.0, rel=0.05)  # the judge's log buckets are 5 % wide
    document = json.loads(runner("rollout", "status", "churn", "--json").output)
    assert document["live"]["arms"]["challenger"]["errors"] == 1
    assert document["weights"]["challenger"] == 25.0


def test_status_shows_why_a_final_promotion_is_held_for_the_labels(
    runner: Any, store: Store, churn: Deployment
) -> None:
    rollout = store.rollouts.create(deployment_id=churn.id, challenger_id=2, mode="shadow", policy={}, created_by="t",
                                    phase="shadowing", canary_weight=0.0, shadow_rate=1.0)  # fmt: skip
    why = (
        "hold: labels look outcome-dependent: 19% of 8000 disagreeing pairs labelled vs 85% of 90000 agreeing"
    )
    store.analyses.add(
        rollout_id=rollout.id, step=0, outcome="pass", verdicts=[],
        metrics={"judgement": why + "; every required gate is non-inferior: accuracy"},
    )  # fmt: skip
    lines = runner("rollout", "status", "churn").output.splitlines()
    assert "  " + why in lines


def test_status_counts_requests_and_shows_shadow_coverage_and_skips(
    runner: Any, store: Store, churn: Deployment
) -> None:
    rollout = store.rollouts.create(deployment_id=churn.id, challenger_id=2, mode="shadow", policy={}, created_by="t",
                                    phase="shadowing")  # fmt: skip
    records = []
    for i in range(8):  # 8 requests of 5 rows: 5 scored (one failed), 2 expired in the queue, 1 shed
        fate = {0: "error", 5: "expired", 6: "expired", 7: "shed"}.get(i, "ok")
        challenger: dict[str, Any] = (
            {"challenger_status": "skipped", "skip_reason": fate}
            if fate in ("expired", "shed")
            else {"challenger_latency_ms": 20.0, "shadow_wait_ms": 40.0 + 10 * i,
                  "challenger_error": "boom" if fate == "error" else None}
        )  # fmt: skip
        records += [
            PairRecord(
                request_id=f"s{i}", row_index=row, deployment_id=churn.id, rollout_id=rollout.id, step=0,
                received_at=datetime.now(UTC), routing_key_hash=i, served_arm="champion", champion_version_id=1,
                challenger_version_id=2, champion_latency_ms=10.0, **challenger,
            )
            for row in range(5)
        ]  # fmt: skip
    store.pairs.insert_many(records)
    text = runner("rollout", "status", "churn").output
    assert "8 requests" in text and "errors      1 (20.00%)" in text  # 1 failed request of 5 scored
    assert "coverage 62.5% (5 of 8 sampled scored)" in text, text
    assert "skipped: expired 2, shed 1" in text and "queue wait mean 60.0 ms, max 80.0 ms" in text
    shadow = json.loads(runner("rollout", "status", "churn", "--json").output)["live"]["shadow"]
    assert (shadow["sampled"], shadow["scored"], shadow["effective_share"]) == (8, 5, 5 / 8)


def test_events_list_the_audit_log(runner: Any, store: Store, churn: Deployment) -> None:
    runner("rollout", "start", "churn", "--challenger", "churn:2")
    runner("rollout", "abort", "churn")
    text = runner("rollout", "events", "churn").output
    assert "rollout.create" in text and "rollout.abort" in text and actor() in text
    listed = json.loads(runner("rollout", "events", "churn", "--json", "--limit", "1").output)
    assert [e["action"] for e in listed] == ["rollout.create"]


def test_labels_upload_stores_labels_and_reports_ids_without_a_pair_yet(
    runner: Any, store: Store, churn: Deployment, tmp_path: Path
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
    result = runner("labels", "upload", "churn", str(csv))
    assert result.exit_code == 0, result.output
    assert "stored 3 labels; 1 unknown request ids" in result.output and "ghost" in result.output
    assert store.labels.get("a").label == 1 and store.labels.get("b", 1).label == "yes"
    assert store.labels.get("ghost").label == 0
    event = store.events.list(limit=100)[-1]
    assert (event.action, event.actor, event.details["stored"]) == ("labels.upload", actor(), 3)


def test_labels_upload_reads_an_outcome_column_next_to_or_instead_of_labels(
    runner: Any, store: Store, churn: Deployment, tmp_path: Path
) -> None:
    csv = tmp_path / "revenue.csv"
    csv.write_text("request_id,label,outcome\na,1,12.5\nb,,0\nc,0,\n")
    assert runner("labels", "upload", "churn", str(csv)).exit_code == 0
    assert (store.labels.get("a").label, store.labels.get("a").outcome) == (1, 12.5)
    assert (store.labels.get("b").label, store.labels.get("b").outcome) == (None, 0.0)
    assert (store.labels.get("c").label, store.labels.get("c").outcome) == (0, None)
    only = tmp_path / "only.csv"
    only.write_text("request_id,outcome\nd,-2\n")
    assert runner("labels", "upload", "churn", str(only)).exit_code == 0
    assert store.labels.get("d").outcome == -2.0
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,outcome\ne,lots\n")
    assert "outcome must be a finite number" in one_line_error(runner("labels", "upload", "churn", str(bad)))


def test_malformed_label_files_are_refused_in_one_line(
    runner: Any, store: Store, churn: Deployment, tmp_path: Path
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
        assert expected in one_line_error(runner("labels", "upload", "churn", str(path))), name
    path = tmp_path / "ok.csv"
    path.write_text("request_id,label\na,1\n")
    assert "nope" in one_line_error(runner("labels", "upload", "nope", str(path)))
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
    runner: Any, store: Store, server: str, tmp_path: Path
) -> None:
    token, _ = store.tokens.create("ops-bot", "operator")
    remote = ("--api", server, "--token", token)
    result = runner(
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
    assert "pending" in runner("rollout", *remote, "status", "churn").output
    assert "aborted" in runner("rollout", *remote, "abort", "churn", "--reason", "api test").output
    assert [e.actor for e in store.events.list(limit=100) if e.action.startswith("rollout.")] == [
        "ops-bot"
    ] * 2
    assert "rollout.abort" in runner("rollout", *remote, "events", "churn").output
    csv = tmp_path / "labels.csv"
    csv.write_text("request_id,label\nghost,1\n")
    assert "1 unknown" in runner("labels", *remote, "upload", "churn", str(csv)).output
    viewer, _ = store.tokens.create("reader", "viewer")
    refused = runner("rollout", "--api", server, "--token", viewer, "pause", "churn")
    assert "403" in one_line_error(refused)
    assert "401" in one_line_error(
        runner("rollout", "--api", server, "--token", "mlc_wrongtoken", "status", "churn")
    )
    assert "needs --token" in runner("rollout", "--api", server, "status", "churn").output


def test_tokens_prune_and_batching_go_through_the_admin_api(runner: Any, store: Store, server: str) -> None:
    token, _ = store.tokens.create("ops-bot", "operator")
    remote = ("--api", server, "--token", token)
    created = runner(*remote, "tokens", "create", "grafana", "--role", "viewer")
    assert created.exit_code == 0, created.output
    secret = created.output.strip().splitlines()[-1]
    minted = store.tokens.verify(secret)
    assert minted is not None and minted.role == "viewer"
    listed = runner(*remote, "tokens", "list").output
    assert "grafana" in listed and "ops-bot" in listed and secret not in listed
    assert runner(*remote, "tokens", "revoke", "grafana").exit_code == 0
    assert store.tokens.verify(secret) is None
    assert [e.actor for e in store.events.list(limit=100) if e.action.startswith("token.")] == ["ops-bot"] * 2
    pruned = runner(*remote, "prune", "--older-than", "30d")
    assert pruned.exit_code == 0 and "pruned 0 paired outputs and 0 labels" in pruned.output, pruned.output
    malformed = runner(*remote, "prune", "--older-than", "soon")
    assert malformed.exit_code == 2 and "positive number" in malformed.output  # refused before any request
    configured = runner(*remote, "deployments", "configure", "churn", "--max-batch-rows", "8")
    assert configured.exit_code == 0, configured.output
    assert store.deployments.get("churn").batching.max_batch_rows == 8
    made = runner(*remote, "deployments", "create", "quick", "--champion", "churn:1", "--no-batching")
    assert made.exit_code == 0, made.output
    assert store.deployments.get("quick").batching.enabled is False  # the options go through too


def test_commands_that_only_run_on_the_database_host_refuse_api_in_one_line(
    runner: Any, store: Store, server: str, tmp_path: Path
) -> None:
    remote = ("--api", server, "--token", "mlc_any")
    for args in (
        ("db", "upgrade"),
        ("db", "check"),
        ("replay", "--version", "churn:1", "--deployment", "churn", "--output", str(tmp_path / "out.csv")),
    ):
        refused = runner(*remote, *args)
        assert refused.exit_code == 1, args
        line = one_line_error(refused)
        assert "does not work through the admin API" in line and "without --api" in line, line
    assert not (tmp_path / "out.csv").exists()


def test_archive_and_restore_go_through_the_admin_api(runner: Any, store: Store, server: str) -> None:
    token, _ = store.tokens.create("ops-bot", "operator")
    remote = ("--api", server, "--token", token)
    archived = runner(*remote, "pipelines", "archive", "churn:2", "--reason", "superseded")
    assert archived.exit_code == 0 and f"archived churn:2 through {server}" in archived.output, (
        archived.output
    )
    assert store.pipelines.get_by_ref("churn:2").archived_at is not None
    restored = runner(*remote, "pipelines", "restore", "churn:2")
    assert restored.exit_code == 0, restored.output
    assert store.pipelines.get_by_ref("churn:2").archived_at is None
    gone = runner(*remote, "deployments", "archive", "churn")
    assert gone.exit_code == 0 and "archived deployment churn through" in gone.output, gone.output
    assert store.deployments.get("churn").archived_at is not None
    back = runner(*remote, "deployments", "restore", "churn")
    assert back.exit_code == 0 and "restored deployment churn through" in back.output, back.output
    assert store.deployments.get("churn").archived_at is None
    actions = [
        (e.actor, e.action) for e in store.events.list(limit=100) if e.action.endswith(("archive", "restore"))
    ]
    assert actions == [("ops-bot", a) for a in
                       ("pipeline.archive", "pipeline.restore", "deployment.archive", "deployment.restore")]  # fmt: skip
