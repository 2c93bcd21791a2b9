"""Errors of the data plane; each knows its HTTP status and a stable code for `{"error": {...}}`.

    RouterError (Exception)                        status, code
    ├── InvalidInput (ValueError)                  400  the body is not a valid request for the
    │                                                   deployment (bad JSON, ragged rows, missing or
    │                                                   unknown columns, wrong types, empty batch)
    ├── PayloadTooLarge (ValueError)               413  the body is larger than max_body_bytes
    ├── UnsupportedMediaType (ValueError)          415  neither JSON nor CSV
    ├── DeploymentNotFound (LookupError)           404  no deployment of that name
    ├── NotReady                                   503  the routing table is not loaded yet
    └── BackendError                               502  a model failed to answer
        ├── InputRejected (ValueError)             422  the pipeline raised on this input
        ├── ModelUnavailable (ConnectionError)     503  not loadable / upstream unreachable / missing
        ├── ModelTimeout (TimeoutError)            504  no answer within the timeout
        └── InvalidOutput (ValueError)             502  the answer has the wrong shape or type

Backends translate whatever their pipeline or HTTP client raises into a BackendError with
`raise ... from exc`; nothing else escapes a backend. Only the champion's errors ever reach a
client: a challenger's error is recorded in its PairRecord and otherwise ignored.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every data-plane error."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(RouterError, ValueError):
    """The request body cannot be scored as it is; the message names the problem."""

    status = 400
    code = "invalid_input"


class PayloadTooLarge(RouterError, ValueError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(RouterError, ValueError):
    status = 415
    code = "unsupported_media_type"


class DeploymentNotFound(RouterError, LookupError):
    status = 404
    code = "deployment_not_found"


class NotReady(RouterError):
    status = 503
    code = "not_ready"


class BackendError(RouterError):
    """A model could not answer."""

    status = 502
    code = "model_error"


class InputRejected(BackendError, ValueError):
    """The pipeline itself refused the input (it raised ValueError, TypeError or KeyError)."""

    status = 422
    code = "model_rejected_input"


class ModelUnavailable(BackendError, ConnectionError):
    status = 503
    code = "model_unavailable"


class ModelTimeout(BackendError, TimeoutError):
    status = 504
    code = "model_timeout"


class InvalidOutput(BackendError, ValueError):
    status = 502
    code = "invalid_model_output"
