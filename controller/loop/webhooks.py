"""Webhooks: POST every rollout event as signed JSON to the configured URLs, off the control loop.

    dispatcher = webhooks.Dispatcher(store, settings)   # MLCANARY_WEBHOOK_URLS, _SECRET, _TIMEOUT_S, _RETRIES
    dispatcher.start()                                   # one daemon thread per URL
    ...
    dispatcher.stop()

The dispatcher reads the event log (`store.events.list(after_id=cursor)`), so the code that changes a
rollout never waits for a receiver: it only writes its event, as it does anyway. Each URL has its own
thread and its own cursor in storage (`store.cursors`, name ``webhook:<sha256 of the URL>``): a slow or
dead receiver delays nobody else, and after a restart delivery resumes after the last event handled —
a first start begins at the newest event, never replaying history. Delivery is at least once: an event
whose delivery was under way when the process stopped is sent again, so receivers dedupe on
`X-Mlcanary-Delivery` (the event id).

Body: JSON with a human ``text`` (a Slack-style incoming webhook accepts it unchanged) and structured
fields (``event``, ``deployment``, ``rollout_id``, ``action``, ``reason``, ...). Header
``X-Mlcanary-Signature: sha256=<hex>`` is the HMAC-SHA256 of the raw body under MLCANARY_WEBHOOK_SECRET.
A 2xx answer is a delivery; a timeout, a connection error, 408, 429 or 5xx is retried up to
MLCANARY_WEBHOOK_RETRIES times with exponential backoff; other 4xx are not retried. A delivery that
gives up is recorded as a ``webhook.failed`` event (never forwarded itself) and the cursor moves on.

Run it in the process that runs the controller loop, not in gunicorn workers, and pass
``leading=`` (e.g. a flag the loop sets while it holds the leadership): every process whose
dispatcher sends would send every event.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from controller.config import Settings
from controller.encoding import dumps
from storage import NotFound, StorageError, Store
from storage.entities import Event, NewEvent

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Mlcanary-Signature"
DELIVERY_HEADER = "X-Mlcanary-Delivery"
EVENT_HEADER = "X-Mlcanary-Event"
ACTOR = "webhooks"
BATCH = 100
_RETRY_STATUSES = frozenset({408, 425, 429})

# event action (and, for a rollback, its reason) -> the kind a receiver sees
_KINDS = {
    "rollout.create": "created",
    "rollout.start": "started",
    "rollout.advance": "step_advanced",
    "rollout.watch": "watching",
    "rollout.pause": "paused",
    "rollout.resume": "resumed",
    "rollout.promote": "promoted",
    "rollout.rollback": "rolled_back",
    "rollout.abort": "aborted",
}
_VERBS = {
    "created": "was created", "started": "started", "step_advanced": "advanced a step", "paused": "paused",
    "resumed": "resumed", "promoted": "was promoted", "rolled_back": "was rolled back", "aborted": "was aborted",
    "watching": "was promoted under watch (the previous champion scores in shadow)",
    "veto": "was vetoed and rolled back",
}  # fmt: skip


def sign(secret: str, body: bytes) -> str:
    """Return the signature header value for a body: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """Check a signature header against a body in constant time (what a receiver does)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def kind_of(event: Event) -> str | None:
    """Return the webhook kind of an event, or None if it is not sent (not a rollout transition)."""
    kind = _KINDS.get(event.action)
    if kind == "rolled_back" and event.reason == "veto":
        return "veto"
    return kind


def payload(event: Event, deployment: str | None) -> dict[str, Any]:
    """Build the JSON body of one event: a human `text` plus structured fields."""
    kind = kind_of(event) or event.action
    where = deployment or (f"deployment {event.deployment_id}" if event.deployment_id else "mlcanary")
    rollout = f"rollout #{event.rollout_id}" if event.rollout_id else "rollout"
    text = f"mlcanary · {where}: {rollout} {_VERBS.get(kind, kind)} — {event.message} (by {event.actor})"
    return {
        "text": text,
        "event": kind,
        "id": event.id,
        "at": event.at.isoformat(),
        "deployment": deployment,
        "deployment_id": event.deployment_id,
        "rollout_id": event.rollout_id,
        "action": event.action,
        "reason": event.reason,
        "message": event.message,
        "actor": event.actor,
        "details": event.details,
    }


def redact(url: str) -> str:
    """Show a URL without its path and query (incoming-webhook URLs carry their secret there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/…"


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    status: int | None
    error: str | None


class Dispatcher:
    """Send rollout events to every configured URL from background threads, one per URL."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        on_outcome: Callable[[str, Event, Delivery], None] | None = None,
        leading: Callable[[], bool] | None = None,
    ) -> None:
        """`leading`, if given, gates every pass: while it answers False (a standby controller) nothing
        is sent, and the stored cursor is read afresh once it answers True again."""
        self.store = store
        self.settings = settings
        self.urls = settings.webhook_url_list
        self._transport = transport
        self._on_outcome = on_outcome
        self._leading = leading
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._names: dict[int, str | None] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Dispatcher:
        """Start one daemon thread per URL (none if no URL is configured); return self."""
        if self._threads:
            return self
        self._stop.clear()
        for url in self.urls:
            thread = threading.Thread(
                target=self._run, args=(url,), name=f"mlcanary-webhook-{redact(url)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Ask the threads to stop and wait for them (at most about one delivery timeout)."""
        self._stop.set()
        wait = self.settings.webhook_timeout_s + 1.0 if timeout is None else timeout
        for thread in self._threads:
            thread.join(wait)
        self._threads = []

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # ------------------------------------------------------------------ the loop of one URL
    @staticmethod
    def cursor_name(url: str) -> str:
        return "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:32]

    def _run(self, url: str) -> None:
        name = self.cursor_name(url)
        interval = self.settings.webhook_interval
        with httpx.Client(timeout=self.settings.webhook_timeout_s, transport=self._transport) as client:
            cursor: int | None = None
            while not self._stop.is_set():
                if self._leading is not None and not self._leading():
                    cursor = None  # another process may send meanwhile: re-read the cursor when leading again
                    self._stop.wait(interval)
                    continue
                try:
                    if cursor is None:
                        cursor = self._initial_cursor(name)
                    cursor = self._pass(client, url, name, cursor)
                except StorageError as error:  # the database is away: try again later, lose nothing
                    log.warning("webhooks: storage unavailable (%s); retrying", error)
                    cursor = None
                    self._stop.wait(interval)
                    continue
                except Exception:  # never let one bad event kill the thread silently
                    log.exception("webhooks: unexpected error")
                    cursor = None
                self._stop.wait(interval)

    def _initial_cursor(self, name: str) -> int:
        stored = self.store.cursors.get(name)
        if stored is not None:
            return stored
        start = self.store.events.last_id()  # a first start sends what happens from now on, not history
        self.store.cursors.set(name, start)
        return start

    def _pass(self, client: httpx.Client, url: str, name: str, cursor: int) -> int:
        """Handle every event after cursor (in batches) and return the new cursor."""
        while not self._stop.is_set():
            events = self.store.events.list(after_id=cursor, limit=BATCH)
            if not events:
                return cursor
            for event in events:
                if kind_of(event) is not None:
                    outcome = self._deliver(client, url, event)
                    if outcome is None:  # stopping mid-delivery: send it again after the restart
                        return cursor
                    if not outcome.delivered:
                        self._record_failure(url, event, outcome)
                    if self._on_outcome is not None:
                        self._on_outcome(url, event, outcome)
                    cursor = self._advance(name, cursor, event.id)
            cursor = self._advance(name, cursor, events[-1].id)
        return cursor

    def _advance(self, name: str, cursor: int, position: int) -> int:
        if position == cursor:
            return cursor
        if not self.store.cursors.set(name, position, expected=cursor):
            # another dispatcher moved this cursor (two controllers?): follow it rather than resend
            log.warning("webhooks: cursor %s moved elsewhere; following it", name)
            return self.store.cursors.get(name) or position
        return position

    # ------------------------------------------------------------------ one delivery
    def _deliver(self, client: httpx.Client, url: str, event: Event) -> Delivery | None:
        body = dumps(payload(event, self._deployment_name(event.deployment_id))).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "mlcanary-webhooks/1",
            DELIVERY_HEADER: str(event.id),
            EVENT_HEADER: kind_of(event) or event.action,
        }
        if self.settings.webhook_secret:
            headers[SIGNATURE_HEADER] = sign(self.settings.webhook_secret, body)
        attempts_allowed = 1 + self.settings.webhook_retries
        status: int | None = None
        error: str | None = None
        for attempt in range(1, attempts_allowed + 1):
            try:
                response = client.post(url, content=body, headers=headers)
                status, error = response.status_code, None
                if 200 <= status < 300:
                    return Delivery(True, attempt, status, None)
                if status < 500 and status not in _RETRY_STATUSES:
                    return Delivery(
                        False, attempt, status, f"HTTP {status}"
                    )  # the receiver refuses: no retry
                error = f"HTTP {status}"
            except httpx.TimeoutException:
                status, error = None, f"no answer within {self.settings.webhook_timeout_s:g}s"
            except httpx.HTTPError as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            if attempt < attempts_allowed:
                delay = self.settings.webhook_backoff_s * 2 ** (attempt - 1)
                if self._stop.wait(delay):
                    return None
        return Delivery(False, attempts_allowed, status, error)

    def _record_failure(self, url: str, event: Event, outcome: Delivery) -> None:
        log.warning("webhook to %s failed for event %s: %s", redact(url), event.id, outcome.error)
        self.store.events.add(
            NewEvent(
                actor=ACTOR,
                action="webhook.failed",
                reason="delivery_failed",
                message=f"webhook {redact(url)} gave up on event {event.id} after {outcome.attempts} "
                f"attempt(s): {outcome.error}",
                deployment_id=event.deployment_id,
                rollout_id=event.rollout_id,
                details={
                    "event_id": event.id,
                    "url": redact(url),
                    "attempts": outcome.attempts,
                    "status": outcome.status,
                    "error": outcome.error,
                },
            )  # fmt: skip
        )

    def _deployment_name(self, deployment_id: int | None) -> str | None:
        if deployment_id is None:
            return None
        if deployment_id not in self._names:
            try:
                self._names[deployment_id] = self.store.deployments.get_by_id(deployment_id).name
            except NotFound:
                self._names[deployment_id] = None
        return self._names[deployment_id]
