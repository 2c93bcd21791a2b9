"""Bearer-token authentication and the two roles of the admin API.

    viewer     may call every GET (and HEAD/OPTIONS) route of /api/v1
    operator   may call everything

Tokens are created and revoked with `mlcanary tokens create|revoke`; storage keeps only their SHA-256
and compares digests with `hmac.compare_digest`. This layer never compares a secret itself: it checks
the header's shape before any database work, then asks storage. The API calls `authorize` in a
`before_request` hook, so a refused request never reaches a view and changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from controller.http.errors import AuthError
from storage import Store

__all__ = ["AuthError", "Principal", "authorize", "bearer_token", "required_role"]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ROLE_RANK = {"viewer": 0, "operator": 1}
# Tokens minted by storage are "mlc_" + 43 URL-safe characters; accept any sane bearer token shape.
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9._~+/=-]{8,512}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (the actor recorded in events) and its role."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        """Return whether this principal holds `role` or a stronger one."""
        return ROLE_RANK.get(self.role, -1) >= ROLE_RANK[role]


def required_role(method: str) -> str:
    """Return the role a request method needs: reads need viewer, anything else operator."""
    return "viewer" if method.upper() in READ_METHODS else "operator"


def bearer_token(header: str | None) -> str:
    """Extract the token of an `Authorization: Bearer <token>` header; AuthError 401 otherwise."""
    if not header:
        raise AuthError(401, "missing_token", "send an admin token as 'Authorization: Bearer <token>'")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError(401, "malformed_token", "the Authorization header must be 'Bearer <token>'")
    if not _TOKEN_SHAPE.match(token):
        raise AuthError(401, "malformed_token", "the bearer token has an impossible shape")
    return token


def authenticate(store: Store, header: str | None) -> Principal:
    """Return the principal of a live token named by the header; AuthError 401 if there is none."""
    token = bearer_token(header)
    found = store.tokens.verify(token)  # digest lookup + hmac.compare_digest, revoked tokens excluded
    if found is None or found.revoked_at is not None:
        raise AuthError(401, "invalid_token", "the token is unknown or revoked")
    return Principal(name=found.name, role=found.role)


def authorize(store: Store, header: str | None, method: str) -> Principal:
    """Authenticate, then check the role a request method needs; AuthError 401/403 if refused."""
    principal = authenticate(store, header)
    role = required_role(method)
    if not principal.may(role):
        raise AuthError(
            403, "forbidden", f"token {principal.name!r} has role {principal.role}; this request needs {role}"
        )
    return principal
