"""A Python client of mlcanary: score a DataFrame, keep the request id, send the labels later, retry well.

    python docs/examples/client.py --url http://127.0.0.1:8080 --deployment churn \
        --csv rows.csv --target churned --token "$LABELLER"

Needs only httpx and pandas. docs/client.md explains each part; tests/controller/test_cli_client_example.py
runs this file as written against a real `mlcanary serve`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from typing import Any

import httpx
import pandas as pd

# Answers worth another try: nothing was scored (429 rate limited, 503 not ready / unavailable).
# 502 and 504 are not retried: the champion may have run, and the pair may be stored already.
RETRY_STATUSES = frozenset({429, 503})


def post(
    client: httpx.Client,
    url: str,
    *,
    body: Any,
    headers: dict[str, str] | None = None,
    attempts: int = 5,
    backoff_s: float = 0.2,
) -> httpx.Response:
    """POST with retries: on 429/503 and on connection errors, waiting Retry-After or a jittered backoff."""
    for attempt in range(attempts):
        last = attempt == attempts - 1
        try:
            response = client.post(url, json=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if last:
                raise
        else:
            if response.status_code not in RETRY_STATUSES or last:
                return response
            after = response.headers.get("Retry-After")
            if after is not None and after.isdigit():
                time.sleep(float(after))
                continue
        time.sleep(backoff_s * 2**attempt * (0.5 + random.random()))  # exponential, jittered
    raise AssertionError("unreachable")


def split_body(frame: pd.DataFrame) -> dict[str, Any]:
    """MLflow's dataframe_split; NaN (and NaT, pd.NA) become JSON null, which the pipeline sees as NaN."""
    values = frame.astype(object).where(frame.notna(), None).to_numpy().tolist()
    return {"dataframe_split": {"columns": [str(c) for c in frame.columns], "data": values}}


def score(client: httpx.Client, base_url: str, deployment: str, frame: pd.DataFrame) -> tuple[list[Any], str]:
    """Score every row of ``frame`` in one request; return the predictions and the request id.

    The request id is ours (a UUID), sent as X-Request-Id so that a retry keeps it; the server echoes
    it in the answer's X-Request-Id, which is what the labels refer to.
    """
    request_id = f"client-{uuid.uuid4().hex}"
    response = post(
        client,
        f"{base_url}/v1/models/{deployment}/invocations",
        body=split_body(frame),
        headers={"X-Request-Id": request_id},
    )
    if response.status_code != 200:
        error = response.json()["error"]
        raise RuntimeError(f"{response.status_code} {error['code']}: {error['message']}")
    return response.json()["predictions"], response.headers["X-Request-Id"]


def send_labels(
    client: httpx.Client, base_url: str, deployment: str, token: str, request_id: str, labels: list[Any]
) -> dict[str, Any]:
    """Send one label per row of a scored request (row = the row's position in that request)."""
    body = {
        "labels": [{"request_id": request_id, "row": i, "label": label} for i, label in enumerate(labels)]
    }
    response = post(
        client,
        f"{base_url}/v1/models/{deployment}/feedback",
        body=body,
        headers={"Authorization": f"Bearer {token}"},
    )
    if response.status_code != 200:
        error = response.json()["error"]
        raise RuntimeError(f"{response.status_code} {error['code']}: {error['message']}")
    result: dict[str, Any] = response.json()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the mlcanary server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--deployment", required=True)
    parser.add_argument("--csv", required=True, help="rows to score (the target column too, if --target)")
    parser.add_argument("--target", help="column holding the labels to send after scoring")
    parser.add_argument("--token", help="a labeller (or operator) token, to send labels")
    args = parser.parse_args()
    frame = pd.read_csv(args.csv)  # empty cells are NaN: sent as null
    labels = frame.pop(args.target).tolist() if args.target else None
    with httpx.Client(timeout=10.0) as client:
        predictions, request_id = score(client, args.url, args.deployment, frame)
        stored = None
        if labels is not None and args.token:
            stored = send_labels(client, args.url, args.deployment, args.token, request_id, labels)
    print(json.dumps({"request_id": request_id, "predictions": predictions, "labels": stored}))


if __name__ == "__main__":
    main()
