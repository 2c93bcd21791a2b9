"""The OpenAPI 3.1 document of the admin API and the data plane, served at /api/v1/openapi.json.

Written by hand, kept honest by tests/controller/test_openapi.py, which compares the app's url_map
with `document()["paths"]` both ways (every route documented, every documented path served).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from controller.core.machine import ROLLOUT_ACTIONS
from storage.entities import BatchingConfig

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str = "OK", status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {JSON: {"schema": schema}}}}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "Bad input", 401: "No valid token", 403: "The token's role may not do this", 404: "Not found",
        409: "Conflict or invalid transition", 413: "Body too large", 415: "Unsupported media type",
        429: "Too many requests (Retry-After says when to retry)",
        422: "Invalid policy (the message names the field)",
        502: "The model failed", 503: "Unavailable", 504: "The model timed out",
    }  # fmt: skip
    return {
        str(code): {"description": texts[code], "content": {JSON: {"schema": _ref("Error")}}}
        for code in statuses
    }


def _param(
    name: str, where: str = "path", schema: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema or {"type": "string"},
        **extra,
    }


_ADMIN_READ = _errors(401, 403, 404)
_ADMIN_WRITE = _errors(400, 401, 403, 404, 409, 415)
_NAME = _param("name", description="Deployment name")
_DEPLOYMENT = _param("deployment", description="Deployment name")
_VERSION = _param("version", description="Ignored: the router picks the version")
_ARCHIVED = _param(
    "archived", "query", {"type": "boolean", "default": False}, description="list archived ones too"
)
_CHANGE = _param("change", schema={"enum": ["archive", "restore"]})


def _extension(name: str, value: Any) -> dict[str, Any]:
    return {name: value}


def _operation(
    summary: str, responses: dict[str, Any], *, tags: list[str], public: bool = False, **more: Any
) -> Any:  # `more` holds OpenAPI fields (parameters, requestBody, x-mlcanary-role, ...)
    operation: dict[str, Any] = {"summary": summary, "tags": tags, "responses": responses, **more}
    if public:
        operation["security"] = []
    return operation


def _schemas() -> dict[str, Any]:
    nullable_string = {"type": ["string", "null"]}
    time = {"type": "string", "format": "date-time"}
    arm_figures = {
        "type": "object",
        "properties": {
            "served": {"type": "integer", "description": "rows this arm answered"},
            "scored": {"type": "integer", "description": "rows this arm computed (served or in shadow)"},
            "errors": {"type": "integer"},
            "error_rate": {"type": ["number", "null"]},
            "latency_ms": {
                "type": "object",
                "properties": {
                    "p50": {"type": ["number", "null"]},
                    "p99": {"type": ["number", "null"]},
                    "n": {"type": "integer"},
                },
            },
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
        "Column": {
            "type": "object",
            "required": ["name", "dtype"],
            "properties": {"name": {"type": "string"}, "dtype": {"enum": ["float", "int", "bool", "str"]}},
        },
        "PipelineVersion": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "version": {"type": "string"},
                "ref": {"type": "string", "description": "NAME:VERSION"},
                "kind": {"enum": ["artifact", "http"]},
                "task": {"enum": ["classification", "regression"]},
                "input_schema": {"type": "array", "items": _ref("Column")},
                "classes": {"type": ["array", "null"]},
                "sha256": nullable_string,
                "artifact_format": nullable_string,
                "upstream_url": nullable_string,
                "upstream_protocol": nullable_string,
                "upstream_config": {"type": ["object", "null"]},
                "offline_metrics": {"type": "object"},
                "golden_set_rows": {"type": "integer"},
                "environment": {"type": "object"},
                "metadata": {"type": "object"},
                "trusted_types": {"type": "array", "items": {"type": "string"}},
                "created_at": time,
                "archived_at": {**nullable_string, "format": "date-time"},
            },
        },  # fmt: skip
        "UpstreamRegistration": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "version", "upstream", "task"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "upstream": {"type": "string", "format": "uri"},
                "protocol": {"enum": ["v2", "mlflow"], "default": "v2"},
                "kind": {"enum": ["mlserver", "kserve", "triton", "mlflow"]},
                "upstream_settings": {
                    "type": "object",
                    "description": "encoding, tensor_name, tensor_datatype, class_output, proba_output, "
                    "score_output, value_output, request_outputs, timeout_s, pool_size, retries, health_url",
                },
                "sample": {
                    "type": "object",
                    "description": 'rows to probe the upstream with: {"columns", "data"}',
                },
                "golden": {
                    "type": "object",
                    "description": "rows whose upstream answers become the golden set",
                },
                "golden_set": {"type": "object"},
                "probe": {"type": "boolean", "default": True},
                "task": {"enum": ["classification", "regression"]},
                "schema": {
                    "oneOf": [
                        {"type": "string", "examples": ["age:float,plan:str"]},
                        {"type": "array", "items": _ref("Column")},
                    ]
                },
                "classes": {"type": "array"},
                "metrics": {"type": "object"},
                "metadata": {"type": "object"},
            },
        },  # fmt: skip
        "ArtifactRegistration": {
            "type": "object",
            "required": ["name", "version", "task", "artifact"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "task": {"enum": ["classification", "regression"]},
                "artifact": {
                    "type": "string",
                    "contentMediaType": "application/octet-stream",
                    "description": ".skops (or .joblib when the server trusts pickle)",
                },
                "sample": {
                    "type": "string",
                    "contentMediaType": "application/octet-stream",
                    "description": "CSV/Parquet/JSON of raw inputs: gives the schema and input profile",
                },
                "holdout": {
                    "type": "string",
                    "contentMediaType": "application/octet-stream",
                    "description": "holdout table with the target column: offline metrics",
                },
                "target": {"type": "string"},
                "golden": {
                    "type": "string",
                    "contentMediaType": "application/octet-stream",
                    "description": "raw input rows for the golden set",
                },
                "schema": {"type": "string", "examples": ["age:float,plan:str"]},
                "golden_set": {
                    "type": "string",
                    "description": "JSON {inputs: {columns, data}, outputs: {prediction}}",
                },
                "metrics": {"type": "string", "description": "JSON object"},
                "environment": {"type": "string", "description": "JSON object"},
                "metadata": {"type": "string", "description": "JSON object"},
                "trust": {
                    "type": "string",
                    "description": "Exact names (comma-separated or repeated) of extra types/functions the "
                    "skops artifact may hold, e.g. mymodule.add_ratios; each must import on the server",
                },
            },
        },  # fmt: skip
        "Rollout": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "phase": {
                    "enum": [
                        "pending",
                        "shadowing",
                        "progressing",
                        "paused",
                        "watching",
                        "promoted",
                        "rolled_back",
                        "aborted",
                    ]
                },
                "active": {"type": "boolean"},
                "mode": {"enum": ["shadow", "canary", "shadow_then_canary"]},
                "step_index": {"type": "integer"},
                "canary_weight": {"type": "number", "description": "percent answered by the challenger"},
                "shadow_rate": {"type": "number", "description": "share scored by the other arm in shadow"},
                "champion": {"type": "string"},
                "challenger": {"type": "string"},
                "policy": {"type": "object"},
                "version": {"type": "integer"},
                "created_by": {"type": "string"},
                "created_at": time,
                "step_started_at": time,
                "ended_at": {"type": ["string", "null"], "format": "date-time"},
                "reason": nullable_string,
            },
        },  # fmt: skip
        "Deployment": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "champion": {"type": "string"},
                "challenger": nullable_string,
                "phase": {"type": "string", "description": "the active rollout's phase, or stable"},
                "mode": nullable_string,
                "step_index": {"type": ["integer", "null"]},
                "weights": {
                    "type": "object",
                    "properties": {
                        "champion": {"type": "number"},
                        "challenger": {"type": "number"},
                        "shadow_rate": {"type": "number"},
                    },
                },
                "store_raw_inputs": {"type": "boolean"},
                "batching": _ref("Batching"),
                "created_at": time,
                "updated_at": time,
                "archived_at": {**nullable_string, "format": "date-time"},
                "rollout_id": {"type": ["integer", "null"]},
                "state": _ref("DeploymentState"),
            },
        },  # fmt: skip
        "DeploymentState": {
            "type": "object",
            "description": "what happened last: the active phase, or how the latest rollout ended and when",
            "properties": {
                "phase": {"type": "string"},
                "tone": {"enum": ["live", "held", "good", "bad", "idle"]},
                "active": {"type": "boolean"},
                "label": {"type": "string"},
                "since": {"type": ["string", "null"], "format": "date-time"},
                "age_s": {"type": ["number", "null"]},
            },
        },  # fmt: skip
        "DeploymentDashboard": {
            "type": "object",
            "description": "what the dashboard shows: state, verdict sentence, plan and progress, plots' data, timeline",
            "properties": {
                "name": {"type": "string"},
                "state": _ref("DeploymentState"),
                "verdict": {"type": "string"},
                "rollout_id": {"type": ["integer", "null"]},
                "plan": {"type": ["array", "null"], "items": {"type": "object"}},
                "progress": {"type": ["object", "null"]},
                "series": {"type": ["object", "null"]},
                "timeline": {"type": "array", "items": {"type": "object"}},
            },
        },  # fmt: skip
        "DeploymentDetail": {
            "allOf": [
                _ref("Deployment"),
                {
                    "type": "object",
                    "properties": {
                        "rollout": {"oneOf": [_ref("Rollout"), {"type": "null"}]},
                        "live": {
                            "type": ["object", "null"],
                            "description": "the latest rollout's current step, from stored paired outputs",
                            "properties": {
                                "rollout_id": {"type": "integer"},
                                "step": {"type": "integer"},
                                "requests": {"type": "integer"},
                                "arms": {
                                    "type": "object",
                                    "properties": {"champion": arm_figures, "challenger": arm_figures},
                                },
                            },
                        },
                        "last_analysis": {
                            "type": ["object", "null"],
                            "properties": {
                                "step": {"type": "integer"},
                                "evaluated_at": time,
                                "outcome": {"type": "string"},
                                "verdicts": {"type": "array"},
                                "metrics": {"type": "object"},
                            },
                        },
                        "verdict": {
                            "type": ["string", "null"],
                            "description": "one sentence saying what happened to the latest rollout or what it "
                            "is doing, and why (it also heads the report and `rollout status`)",
                        },
                    },
                },
            ]
        },  # fmt: skip
        "DeploymentCreate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "champion"],
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"},
                "champion": {"type": "string", "description": "NAME:VERSION"},
                "store_raw_inputs": {"type": "boolean", "default": True},
                "batching": _ref("Batching"),
            },
        },
        "DeploymentChange": {
            "type": "object",
            "additionalProperties": False,
            "required": ["batching"],
            "properties": {"batching": {**_ref("Batching"), "minProperties": 1}},
        },
        "Batching": {
            "type": "object",
            "additionalProperties": False,
            "description": "adaptive batching of live requests in each router process (docs/operations.md)",
            "properties": {
                "enabled": {"type": "boolean", "default": True},
                "max_batch_delay_ms": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1000,
                    "default": BatchingConfig().max_batch_delay_ms,
                    "description": (
                        "longest wait for company, only while other requests of the deployment are in "
                        "flight or their kept-alive connections were answered within it"
                    ),
                },
                "max_batch_rows": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 256},
            },
        },
        "RolloutStart": {
            "type": "object",
            "additionalProperties": False,
            "required": ["challenger"],
            "properties": {
                "challenger": {"type": "string", "description": "NAME:VERSION"},
                "mode": {"enum": ["shadow", "canary", "shadow_then_canary"]},
                "policy": {
                    "type": "object",
                    "description": "rollout policy; unknown keys and impossible values are 422",
                },
                "reason": {"type": "string", "description": "why (kept in the event log)"},
            },
        },
        "Token": {
            "type": "object",
            "description": "an admin token's name, role and lifetime; the secret only in the answer to its creation",
            "properties": {
                "name": {"type": "string"},
                "role": {"enum": ["viewer", "operator", "labeller"]},
                "created_at": {"type": "string", "format": "date-time"},
                "revoked_at": {"type": ["string", "null"], "format": "date-time"},
                "token": {"type": "string", "description": "the secret, shown once (POST /tokens only)"},
            },
        },
        "TokenCreate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"},
                "role": {"enum": ["viewer", "operator", "labeller"], "default": "viewer"},
            },
        },
        "Prune": {
            "type": "object",
            "additionalProperties": False,
            "required": ["older_than"],
            "properties": {
                "older_than": {
                    "type": "string",
                    "pattern": "^[0-9]+[dhm]$",
                    "description": "e.g. 30d, 12h, 90m",
                },
                "batch_size": {"type": "integer", "minimum": 1, "maximum": 1000000, "default": 5000},
            },
        },
        "Pruned": {
            "type": "object",
            "properties": {
                "pairs": {"type": "integer"},
                "labels": {"type": "integer"},
                "before": {"type": "string", "format": "date-time"},
            },
        },
        "LifecycleChange": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"reason": {"type": "string", "description": "written in the event"}},
        },
        "Deleted": {
            "type": "object",
            "description": "a version: ref, id, artifact_removed; a deployment: name and the rows deleted",
            "properties": {
                "ref": {"type": "string"},
                "id": {"type": "integer"},
                "artifact_removed": {"type": "boolean"},
                "name": {"type": "string"},
                "deleted": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
        },
        "RolloutAction": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "reason": {"type": "string"},
                "full": {"type": "boolean", "description": "promote only: straight to 100%"},
            },
        },
        "Event": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "at": time,
                "deployment_id": {"type": ["integer", "null"]},
                "rollout_id": {"type": ["integer", "null"]},
                "actor": {"type": "string"},
                "action": {"type": "string"},
                "reason": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        },  # fmt: skip
        "Labels": {
            "type": "object",
            "additionalProperties": False,
            "required": ["labels"],
            "properties": {
                "labels": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 10000,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["request_id"],
                        "anyOf": [{"required": ["label"]}, {"required": ["outcome"]}],
                        "properties": {
                            "request_id": {"type": "string", "minLength": 1, "maxLength": 128},
                            "row": {"type": "integer", "minimum": 0, "default": 0},
                            "label": {"type": ["string", "number", "boolean"]},
                            "outcome": {
                                "type": "number",
                                "description": "business outcome of the request row: revenue, a 0/1 conversion, a cost",
                            },
                            "outcome_base": {
                                "type": "number",
                                "description": "denominator of a ratio outcome (e.g. visits, for revenue per visit)",
                            },
                        },
                    },
                }
            },
        },
        "LabelsResult": {
            "type": "object",
            "properties": {
                "stored": {"type": "integer"},
                "unknown_request_ids": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "ids with no pair in this deployment yet: their labels wait as pending",
                },
                "dropped_request_ids": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "unknown ids whose labels were not kept: the pending bound is full",
                },
            },
        },
        "MlflowRequest": {
            "type": "object",
            "description": "exactly one of dataframe_split, dataframe_records, instances, inputs (+ optional params)",
            "properties": {
                "dataframe_split": {"type": "object"},
                "dataframe_records": {"type": "array"},
                "instances": {"type": "array"},
                "inputs": {},
                "params": {"type": "object"},
            },
        },  # fmt: skip
        "Predictions": {"type": "object", "properties": {"predictions": {"type": "array"}}},
        "V2Request": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array"},
                "outputs": {"type": "array"},
            },
        },  # fmt: skip
        "V2Response": {
            "type": "object",
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {"type": "array"},
            },
        },  # fmt: skip
    }


def _admin_paths() -> dict[str, Any]:
    p = "/api/v1"
    admin = ["admin"]
    return {
        f"{p}/openapi.json": {
            "get": _operation("This document", _ok({"type": "object"}), tags=admin, public=True),
        },
        f"{p}/pipelines": {
            "get": _operation(
                "List pipeline versions",
                {
                    **_ok(
                        {
                            "type": "object",
                            "properties": {"pipelines": {"type": "array", "items": _ref("PipelineVersion")}},
                        }
                    ),
                    **_errors(401, 403),
                },
                tags=["pipelines"],
                parameters=[_param("name", "query", description="only versions of this pipeline"), _ARCHIVED],
            ),
            "post": _operation(
                "Register a pipeline version (JSON: an HTTP upstream; multipart: an artifact file)",
                {
                    **_ok(_ref("PipelineVersion"), "Registered", "201"),
                    **_errors(400, 401, 403, 409, 413, 415),
                },
                tags=["pipelines"],
                requestBody={
                    "required": True,
                    "content": {
                        JSON: {"schema": _ref("UpstreamRegistration")},
                        "multipart/form-data": {"schema": _ref("ArtifactRegistration")},
                    },
                },
            ),
        },  # fmt: skip
        f"{p}/pipelines/{{name}}/{{version}}": {
            "get": _operation(
                "Show a pipeline version",
                {**_ok(_ref("PipelineVersion")), **_ADMIN_READ},
                tags=["pipelines"],
                parameters=[_param("name"), _param("version")],
            ),
            "delete": _operation(
                "Delete a pipeline version no deployment or rollout ever used (409 in_use: archive it)",
                {**_ok(_ref("Deleted")), **_ADMIN_WRITE},
                tags=["pipelines"],
                parameters=[_param("name"), _param("version")],
                requestBody=_json_body(_ref("LifecycleChange"), required=False),
            ),
        },  # fmt: skip
        f"{p}/pipelines/{{name}}/{{version}}/{{change}}": {
            "post": _operation(
                "Archive (no new deployment or rollout may use it) or restore a pipeline version",
                {**_ok(_ref("PipelineVersion")), **_ADMIN_WRITE},
                tags=["pipelines"],
                parameters=[_param("name"), _param("version"), _CHANGE],
                requestBody=_json_body(_ref("LifecycleChange"), required=False),
            ),
        },  # fmt: skip
        f"{p}/tokens": {
            "get": _operation(
                "List admin tokens, revoked ones too, never a secret (operator)",
                {
                    **_ok(
                        {
                            "type": "object",
                            "properties": {"tokens": {"type": "array", "items": _ref("Token")}},
                        }
                    ),
                    **_errors(401, 403),
                },
                tags=admin,
            ),
            "post": _operation(
                "Create an admin token; the answer holds its secret, shown once",
                {**_ok(_ref("Token"), "Created", "201"), **_ADMIN_WRITE},
                tags=admin,
                requestBody=_json_body(_ref("TokenCreate")),
            ),
        },
        f"{p}/tokens/{{name}}": {
            "delete": _operation(
                "Revoke an admin token (again is harmless)",
                {**_ok(_ref("Token")), **_ADMIN_WRITE},
                tags=admin,
                parameters=[_param("name", description="Token name")],
            ),
        },
        f"{p}/prune": {
            "post": _operation(
                "Delete paired outputs and labels received before an age, in batches that never block writers",
                {**_ok(_ref("Pruned")), **_ADMIN_WRITE},
                tags=admin,
                requestBody=_json_body(_ref("Prune")),
            ),
        },
        f"{p}/deployments": {
            "get": _operation(
                "List deployments",
                {
                    **_ok(
                        {
                            "type": "object",
                            "properties": {"deployments": {"type": "array", "items": _ref("Deployment")}},
                        }
                    ),
                    **_errors(400, 401, 403),
                },
                tags=["deployments"],
                parameters=[_ARCHIVED],
            ),
            "post": _operation(
                "Create a deployment",
                {**_ok(_ref("DeploymentDetail"), "Created", "201"), **_ADMIN_WRITE},
                tags=["deployments"],
                requestBody=_json_body(_ref("DeploymentCreate")),
            ),
        },  # fmt: skip
        f"{p}/deployments/{{name}}": {
            "get": _operation(
                "Show a deployment: phase, weights, step, live figures per arm, last verdicts",
                {**_ok(_ref("DeploymentDetail")), **_ADMIN_READ},
                tags=["deployments"],
                parameters=[_NAME],
            ),
            "patch": _operation(
                "Change a deployment's adaptive batching (settings left out keep their value)",
                {**_ok(_ref("DeploymentDetail")), **_ADMIN_WRITE},
                tags=["deployments"],
                parameters=[_NAME],
                requestBody=_json_body(_ref("DeploymentChange")),
            ),
            "delete": _operation(
                "Delete a deployment with its rollouts, pairs and labels; its events stay (409 while a rollout is active)",
                {**_ok(_ref("Deleted")), **_ADMIN_WRITE},
                tags=["deployments"],
                parameters=[_NAME],
                requestBody=_json_body(_ref("LifecycleChange"), required=False),
            ),
        },  # fmt: skip
        f"{p}/deployments/{{name}}/{{change}}": {
            "post": _operation(
                "Archive (no longer routed, kept with its history) or restore a deployment",
                {**_ok(_ref("Deployment")), **_ADMIN_WRITE},
                tags=["deployments"],
                parameters=[_NAME, _CHANGE],
                requestBody=_json_body(_ref("LifecycleChange"), required=False),
            ),
        },  # fmt: skip
        f"{p}/deployments/{{name}}/rollouts": {
            "get": _operation(
                "List a deployment's rollouts",
                {
                    **_ok(
                        {
                            "type": "object",
                            "properties": {"rollouts": {"type": "array", "items": _ref("Rollout")}},
                        }
                    ),
                    **_ADMIN_READ,
                },
                tags=["rollouts"],
                parameters=[_NAME],
            ),
            "post": _operation(
                "Start a rollout",
                {**_ok(_ref("Rollout"), "Started", "201"), **_ADMIN_WRITE, **_errors(422)},
                tags=["rollouts"],
                parameters=[_NAME],
                requestBody=_json_body(_ref("RolloutStart")),
            ),
        },  # fmt: skip
        f"{p}/deployments/{{name}}/rollout/{{action}}": {
            "post": _operation(
                "Promote (next step, or full), roll back, pause, resume or abort the active rollout",
                {**_ok(_ref("Rollout")), **_ADMIN_WRITE},
                tags=["rollouts"],
                parameters=[_NAME, _param("action", schema={"enum": list(ROLLOUT_ACTIONS)})],
                requestBody=_json_body(_ref("RolloutAction"), required=False),
            ),
        },  # fmt: skip
        f"{p}/deployments/{{name}}/events": {
            "get": _operation(
                "List a deployment's events, oldest first",
                {
                    **_ok(
                        {
                            "type": "object",
                            "properties": {
                                "events": {"type": "array", "items": _ref("Event")},
                                "next_after_id": {"type": "integer"},
                            },
                        }
                    ),
                    **_ADMIN_READ,
                    **_errors(400),
                },
                tags=["rollouts"],
                parameters=[
                    _NAME,
                    _param("after_id", "query", {"type": "integer", "minimum": 0, "default": 0}),
                    _param(
                        "limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 200}
                    ),
                ],
            ),
        },  # fmt: skip
        f"{p}/deployments/{{name}}/dashboard": {
            "get": _operation(
                "Show a deployment's state, verdict, plan and progress, plots' time series and timeline",
                {**_ok(_ref("DeploymentDashboard")), **_ADMIN_READ, **_errors(400)},
                tags=["deployments"],
                parameters=[
                    _NAME,
                    _param(
                        "events", "query", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}
                    ),
                ],
            ),
        },  # fmt: skip
        f"{p}/deployments/{{name}}/labels": {
            "post": _operation(
                "Store ground-truth labels in bulk (operator)",
                {**_ok(_ref("LabelsResult")), **_ADMIN_WRITE, **_errors(413)},
                tags=["labels"],
                parameters=[_NAME],
                requestBody=_json_body(_ref("Labels")),
            ),
        },  # fmt: skip
        f"{p}/deployments/{{name}}/report": {
            "get": _operation(
                "Comparison report: JSON, or HTML (?format=html or Accept: text/html), or Markdown",
                {
                    "200": {
                        "description": "The report",
                        "content": {
                            JSON: {"schema": {"type": "object"}},
                            "text/html": {"schema": {"type": "string"}},
                            "text/markdown": {"schema": {"type": "string"}},
                        },
                    },
                    **_ADMIN_READ,
                    **_errors(400),
                },
                tags=["reports"],
                parameters=[
                    _NAME,
                    _param("format", "query", {"enum": ["json", "html", "markdown"]}),
                    _param(
                        "rollout",
                        "query",
                        {"type": "integer", "minimum": 1},
                        description="a rollout id (default: the latest)",
                    ),
                ],
            ),
        },  # fmt: skip
        "/": {
            "get": _operation(
                "The dashboard page (its API calls send the token the user pastes)",
                {
                    "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
                },
                tags=["admin"],
                public=True,
            ),
        },  # fmt: skip
    }


def _data_plane_paths() -> dict[str, Any]:
    data = ["data plane"]
    scoring_errors = _errors(400, 404, 413, 415, 502, 503, 504)
    headers = [
        _param("X-Request-Id", "header", description="request id (else generated); echoed in the answer"),
        _param("X-Routing-Key", "header", description="sticky assignment key (default: the request id)"),
    ]
    v2_infer = _operation(
        "Score an Open Inference (KServe V2) request",
        {**_ok(_ref("V2Response")), **scoring_errors, **_errors(422)},
        tags=data, public=True, parameters=[_DEPLOYMENT, *headers],
        requestBody={"required": True, "content": {JSON: {"schema": _ref("V2Request")},
                                                   "application/octet-stream": {"schema": {"type": "string"}}}},
    )  # fmt: skip
    metadata = _operation(
        "Describe a deployment's inputs and outputs (V2 model metadata)", {**_ok({"type": "object"}), **_errors(404, 503)},
        tags=data, public=True, parameters=[_DEPLOYMENT],
    )  # fmt: skip
    ready = _operation(
        "Whether the deployment's champion is loaded (V2 model ready)",
        {**_ok({"type": "object"}), **_errors(404, 503)},
        tags=data,
        public=True,
        parameters=[_DEPLOYMENT],
    )
    live = _operation("Liveness probe", _ok({"type": "object"}), tags=["probes"], public=True)
    readiness = _operation(
        "Readiness probe: routing table and versions loaded (503 while a champion artifact cannot load)",
        {**_ok({"type": "object"}), **_errors(503)},
        tags=["probes"],
        public=True,
    )
    with_version = [_DEPLOYMENT, _VERSION]
    return {
        "/v1/models/{deployment}/invocations": {
            "post": _operation(
                "Score an MLflow scoring-protocol request (JSON or CSV)",
                {**_ok(_ref("Predictions")), **scoring_errors, **_errors(422)},
                tags=data,
                public=True,
                parameters=[_DEPLOYMENT, *headers],
                requestBody={
                    "required": True,
                    "content": {
                        JSON: {"schema": _ref("MlflowRequest")},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
            ),
        },  # fmt: skip
        "/v1/models/{deployment}/feedback": {
            "post": _operation(
                "Store ground-truth labels for earlier requests (idempotent; unknown request ids reported, "
                "kept pending within a bound)",
                {**_ok(_ref("LabelsResult")), **_errors(400, 401, 403, 404, 413, 415, 429, 503)},
                tags=data,
                parameters=[_DEPLOYMENT],
                requestBody=_json_body(_ref("Labels")),
                **_extension(
                    "x-mlcanary-role", "labeller (or operator); public with MLCANARY_FEEDBACK_AUTH=open"
                ),
            ),
        },  # fmt: skip
        "/v2/models/{deployment}/infer": {"post": v2_infer},
        "/v2/models/{deployment}/versions/{version}/infer": {
            "post": {**copy.deepcopy(v2_infer), "parameters": [*with_version, *headers]}
        },
        "/v2/models/{deployment}": {"get": metadata},
        "/v2/models/{deployment}/versions/{version}": {
            "get": {**copy.deepcopy(metadata), "parameters": with_version}
        },
        "/v2/models/{deployment}/ready": {"get": ready},
        "/v2/models/{deployment}/versions/{version}/ready": {
            "get": {
                **copy.deepcopy(ready),
                "parameters": with_version,
                "summary": "Whether that version (champion or challenger, VERSION or NAME:VERSION) is loaded",
            }
        },
        "/v2": {"get": _operation("V2 server metadata", _ok({"type": "object"}), tags=data, public=True)},
        "/v2/health/live": {"get": live},
        "/healthz": {"get": copy.deepcopy(live)},
        "/v2/health/ready": {"get": readiness},
        "/readyz": {"get": copy.deepcopy(readiness)},
        "/metrics": {
            "get": _operation(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                tags=["probes"],
                public=True,
            )
        },
    }


@cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mlcanary",
            "version": "1",
            "description": (
                "Canary and shadow rollouts of ML pipelines. The admin API (/api/v1) needs a bearer token: "
                "role viewer for GET, operator for everything else (create one with `mlcanary tokens create`). "
                'The data plane needs none. Errors are {"error": {"code", "message"}}.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": n}
            for n in (
                "admin",
                "pipelines",
                "deployments",
                "rollouts",
                "labels",
                "reports",
                "data plane",
                "probes",
            )
        ],  # fmt: skip
        "paths": {**_admin_paths(), **_data_plane_paths()},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "mlcanary admin token"}
            },
            "schemas": _schemas(),
        },
    }


def document() -> dict[str, Any]:
    """Return the OpenAPI 3.1 document (a fresh copy each call)."""
    return copy.deepcopy(_document())
