"""Webhooks against real HTTP receivers on loopback: signed, retried, given up and recorded, never blocking."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from controller.config import Settings
from controller.loop import actions, webhooks
from storage import Store
from storage.entities import Column, Deployment, Event, NewEvent, NewPipelineVersion

SECRET = "s3cret-for-tests"


@dataclass
class Receiver:
    """A real HTTP server on loopback recording every POST; `statuses` are answered in order, then 200."""

    statuses: list[int] = field(default_factory=list)
    hang: threading.Event | None = None  # when set, requests wait until it is released
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        body = request.get_data()
        self.received.append((dict(request.headers), body))
        if self.hang is not None:
            self.hang.wait(10)
        status = self.statuses.pop(0) if self.statuses else 200
        return Response("{}", status=status, mimetype="application/json")(environ, start_response)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def serve() -> Iterator[Callable[..., Receiver]]:
    servers = []

    def start(**kw: Any) -> Receiver:
        receiver = Receiver(**kw)
        server = make_server("127.0.0.1", 0, receiver, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        receiver.url = f"http://127.0.0.1:{server.server_port}/hooks/T000/secret-part"
        servers.append((server, receiver))
        return receiver

    yield start
    for server, receiver in servers:
        if receiver.hang is not None:
            receiver.hang.set()
        server.shutdown()


def settings(*urls: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_urls": ",".join(urls), "webhook_secret": SECRET, "webhook_timeout_s": 0.5,
        "webhook_retries": 2, "webhook_backoff_s": 0.01, "webhook_interval": 0.02,
    }  # fmt: skip
    return Settings(**{**values, **overrides})


def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def churn(store: Store) -> Deployment:
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


def event(
    store: Store, deployment: Deployment, action: str, reason: str = "why", actor: str = "controller"
) -> Event:
    return store.events.add(
        NewEvent(
            actor=actor,
            action=action,
            reason=reason,
            message=f"{action} happened",
            deployment_id=deployment.id,
        )
    )


@pytest.fixture
def dispatchers() -> Iterator[list[webhooks.Dispatcher]]:
    started: list[webhooks.Dispatcher] = []
    yield started
    for dispatcher in started:
        dispatcher.stop(timeout=5)


def run(dispatchers: list[webhooks.Dispatcher], store: Store, config: Settings) -> webhooks.Dispatcher:
    dispatcher = webhooks.Dispatcher(store, config).start()
    dispatchers.append(dispatcher)
    until(
        lambda: all(
            store.cursors.get(webhooks.Dispatcher.cursor_name(u)) is not None for u in config.webhook_url_list
        )
    )
    return dispatcher


def test_operator_actions_reach_the_receiver_signed_with_text_and_fields(
    store: Store, churn: Deployment, serve: Callable[..., Receiver], dispatchers: list[webhooks.Dispatcher]
) -> None:
    receiver = serve()
    run(dispatchers, store, settings(receiver.url))
    actions.start_rollout(store, "churn", "churn:2", actor="alice", mode="shadow")
    actions.act(store, "churn", "abort", actor="alice", reason="wrong version")
    event(store, churn, "labels.upload")  # not a rollout transition: not sent
    until(lambda: len(receiver.received) >= 2)
    time.sleep(0.1)
    assert [b["event"] for b in receiver.bodies()] == ["created", "aborted"]
    for headers, body in receiver.received:
        # what a receiver computes itself, with the standard library only
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers[webhooks.SIGNATURE_HEADER] == expected
        assert headers["Content-Type"] == "application/json"
    aborted = receiver.bodies()[1]
    assert (
        aborted["deployment"] == "churn"
        and aborted["actor"] == "alice"
        and aborted["action"] == "rollout.abort"
    )
    assert aborted["text"].startswith("mlcanary · churn: rollout #") and "aborted" in aborted["text"]
    assert "wrong version" in aborted["text"]
    assert receiver.received[1][0][webhooks.DELIVERY_HEADER] == str(aborted["id"])


def test_a_first_start_does_not_replay_history(
    store: Store, churn: Deployment, serve: Callable[..., Receiver], dispatchers: list[webhooks.Dispatcher]
) -> None:
    event(store, churn, "rollout.pause")
    receiver = serve()
    run(dispatchers, store, settings(receiver.url))
    new = event(store, churn, "rollout.resume")
    until(lambda: len(receiver.received) >= 1)
    time.sleep(0.1)
    assert [b["id"] for b in receiver.bodies()] == [new.id]


def test_a_500_is_retried_with_backoff_until_delivered(
    store: Store, churn: Deployment, serve: Callable[..., Receiver], dispatchers: list[webhooks.Dispatcher]
) -> None:
    receiver = serve(statuses=[500, 503])
    run(dispatchers, store, settings(receiver.url))
    sent = event(store, churn, "rollout.advance")
    until(lambda: len(receiver.received) >= 3)
    time.sleep(0.1)
    assert [b["id"] for b in receiver.bodies()] == [sent.id] * 3
    assert len({body for _, body in receiver.received}) == 1  # the same signed body each time
    assert [e for e in store.events.list(limit=100) if e.action == "webhook.failed"] == []


def test_giving_up_after_the_retry_limit_is_recorded_and_the_next_event_still_goes_out(
    store: Store, churn: Deployment, serve: Callable[..., Receiver], dispatchers: list[webhooks.Dispatcher]
) -> None:
    receiver = serve(statuses=[500, 500, 500])
    run(dispatchers, store, settings(receiver.url, webhook_retries=2))
    lost = event(store, churn, "rollout.rollback", reason="veto")
    until(lambda: any(e.action == "webhook.failed" for e in store.events.list(limit=100)))
    failure = next(e for e in store.events.list(limit=100) if e.action == "webhook.failed")
    assert failure.details["event_id"] == lost.id
    assert (failure.details["attempts"], failure.details["status"]) == (3, 500)
    assert failure.deployment_id == churn.id and failure.actor == "webhooks"
    assert "secret-part" not in failure.message and "secret-part" not in json.dumps(failure.details)
    later = event(store, churn, "rollout.resume")
    until(lambda: len(receiver.received) >= 4)
    assert [b["id"] for b in receiver.bodies()] == [lost.id] * 3 + [later.id]
    assert receiver.bodies()[0]["event"] == "veto"


def test_a_refusing_receiver_is_not_retried(
    store: Store, churn: Deployment, serve: Callable[..., Receiver], dispatchers: list[webhooks.Dispatcher]
) -> None:
    receiver = serve(statuses=[404])
    run(dispatchers, store, settings(receiver.url))
    event(store, churn, "rollout.pause")
    until(lambda: any(e.action == "webhook.failed" for e in store.events.list(limit=100)))
    assert len(receiver.received) == 1


def test_a_hanging_receiver_blocks_neither_actions_nor_other_receivers(
    store: Store, churn: Deployment, serve: Callable[..., Receiver], dispatchers: list[webhooks.Dispatcher]
) -> None:
    stuck = serve(hang=threading.Event())
    healthy = serve()
    dispatcher = run(
        dispatchers, store, settings(stuck.url, healthy.url, webhook_retries=0, webhook_timeout_s=0.3)
    )
    actions.start_rollout(store, "churn", "churn:2", actor="alice")
    until(lambda: len(healthy.received) == 1)
    until(lambda: len(stuck.received) == 1)
    assert stuck.hang is not None and not stuck.hang.is_set()  # the stuck receiver is still hanging
    assert (
        actions.act(store, "churn", "abort", actor="alice").phase == "aborted"
    )  # the rollout moves on regardless
    until(lambda: len(healthy.received) == 2)
    until(lambda: len([e for e in store.events.list(limit=100) if e.action == "webhook.failed"]) >= 1)
    failure = next(e for e in store.events.list(limit=100) if e.action == "webhook.failed")
    assert "no answer within 0.3s" in failure.details["error"]
    stuck.hang.set()
    dispatcher.stop(timeout=5)
    assert not dispatcher.running


def test_after_a_restart_nothing_is_sent_twice_and_nothing_is_lost(
    store: Store, churn: Deployment, serve: Callable[..., Receiver], dispatchers: list[webhooks.Dispatcher]
) -> None:
    receiver = serve()
    config = settings(receiver.url)
    first = run(dispatchers, store, config)
    before = [event(store, churn, "rollout.advance") for _ in range(3)]
    until(lambda: len(receiver.received) == 3)
    first.stop(timeout=5)
    while_down = [event(store, churn, "rollout.pause"), event(store, churn, "rollout.resume")]
    run(dispatchers, store, config)
    until(lambda: len(receiver.received) == 5)
    time.sleep(0.1)
    assert [b["id"] for b in receiver.bodies()] == [e.id for e in before + while_down]


def test_a_standby_sends_nothing_until_it_leads(
    store: Store, churn: Deployment, serve: Callable[..., Receiver], dispatchers: list[webhooks.Dispatcher]
) -> None:
    receiver = serve()
    leading = threading.Event()
    config = settings(receiver.url)
    store.cursors.set(webhooks.Dispatcher.cursor_name(receiver.url), store.events.last_id())
    dispatchers.append(webhooks.Dispatcher(store, config, leading=leading.is_set).start())
    sent = event(store, churn, "rollout.pause")
    time.sleep(0.2)
    assert receiver.received == []
    leading.set()
    until(lambda: len(receiver.received) == 1)
    assert receiver.bodies()[0]["id"] == sent.id


def test_no_url_means_no_thread(store: Store) -> None:
    dispatcher = webhooks.Dispatcher(store, Settings()).start()
    assert not dispatcher.running
    dispatcher.stop()


def test_signature_is_hmac_sha256_as_published_in_rfc_4231() -> None:
    # RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert webhooks.sign("Jefe", b"what do ya want for nothing?") == "sha256=" + expected


def test_signatures_verify_only_the_exact_body_and_secret() -> None:
    body = b'{"text":"hi"}'
    header = webhooks.sign(SECRET, body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert webhooks.verify(SECRET, body, header)
    assert not webhooks.verify(SECRET, body + b" ", header)
    assert not webhooks.verify("other", body, header)
    assert not webhooks.verify(SECRET, body, None)


def test_urls_are_shown_without_their_secret_path() -> None:
    assert webhooks.redact("https://hooks.slack.com/services/T0/B0/XYZ?x=1") == "https://hooks.slack.com/…"
    assert webhooks.redact("http://127.0.0.1:8080/a") == "http://127.0.0.1:8080/…"
