"""`mlcanary rollout ...` and `mlcanary labels upload`: operators' commands.

By default they work on the database directly, through `controller.loop.actions` (actor ``cli:<user>``);
with ``--api URL`` (and ``--token``, or MLCANARY_API_URL / MLCANARY_TOKEN) they go through the admin
API instead, as the token's owner. Mistakes give one line on stderr and exit status 1.

    mlcanary rollout start churn --challenger churn:2 --mode canary --policy policy.yaml
    mlcanary rollout promote churn --full --reason "looks good"
    mlcanary rollout status churn --json
    mlcanary labels upload churn labels.csv          # request_id,label[,row][,outcome]
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from controller.cli.common import actor, api_of, clock_of
from controller.cli.remote import ApiClient
from controller.core.rollout_actions import ACTION_HELP, ROLLOUT_ACTIONS  # the one list; imports nothing

if TYPE_CHECKING:
    from storage import Store

# Labels accepted in one feedback request (controller.http.feedback.MAX_LABELS; a test checks they agree):
# a literal here keeps Flask and SQLAlchemy out of `mlcanary rollout ... --api` (bench/cli_speed.py).
MAX_LABELS = 10_000


def _remote(ctx: click.Context) -> ApiClient | None:
    """The admin API client when --api is given (on this group, or globally), else None."""
    obj = ctx.find_object(_Remote)
    if obj is not None and obj.url:
        return ApiClient(obj.url, obj.token)
    given = api_of(ctx)
    return ApiClient(*given) if given else None


class _Remote:
    def __init__(self, url: str | None, token: str | None) -> None:
        self.url, self.token = url, token


_api_option = click.option(
    "--api", "api_url", help="Go through this admin API URL (as the global --api; MLCANARY_API_URL)."
)
_token_option = click.option("--token", help="Admin API token (with --api; MLCANARY_TOKEN).")


def _store(ctx: click.Context) -> Store:
    from controller.cli.common import store_of

    return store_of(ctx)


def _describe(rollout: dict[str, Any] | Any) -> str:
    r = rollout if isinstance(rollout, dict) else _rollout_dict(rollout)
    return (
        f"rollout {r['id']} {r['phase']} (mode {r['mode']}, step {r['step_index']}, "
        f"challenger {r['canary_weight']:g}%, shadow {r['shadow_rate']:g})"
    )


def _rollout_dict(rollout: Any) -> dict[str, Any]:
    return {
        "id": rollout.id, "phase": rollout.phase, "mode": rollout.mode, "step_index": rollout.step_index,
        "canary_weight": rollout.canary_weight, "shadow_rate": rollout.shadow_rate,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- rollout
@click.group("rollout")
@_api_option
@_token_option
@click.pass_context
def rollout(ctx: click.Context, api_url: str | None, token: str | None) -> None:
    """Start, promote, roll back, pause, resume or abort rollouts; show status and events."""
    ctx.obj = _Remote(api_url, token)


@rollout.command("start")
@click.argument("deployment")
@click.option("--challenger", required=True, help="The challenger, NAME:VERSION.")
@click.option(
    "--mode", type=click.Choice(["shadow", "canary", "shadow_then_canary"]), help="Overrides the policy's."
)
@click.option(
    "--policy", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Policy file (.yaml, .yml or .json); default: the default policy.",
)  # fmt: skip
@click.option("--reason", default="", help="Why (kept in the event log).")
@click.pass_context
def start(
    ctx: click.Context,
    deployment: str,
    challenger: str,
    mode: str | None,
    policy_file: Path | None,
    reason: str,
) -> None:
    """Start a rollout of a challenger on DEPLOYMENT."""
    remote = _remote(ctx)
    if remote is not None:
        body: dict[str, Any] = {"challenger": challenger}
        if mode:
            body["mode"] = mode
        if policy_file is not None:
            body["policy"] = _read_policy(policy_file)
        if reason:
            body["reason"] = reason
        started = remote.call("POST", f"/deployments/{deployment}/rollouts", body)
        click.echo(f"{deployment}: started {_describe(started)} of {started['challenger']}")
        return
    from controller.app import parity_check
    from controller.cli.common import settings_of
    from controller.loop import actions

    created = actions.start_rollout(
        _store(ctx), deployment, challenger, actor=actor(), mode=mode, policy=policy_file, reason=reason,
        now=clock_of(ctx)(), parity_check=parity_check(settings_of(ctx)),
    )  # fmt: skip
    click.echo(f"{deployment}: started {_describe(created)} of {challenger}")


def _read_policy(path: Path) -> dict[str, Any]:
    """Read a policy file into a mapping (validated by the server, which names any bad field)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except yaml.YAMLError as error:
        from controller.core.policy import yaml_error_text

        raise click.ClickException(f"cannot read policy {path.name}: {yaml_error_text(error)}") from error
    except (OSError, ValueError) as error:
        raise click.ClickException(f"cannot read policy {path.name}: {str(error).splitlines()[0]}") from error
    if not isinstance(data, dict):
        raise click.ClickException(f"policy {path.name} must hold a mapping")
    return data


