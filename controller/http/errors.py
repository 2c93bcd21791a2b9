"""The control plane's HTTP errors and the one handler that renders every error as JSON.

    HttpError (Exception)                   status, code, message
    ├── ApiError                            admin API: bad input, unknown action, ...     400/404/413/415
    ├── AuthError                           401 no/bad token · 403 wrong role
    └── LabelsError (ValueError)            feedback and labels upload: a bad labels body   400/413/415

Errors raised below the HTTP layer carry their status and code as class attributes, as the data
plane's do (router/errors.py): ``PolicyError`` 422 invalid_policy, ``ActionError`` 409
invalid_transition, ``RegistrationError`` 400 invalid_registration. Storage knows no HTTP: its errors
are given a status here (``STORAGE_STATUSES``). Anything else is a 500 whose details go to the log.

Every answer is ``{"error": {"code", "message"}}`` written by controller.encoding.
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app
from werkzeug.exceptions import HTTPException

from controller.encoding import dumps
from storage import (
    AlreadyExists,
    ConcurrentUpdate,
    DataRefused,
    InUse,
    InvalidName,
    InvalidState,
    NotFound,
    StorageError,
    Unavailable,
)

__all__ = [
    "ApiError",
    "AuthError",
    "HttpError",
    "LabelsError",
    "error_response",
    "json_response",
    "render_error",
    "status_of",
]

# Most specific first: (storage error class, status, code).
STORAGE_STATUSES: tuple[tuple[type[StorageError], int, str], ...] = (
    (NotFound, 404, "not_found"),
    (AlreadyExists, 409, "already_exists"),
    (InvalidName, 400, "invalid_name"),
    (DataRefused, 400, "invalid_value"),
    (InUse, 409, "in_use"),
    (InvalidState, 409, "conflict"),
    (ConcurrentUpdate, 409, "concurrent_update"),
    (Unavailable, 503, "storage_unavailable"),
    (StorageError, 500, "storage_error"),
)
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class HttpError(Exception):
    """A request cannot be served as asked; carries its HTTP status and a stable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ApiError(HttpError):
    """The admin API refuses a request (bad input, unknown action, wrong media type...)."""


class AuthError(HttpError):
    """A request is refused: 401 (no valid token) or 403 (a valid token without the role)."""


class LabelsError(HttpError, ValueError):
    """A labels body is invalid."""


def json_response(payload: Any, status: int = 200) -> Response:
    """Answer JSON written by controller.encoding (NaN and infinities null, datetimes ISO 8601)."""
    return Response(dumps(payload), status=status, mimetype="application/json")


def error_response(status: int, code: str, message: str) -> Response:
    """Answer ``{"error": {"code": ..., "message": ...}}`` with a status."""
    response = json_response({"error": {"code": code, "message": message}}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mlcanary"'
    return response


def status_of(error: BaseException) -> tuple[int, str, str]:
    """Return the status, code and message an error is answered with."""
    if isinstance(error, HTTPException):
        status = error.code or 500
        code = _HTTP_CODES.get(status, (error.name or "error").lower().replace(" ", "_"))
        return status, code, error.description or error.name
    carried_status, carried_code = getattr(error, "status", None), getattr(error, "code", None)
    if isinstance(carried_status, int) and isinstance(carried_code, str):
        return carried_status, carried_code, str(getattr(error, "message", None) or error)
    for kind, status, code in STORAGE_STATUSES:
        if isinstance(error, kind):
            return status, code, str(error)
    return 500, "internal_error", str(error)


def render_error(error: Exception) -> Response:
    """Render any error as JSON with its status; an unexpected one is logged and answered 500."""
    status, code, message = status_of(error)
    if status >= 500 and status != 503:
        current_app.logger.exception("%s", code)
        return error_response(500, "internal_error", "internal error; see the logs")
    if isinstance(error, Unavailable):  # no database address or driver text for an anonymous caller
        current_app.logger.warning("storage unavailable: %s", error)
        return error_response(503, code, "storage is unavailable; try again later")
    response = error_response(status, code, message)
    if isinstance(error, HTTPException) and status == 405:
        allow = error.get_response().headers.get("Allow")
        if allow:
            response.headers["Allow"] = allow
    return response
