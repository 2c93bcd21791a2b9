"""Whole rollouts driven by the control loop with a fake clock, real storage and real fitted pipelines.

Paired outputs are written as the router would: the real pipelines score mlpipes.churn_frame rows and
the records go in with store.pairs.insert_many; labels (the rows' true churn) with store.labels.upsert_many.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlpipes
import numpy as np
import pytest

from controller.loop import actions
from controller.loop.control import evaluate_once
from storage import Store
from storage.entities import PairRecord, Rollout

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
_ids = itertools.count()


class World:
    """A deployment with a champion and a challenger pipeline, traffic on demand and a fake clock."""

    def __init__(self, store: Store, tmp_path: Path, champion: Any, challenger: Any) -> None:
        self.store = store
        self.now = T0
        self.models = {"champion": champion, "challenger": challenger}
        v1 = mlpipes.register(store, tmp_path, version="1", model=champion)
        v2 = mlpipes.register(store, tmp_path, version="2", model=challenger)
        self.versions = {"champion": v1, "challenger": v2}
        self.deployment = mlpipes.deploy(store, "churn", v1)
        self.seed = 100

    def start(self, policy: dict[str, Any] | None = None, **kw: Any) -> Rollout:
        return actions.start_rollout(
            self.store, "churn", "churn:2", actor="alice", policy=policy, now=self.now, **kw
        )

    def rollout(self) -> Rollout:
        latest = self.store.rollouts.latest(self.deployment.id)
        assert latest is not None
        return latest

    def tick(self, seconds: float = 0.0) -> list[Any]:
        self.now += timedelta(seconds=seconds)
        return evaluate_once(self.store, now=self.now)

    def traffic(
        self,
        n: int,
        *,
        labels: bool = True,
        challenger_errors: float = 0.0,
        label_share: float = 1.0,
        label_delay_s: float = 0.0,
        disagree_label_share: float = 1.0,
    ) -> None:
        """Score n fresh rows as the router would at the rollout's current split; store pairs (and labels).

        ``disagree_label_share``: of the rows where the two models disagree, the share that gets a label
        at all (labels that depend on the outcome).
        """
        r = self.rollout()
        assert r.active and r.phase != "pending"
        self.seed += 1
        frame, target = mlpipes.churn_frame(n, seed=self.seed)
        rng = np.random.default_rng(self.seed)
        preds = {arm: np.asarray(m.predict(frame)) for arm, m in self.models.items()}
        # columns: in a watch the router serves the new champion (the rollout's challenger) in the
        # champion columns and scores the previous champion in the challenger columns
        column = {"champion": "challenger", "challenger": "champion"} if r.phase == "watching" else None
        canary = r.phase == "progressing" or (r.phase == "paused" and r.canary_weight > 0)
        served = (
            np.where(rng.random(n) < r.canary_weight / 100.0, "challenger", "champion")
            if canary
            else np.full(n, "champion")
        )
        other_runs = rng.random(n) < (r.shadow_rate if canary else 1.0)
        failing = rng.random(n) < challenger_errors
        records, label_rows = [], []
        for i in range(n):
            number = next(_ids)
            rid = f"req-{number}"  # no X-Routing-Key: the request id is the sticky key, one per request
            out: dict[str, Any] = {}
            for arm in ("champion", "challenger"):
                if served[i] != arm and not other_runs[i]:
                    continue
                col = column[arm] if column else arm  # which columns hold this model's outputs
                out[f"{col}_latency_ms"] = float(rng.lognormal(1.0, 0.3))
                if arm == "challenger" and failing[i]:
                    out[f"{col}_error"] = "RuntimeError: boom"
                else:
                    out[f"{col}_class"] = str(int(preds[arm][i]))
            records.append(
                PairRecord(
                    request_id=rid,
                    row_index=0,
                    deployment_id=r.deployment_id,
                    rollout_id=r.id,
                    step=r.step_index,
                    received_at=self.now,
                    routing_key_hash=number,
                    served_arm=str(served[i]),
                    champion_version_id=r.challenger_id if column else r.champion_id,
                    challenger_version_id=r.champion_id if column else r.challenger_id,
                    **out,
                )
            )
            share = label_share * (
                disagree_label_share if preds["champion"][i] != preds["challenger"][i] else 1.0
            )
            if labels and rng.random() < share:
                label_rows.append((rid, 0, int(target.iloc[i])))
        self.store.pairs.insert_many(records)
        if label_rows:
            later = self.now + timedelta(seconds=label_delay_s)
            self.store.labels.upsert_many(r.deployment_id, label_rows, now=later)

    def transitions(self) -> list[tuple[str, str, str]]:
        return [(e.action, e.reason, e.actor) for e in self.store.events.list(rollout_id=self.rollout().id)]


@pytest.fixture(scope="module")
def pipelines() -> dict[str, Any]:
    return {
        "good": mlpipes.classifier(seed=0),  # accuracy about 0.74 on fresh rows
        "weak": mlpipes.classifier(seed=0, c=0.01),  # about 6 points less accurate
        "same": mlpipes.classifier(seed=0),
        "other": mlpipes.classifier(seed=1),  # fitted on other rows: about as accurate, some disagreement
    }


def _run_until_final(
    world: World, *, per_tick: int, seconds: float, max_ticks: int, **traffic: Any
) -> Rollout:
    for _ in range(max_ticks):
        r = world.rollout()
        if not r.active:
            return r
        if r.phase != "pending":
            world.traffic(per_tick, **traffic)
        world.tick(seconds)
    return world.rollout()


def test_a_better_challenger_walks_through_shadow_and_every_canary_step_to_promotion(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["weak"], challenger=pipelines["good"])
    world.start({"canary": {"steps": [20, 50, 100]}})  # a 5% step needs ~20k requests unpaired: too slow here
    world.tick()
    assert world.rollout().phase == "shadowing"
    final = _run_until_final(world, per_tick=1500, seconds=120, max_ticks=30)
    assert final.phase == "promoted"
    assert store.deployments.get("churn").champion_id == world.versions["challenger"].id
    steps = [
        (e.action, e.details["to"]["phase"], e.details["to"]["canary_weight"])
        for e in store.events.list(rollout_id=final.id)
        if e.action != "rollout.create"
    ]
    assert steps == [
        ("rollout.start", "shadowing", 0.0),
        ("rollout.advance", "progressing", 20.0),
        ("rollout.advance", "progressing", 50.0),
        ("rollout.promote", "promoted", 100.0),
    ]
    promotion = store.events.list(rollout_id=final.id)[-1]
    assert promotion.actor == "controller" and promotion.reason == "step_passed"
    assert {v["gate"] for v in promotion.details["verdicts"]} >= {"error_rate", "accuracy"}
    assert final.ended_at is not None
    assert store.analyses.list(final.id), "every look is stored as an analysis"


def test_a_less_accurate_challenger_is_rolled_back_once_labels_arrive(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["weak"])
    world.start({"gates": {"agreement": {"role": "informational", "margin": 0.9}}})
    world.tick()
    for _ in range(3):  # no labels yet: the required accuracy gate has nothing to say, so the step holds
        world.traffic(1000, labels=False)
        world.tick(60)
    assert world.rollout().phase == "shadowing"
    final = _run_until_final(world, per_tick=1000, seconds=60, max_ticks=10)
    assert final.phase == "rolled_back"
    assert (final.canary_weight, final.shadow_rate) == (0.0, 0.0)
    assert store.deployments.get("churn").champion_id == world.versions["champion"].id
    event = store.events.list(rollout_id=final.id)[-1]
    assert (event.action, event.reason, event.actor) == ("rollout.rollback", "harm", "controller")
    failed = [v["gate"] for v in event.details["verdicts"] if v["outcome"] == "fail"]
    assert "accuracy" in failed
    # each arm's accuracy is stored with the look (the report's and the dashboard's per-arm lines); every
    # labelled row is a pair here, so their difference is the paired effect the gate judged
    last = store.analyses.latest(final.id)
    assert last is not None
    arms = last.metrics["arms"]["accuracy"]
    effect = next(v["effect"] for v in last.verdicts if v["gate"] == "accuracy")
    assert 0.6 < arms["challenger"] < arms["champion"] < 0.85
    assert arms["challenger"] - arms["champion"] == pytest.approx(effect, abs=1e-9)


def test_a_challenger_failing_a_fifth_of_requests_is_rolled_back_within_the_burn_in(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["same"])
    world.start()
    world.tick()
    world.traffic(250, challenger_errors=0.2)  # burn-in is 200 pairs; the shadow step wants 500
    world.tick(5)
    final = world.rollout()
    assert final.phase == "rolled_back"
    event = store.events.list(rollout_id=final.id)[-1]
    assert event.reason == "harm"
    assert [v["gate"] for v in event.details["verdicts"] if v["outcome"] == "fail"] == ["error_rate"]


def test_identical_arms_are_promoted_by_non_inferiority_once_labels_prove_accuracy(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["same"])
    world.start({"mode": "shadow"})
    world.tick()
    final = _run_until_final(world, per_tick=600, seconds=60, max_ticks=10)
    assert final.phase == "promoted"
    event = store.events.list(rollout_id=final.id)[-1]
    passed = {
        v["gate"] for v in event.details["verdicts"] if v["outcome"] == "pass" and v["role"] == "required"
    }
    assert passed == {"error_rate", "accuracy", "balanced_accuracy"}  # the default class-aware gate too


def test_agreement_alone_never_makes_the_final_promotion(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["same"])
    world.start({"mode": "shadow", "shadow": {"max_duration_s": 900}})
    world.tick()
    final = _run_until_final(world, per_tick=600, seconds=60, max_ticks=20, labels=False)
    # identical predictions (agreement 1.0) but no label: the only step is the final one, so it waits
    # for accuracy and pauses when its budget runs out
    assert (final.phase, final.reason) == ("paused", "step_budget_exhausted")
    assert store.deployments.get("churn").champion_id == world.versions["champion"].id


def test_agreement_advances_into_the_watch_and_labels_in_the_watch_promote(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["same"])
    world.start(
        {"mode": "shadow", "watch": {"enabled": True, "min_duration_s": 600, "min_labelled_pairs": 300}}
    )
    world.tick()
    # agreement 1.0 >= 1 - accuracy margin: the shadow step may pass once the score-variance bounds of
    # agreement (0.99) and of the error rate (1 point) are proven, about 2,000 pairs
    world.traffic(3000, labels=False)
    world.tick(60)
    r = world.rollout()
    assert (r.phase, r.step_index, r.canary_weight) == ("watching", 1, 100.0)
    # the challenger is the champion now; the router shadows the previous champion
    assert store.deployments.get("churn").champion_id == world.versions["challenger"].id
    entry = store.routing.load_table()["churn"]
    assert entry.champion.id == world.versions["challenger"].id
    assert entry.challenger is not None and entry.challenger.id == world.versions["champion"].id
    assert (entry.mode, entry.step, entry.canary_weight) == ("shadow", 1, 0.0)
    # visible where operators look: `rollout status` and the report
    from controller.cli.rollout import status_lines
    from controller.encoding import plain
    from controller.http import documents
    from controller.reports.build import _decision_notes  # the report's notes (the whole report needs scores)

    document = plain(
        documents.deployment_json(store, store.deployments.get("churn"), detail=True, now=world.now)
    )
    assert any(
        line.startswith("post-promotion watch: churn:2 answers every request")
        for line in status_lines(document)
    )
    notes = _decision_notes(world.rollout(), store.events.list(rollout_id=r.id))
    assert any(n.startswith("Post-promotion watch (step 1)") and "in progress" in n for n in notes)
    assert any(n.startswith("Error budget: alpha 0.05 split as harm family 0.04") for n in notes)
    world.traffic(1500)  # labels arrive during the watch
    world.tick(60)
    assert world.rollout().phase == "watching", "the bake period is not over"
    world.tick(600)
    final = world.rollout()
    assert (final.phase, final.reason) == ("promoted", "watch_passed")
    assert [a for a, _, _ in world.transitions()] == [
        "rollout.create", "rollout.start", "rollout.watch", "rollout.promote",
    ]  # fmt: skip
    assert store.routing.load_table()["churn"].challenger is None


def test_proven_harm_during_the_watch_restores_the_previous_champion(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["same"])
    world.start({"mode": "shadow", "watch": {"enabled": True}})
    world.tick()
    world.traffic(3000, labels=False)  # enough for the score-variance bounds (see the test above)
    world.tick(60)
    assert world.rollout().phase == "watching"
    for _ in range(5):
        world.traffic(600, labels=False, challenger_errors=0.2)  # the new champion now fails a fifth
        world.tick(60)
        if world.rollout().phase != "watching":
            break
    final = world.rollout()
    assert (final.phase, final.reason) == ("rolled_back", "watch_harm")
    assert store.deployments.get("churn").champion_id == world.versions["champion"].id
    event = store.events.list(rollout_id=final.id)[-1]
    assert [v["gate"] for v in event.details["verdicts"] if v["outcome"] == "fail"] == ["error_rate"]
    assert store.routing.load_table()["churn"].challenger is None


@pytest.mark.parametrize(("maturity", "phase"), [(0.0, "shadowing"), (7200.0, "promoted")])
def test_a_final_promotion_waits_while_labels_arrive_later_than_the_label_maturity(
    store: Store, tmp_path: Path, pipelines: dict[str, Any], maturity: float, phase: str
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["same"])
    world.start({"mode": "shadow", "label_maturity_s": maturity})
    world.tick()
    world.traffic(3000, label_delay_s=7200.0)  # every label two hours after its request
    world.tick(7260)
    r = world.rollout()
    assert r.phase == phase, store.analyses.list(r.id)[-1].metrics["judgement"]
    if phase == "shadowing":  # identical answers pass every gate, but the labels may be a biased sample
        last = store.analyses.list(r.id)[-1]
        assert last.metrics["judgement"].startswith(
            "hold: labels arrive up to 7200 s after their requests but label_maturity_s is 0 s"
        )


@pytest.mark.parametrize(("disagree_label_share", "phase"), [(0.2, "shadowing"), (1.0, "promoted")])
def test_a_final_promotion_waits_while_disagreeing_pairs_are_far_less_labelled(
    store: Store, tmp_path: Path, pipelines: dict[str, Any], disagree_label_share: float, phase: str
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["other"])
    gates = {"agreement": {"role": "informational"}, "accuracy": {"margin": 0.03}}
    world.start({"mode": "shadow", "gates": gates})
    world.tick()
    world.traffic(3000, disagree_label_share=disagree_label_share)
    world.tick(60)
    r = world.rollout()
    assert r.phase == phase, store.analyses.list(r.id)[-1].metrics["judgement"]
    if phase == "shadowing":  # no delay is late, but the labels missing are those of disagreements
        last = store.analyses.list(r.id)[-1]
        assert last.metrics["judgement"].startswith("hold: labels look outcome-dependent: ")
        assert "disagreeing pairs labelled vs 100% of " in last.metrics["judgement"]


def test_a_step_that_runs_out_of_budget_undecided_pauses_for_a_human(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["weak"])
    world.start(
        {"gates": {"agreement": {"role": "informational", "margin": 0.9}}, "shadow": {"max_duration_s": 600}}
    )
    world.tick()
    for _ in range(4):  # plenty of pairs, too few labels for the accuracy gate to decide
        world.traffic(300, label_share=0.1)
        world.tick(120)
    assert world.rollout().phase == "shadowing"
    world.traffic(300, label_share=0.1)
    world.tick(200)
    paused = world.rollout()
    assert paused.phase == "paused"
    assert paused.reason == "step_budget_exhausted"
    assert paused.canary_weight == 0.0 and paused.shadow_rate == 1.0  # the split is held as it was
    event = store.events.list(rollout_id=paused.id)[-1]
    assert (event.action, event.reason, event.actor) == (
        "rollout.pause",
        "step_budget_exhausted",
        "controller",
    )
    world.traffic(300, label_share=0.1)
    world.tick(3600)
    assert world.rollout().phase == "paused", "a paused rollout waits for a human"


def test_the_budget_rolls_back_when_the_policy_says_so(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["same"])
    world.start({"on_inconclusive": "rollback", "shadow": {"max_duration_s": 60}})
    world.tick()
    world.tick(61)  # no traffic at all
    final = world.rollout()
    assert (final.phase, final.reason) == ("rolled_back", "step_budget_exhausted")


def test_manual_actions_work_mid_rollout_and_are_audited(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["same"])
    world.start()
    world.tick()
    r = actions.act(store, "churn", "promote", actor="alice", reason="shadow looked fine", now=world.now)
    assert (r.phase, r.step_index, r.canary_weight) == ("progressing", 1, 5.0)
    r = actions.act(store, "churn", "pause", actor="bob", reason="incident elsewhere", now=world.now)
    assert (r.phase, r.canary_weight) == ("paused", 5.0)
    world.traffic(2000)
    world.tick(7200)
    assert world.rollout().phase == "paused", "the controller never advances a paused rollout"
    with pytest.raises(actions.ActionError, match="paused"):
        actions.act(store, "churn", "pause", actor="bob", now=world.now)
    r = actions.act(store, "churn", "resume", actor="bob", now=world.now)
    assert (r.phase, r.step_index, r.step_started_at) == ("progressing", 1, world.now)
    r = actions.act(store, "churn", "rollback", actor="carol", reason="business call", now=world.now)
    assert (r.phase, r.canary_weight, r.shadow_rate) == ("rolled_back", 0.0, 0.0)
    with pytest.raises(actions.ActionError, match="no active rollout"):
        actions.act(store, "churn", "resume", actor="bob", now=world.now)
    audit = [(e.action, e.actor, e.reason) for e in store.events.list(rollout_id=r.id)]
    assert audit == [
        ("rollout.create", "alice", "created"),
        ("rollout.start", "controller", "started"),
        ("rollout.advance", "alice", "manual_promote"),
        ("rollout.pause", "bob", "manual_pause"),
        ("rollout.resume", "bob", "manual_resume"),
        ("rollout.rollback", "carol", "manual_rollback"),
    ]
    last = store.events.list(rollout_id=r.id)[-1]
    assert last.message == "business call" and last.details["from"]["phase"] == "progressing"

    world.start()  # a second rollout: abort it, and promote one fully
    r = actions.act(store, "churn", "abort", actor="dave", reason="wrong version", now=world.now)
    assert r.phase == "aborted"
    world.start()
    world.tick()
    r = actions.act(store, "churn", "promote", actor="erin", full=True, now=world.now)
    assert r.phase == "promoted"
    assert store.deployments.get("churn").champion_id == world.versions["challenger"].id


def test_a_rollout_changed_by_an_operator_during_a_look_is_not_overwritten(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["same"])
    stale = world.start()
    actions.act(store, "churn", "abort", actor="alice", now=world.now)
    from controller.loop.control import evaluate_rollout

    outcome = evaluate_rollout(store, stale, now=world.now)  # the look read the rollout before the abort
    assert not outcome.applied and outcome.error == "concurrent update"
    assert world.rollout().phase == "aborted"


def test_the_analysis_and_the_transition_it_caused_are_stored_together_or_not_at_all(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["same"])
    world.start({"on_inconclusive": "rollback", "shadow": {"max_duration_s": 60}})
    world.tick()  # pending -> shadowing: nothing judged, no analysis
    stale = world.rollout()
    world.tick(10)  # a look that holds stores its analysis alone
    assert len(store.analyses.list(stale.id)) == 1
    actions.act(store, "churn", "pause", actor="alice", now=world.now)
    world.now += timedelta(seconds=61)
    from controller.loop.control import evaluate_rollout

    lost = evaluate_rollout(store, stale, now=world.now)  # it would roll back, but the rollout moved on
    assert not lost.applied and lost.error == "concurrent update"
    assert len(store.analyses.list(stale.id)) == 1, "the look's analysis went with its transition"
    actions.act(store, "churn", "resume", actor="alice", now=world.now)
    world.tick(61)  # this look rolls back: its analysis and its transition are written together
    analyses = store.analyses.list(stale.id)
    rollback = [e for e in store.events.list(rollout_id=stale.id) if e.action == "rollout.rollback"]
    assert (len(analyses), len(rollback)) == (2, 1)
    assert rollback[0].details["analysis_id"] == analyses[-1].id
    assert analyses[-1].metrics["controller"]["action"] == "rollback"


def test_a_controller_that_cannot_confirm_it_leads_writes_nothing_and_ends_its_pass(
    store: Store, tmp_path: Path, pipelines: dict[str, Any]
) -> None:
    world = World(store, tmp_path, champion=pipelines["good"], challenger=pipelines["same"])
    world.start()
    before = world.rollout()
    asked: list[int] = []

    def deposed() -> bool:
        asked.append(1)
        return False

    looks = evaluate_once(store, now=world.now, leading=deposed)
    assert [look.error for look in looks] == ["not leading"] and asked == [1]
    after = world.rollout()
    assert (after.phase, after.version) == ("pending", before.version)
    assert store.analyses.list(before.id) == []
    assert [actor for _, _, actor in world.transitions()] == ["alice"], "no event of the controller"
    assert evaluate_once(store, now=world.now, leading=lambda: True)[0].applied  # the leader moves it on