def _action_command(name: str) -> click.Command:
    @click.pass_context
    def command(ctx: click.Context, deployment: str, reason: str, full: bool = False) -> None:
        remote = _remote(ctx)
        if remote is not None:
            body: dict[str, Any] = {"reason": reason} if reason else {}
            if full:
                body["full"] = True
            done = remote.call("POST", f"/deployments/{deployment}/rollout/{name}", body)
            click.echo(f"{deployment}: {_describe(done)}")
            return
        from controller.loop import actions  # lazily: keeps `mlcanary --help` fast (see cli/main.py)

        result = actions.act(
            _store(ctx), deployment, name, actor=actor(), full=full, reason=reason, now=clock_of(ctx)()
        )
        click.echo(f"{deployment}: {_describe(result)}")

    help_text = _action_help(name)
    command.__doc__ = help_text
    params: list[click.Parameter] = [
        click.Argument(["deployment"]),
        click.Option(["--reason"], default="", help="Why (kept in the event log)."),
    ]
    if name == "promote":
        params.append(
            click.Option(["--full"], is_flag=True, help="Straight to 100%: the challenger becomes champion.")
        )
    return click.Command(name, callback=command, params=params, help=help_text)


def _action_help(name: str) -> str:
    return ACTION_HELP[name].replace("with full", "with --full")  # type: ignore[index]


for _name in ROLLOUT_ACTIONS:
    rollout.add_command(_action_command(_name))


@rollout.command("status")
@click.argument("deployment")
@click.option("--json", "as_json", is_flag=True, help="The same document as GET /api/v1/deployments/NAME.")
@click.pass_context
def status(ctx: click.Context, deployment: str, as_json: bool) -> None:
    """Show DEPLOYMENT's verdict sentence, phase, weights, step, live figures per arm and last verdicts."""
    remote = _remote(ctx)
    if remote is not None:
        document = remote.call("GET", f"/deployments/{deployment}")
    else:
        from controller import encoding
        from controller.http import documents  # not controller.http.api: no Flask, pandas or SciPy here

        store = _store(ctx)
        found = store.deployments.get(deployment)
        document = encoding.plain(documents.deployment_json(store, found, detail=True, now=clock_of(ctx)()))
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    for line in status_lines(document):
        click.echo(line)


