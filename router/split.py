"""Sticky traffic split: a keyed hash of (rollout, routing key) into 10,000 buckets.

A key whose bucket is below weight × 100 goes to the challenger, so the share of keys answered by
the challenger is the weight (in percent) and the ramp is monotone: a key on the challenger at weight
w stays there at every larger weight of the same rollout. A new rollout reshuffles the keys.

The hash is keyed with the rollout's split salt, a random secret generated when the rollout starts
and stored with it (never shown by the API or the CLI). Without it a client could compute, from the
public routing key and the sequential rollout id, which keys land on the challenger and send only
those (a forced rollback by SRM or by loading the challenger with chosen inputs). Every router
process reads the same salt from storage, so a key keeps its arm across processes and restarts.
Rollouts started before salts existed have none and keep the unkeyed hash: upgrading never moves
a key of a rollout in progress.
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000
CHAMPION = "champion"
CHALLENGER = "challenger"
_PERSON = b"mlcanary-split"


def routing_key_hash(routing_key: str, rollout_id: int | None, salt: str | None = None) -> int:
    """Hash a routing key within a rollout to a non-negative 63-bit int (fits a signed BIGINT).

    With a salt (hex) the hash is BLAKE2b keyed by it; without one it is the unkeyed hash of
    rollouts started before salts existed.
    """
    message = f"{rollout_id}\x1f{routing_key}".encode()
    if salt is None:
        digest = hashlib.blake2b(message, digest_size=8).digest()
    else:
        digest = hashlib.blake2b(message, digest_size=8, key=bytes.fromhex(salt), person=_PERSON).digest()
    return int.from_bytes(digest, "big") >> 1


def bucket_of(key_hash: int) -> int:
    """Return the bucket (0..9,999) of a routing-key hash."""
    return key_hash % BUCKETS


def assign_arm(routing_key: str, rollout_id: int | None, weight: float, salt: str | None = None) -> str:
    """Return "challenger" or "champion" for a key at a canary weight given in percent (0..100)."""
    return arm_for_hash(routing_key_hash(routing_key, rollout_id, salt), weight)


def arm_for_hash(key_hash: int, weight: float) -> str:
    """Return the arm of an already hashed key at a canary weight in percent."""
    return CHALLENGER if bucket_of(key_hash) < weight * 100 else CHAMPION


def sampled(request_id: str, rate: float) -> bool:
    """Decide, stably per request id, whether a request falls in a share rate (0..1) of traffic."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8, person=b"shadow").digest()
    return int.from_bytes(digest, "big") % BUCKETS < rate * BUCKETS