def status_lines(d: dict[str, Any]) -> Iterator[str]:
    """Render a deployment document (GET /api/v1/deployments/NAME) for a terminal."""
    yield f"{d['name']}: champion {d['champion']}" + (
        f", challenger {d['challenger']}" if d["challenger"] else ""
    )
    r = d.get("rollout")
    if r is None:
        yield "no rollout yet"
        return
    if d.get("verdict"):
        yield d["verdict"]
    w = d["weights"] if r["active"] else {"champion": 100.0, "challenger": 0.0, "shadow_rate": 0.0}
    yield (
        f"rollout {r['id']}: {r['phase']}, mode {r['mode']}, step {r['step_index']}, "
        f"traffic champion {w['champion']:g}% / challenger {w['challenger']:g}%, shadow rate {w['shadow_rate']:g}"
        + (f", ended: {r.get('reason_message') or r['reason']}" if r.get("ended_at") else "")
    )
    if r["phase"] == "paused":
        yield f"paused: {r.get('reason_message') or r['reason']}"
    if r["phase"] == "watching":
        yield (
            f"post-promotion watch: {r['challenger']} answers every request, the previous champion "
            f"{r['champion']} scores in shadow until labels prove the challenger (proven harm restores it)"
        )
    live = d.get("live")
    if live:
        yield f"step {live['step']}: {live['requests']:,} requests"
        for arm, f in live["arms"].items():
            rate = "-" if f["error_rate"] is None else f"{100 * f['error_rate']:.2f}%"
            lat = f["latency_ms"]
            p50 = "-" if lat["p50"] is None else f"{lat['p50']:.1f}"
            p99 = "-" if lat["p99"] is None else f"{lat['p99']:.1f}"
            yield (
                f"  {arm:<10} served {f['served']:>8,}  scored {f['scored']:>8,}  errors {f['errors']:>6,} ({rate})"
                f"  latency p50 {p50} ms  p99 {p99} ms"
            )
        sh = live.get("shadow")
        if sh and sh["sampled"]:
            skipped = ", ".join(f"{reason} {n:,}" for reason, n in sh["skipped"].items()) or "none"
            wait = sh["queue_wait_ms"]
            mean = "-" if wait["mean"] is None else f"{wait['mean']:.1f}"
            peak = "-" if wait["max"] is None else f"{wait['max']:.1f}"
            yield (
                f"  shadow     coverage {100 * sh['coverage']:.1f}% ({sh['scored']:,} of {sh['sampled']:,} sampled "
                f"scored), effective share {sh['effective_share']:.3g}, skipped: {skipped}; "
                f"queue wait mean {mean} ms, max {peak} ms"
            )
    a = d.get("last_analysis")
    if a:
        yield f"last analysis {a['evaluated_at']} (step {a['step']}): {a['outcome']}"
        said = str((a.get("metrics") or {}).get("judgement") or "")
        if said.startswith("hold: "):  # a final promotion held for the labels (delay, outcome-dependent)
            yield f"  {said.split('; ')[0]}"
        done = not r["active"]
        width = max([14, *(len(v.get("gate") or v.get("name") or "?") for v in a["verdicts"])])
        for verdict in a["verdicts"]:
            name = verdict.get("gate") or verdict.get("name") or "?"
            role = verdict.get("role") or "-"
            outcome = verdict.get("outcome", "?")
            if role == "informational" and outcome == "fail":
                outcome = "noted"  # informational: reported, never decides (not a failure of the rollout)
            detail = verdict.get("reason") or verdict.get("message") or ""
            yield f"  {name:<{width}} {role:<13} {outcome:<13} {detail}"  # one column each, however long
        if done:
            yield f"  (verdicts of the last look before the rollout ended {r['phase']})"


@rollout.command("events")
@click.argument("deployment")
@click.option("--after-id", type=int, default=0, show_default=True, help="Only events after this id.")
@click.option("--limit", type=click.IntRange(1, 1000), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def events(ctx: click.Context, deployment: str, after_id: int, limit: int, as_json: bool) -> None:
    """List DEPLOYMENT's events (the audit log), oldest first."""
    remote = _remote(ctx)
    if remote is not None:
        listed = remote.call("GET", f"/deployments/{deployment}/events", after_id=after_id, limit=limit)[
            "events"
        ]
    else:
        from controller import encoding
        from controller.http import documents

        store = _store(ctx)
        found = store.events.list(
            deployment_id=store.deployments.get(deployment).id, after_id=after_id, limit=limit
        )
        listed = [encoding.plain(documents.event_json(e)) for e in found]
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    if not listed:
        click.echo(f"{deployment}: no events")
    for e in listed:
        rollout_part = f" rollout {e['rollout_id']}" if e["rollout_id"] else ""
        click.echo(
            f"{e['id']:>6}  {e['at'][:19]}  {e['actor']:<16} {e['action']:<18}{rollout_part}  {e['message']}"
        )


# ---------------------------------------------------------------------------------------------- labels
@click.group("labels")
@_api_option
@_token_option
@click.pass_context
def labels(ctx: click.Context, api_url: str | None, token: str | None) -> None:
    """Upload ground-truth labels."""
    ctx.obj = _Remote(api_url, token)


def read_labels(path: Path) -> list[tuple[str, int, Any, float | None, float | None]]:
    """Read a CSV with columns request_id and label and/or outcome, optionally row; numbers become numbers.

    An empty label or outcome cell means "not given" when the other one is there. ClickException if malformed.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            if (
                "request_id" not in columns
                or not columns & {"label", "outcome"}
                or columns - {"request_id", "label", "row", "outcome", "outcome_base"}
            ):
                raise click.ClickException(
                    f"{path.name} must have the columns request_id, label and/or outcome, and optionally row; "
                    f"it has {sorted(columns)}"
                )
            items = [
                {"request_id": line["request_id"],
                 **({"label": _scalar(line.get("label") or "")}
                    if line.get("label") not in (None, "") or line.get("outcome") in (None, "") else {}),
                 **({"outcome": _scalar(line["outcome"])} if line.get("outcome") not in (None, "") else {}),
                 **({"outcome_base": _scalar(line["outcome_base"])}
                    if line.get("outcome_base") not in (None, "") else {}),
                 **({"row": _row(line.get("row"), number)} if line.get("row") not in (None, "") else {})}
                for number, line in enumerate(reader, start=2)
            ]  # fmt: skip
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise click.ClickException(f"cannot read {path.name}: {error}") from error
    if not items:
        raise click.ClickException(f"{path.name} has no labels")
    from controller.http import feedback

    try:
        chunks = [items[i : i + MAX_LABELS] for i in range(0, len(items), MAX_LABELS)]
        return [t for chunk in chunks for t in feedback.parse_labels({"labels": chunk})]
    except feedback.LabelsError as error:
        raise click.ClickException(f"{path.name}: {error.message}") from error


def _row(text: str | None, line: int) -> int:
    try:
        return int(text or 0)
    except ValueError as error:
        raise click.ClickException(f"line {line}: row must be an integer, got {text!r}") from error


def _scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return value if kind is int or value == value and abs(value) != float("inf") else text
    return text


@labels.command("upload")
@click.argument("deployment")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def labels_upload(ctx: click.Context, deployment: str, file: Path) -> None:
    """Store the labels and/or outcomes of FILE.csv (request_id,label[,row][,outcome]) for DEPLOYMENT's earlier requests."""
    from controller.http import feedback

    triples = read_labels(file)
    batches = [triples[i : i + MAX_LABELS] for i in range(0, len(triples), MAX_LABELS)]
    remote = _remote(ctx)
    store: Store | None = None if remote is not None else _store(ctx)
    if store is not None:
        rule = feedback.label_rule(store, deployment)  # an unknown deployment fails before any work
        for number, (_rid, _row, value, *_outcomes) in enumerate(triples):
            problem = None if value is None else rule(value)  # a row may carry only an outcome
            if problem is not None:
                raise click.ClickException(f"{file.name} line {number + 2}: label {value!r} is not {problem}")
    stored, unknown = 0, []
    stderr = sys.stderr
    with click.progressbar(
        batches, label=f"uploading {len(triples):,} labels", file=stderr, show_pos=True
    ) as bar:
        for batch in bar:
            if store is not None:
                result = feedback.store_labels(store, deployment, batch)
            else:
                assert remote is not None
                body = {
                    "labels": [
                        {"request_id": r, "row": i,
                         **({"label": v} if v is not None else {}), **({"outcome": o} if o is not None else {}),
                         **({"outcome_base": b} if b is not None else {})}
                        for r, i, v, o, b in batch
                    ]
                }  # fmt: skip
                result = remote.call("POST", f"/deployments/{deployment}/labels", body)
            stored += result["stored"]
            unknown.extend(result["unknown_request_ids"])
    if store is not None:
        from storage.entities import NewEvent

        store.events.add(
            NewEvent(
                actor=actor(), action="labels.upload", reason="labels uploaded",
                message=f"{stored} labels stored from {file.name}, {len(unknown)} unknown request ids",
                deployment_id=store.deployments.get(deployment).id,
                details={"stored": stored, "unknown": len(unknown), "file": file.name},
            )
        )  # fmt: skip
    click.echo(f"{deployment}: stored {stored:,} labels; {len(unknown):,} unknown request ids")
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        click.echo(f"request ids with no paired output yet (labels kept until it lands): {shown}", err=True)
