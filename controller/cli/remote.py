"""The admin API client of the commands that work through ``--api URL --token T`` (global options).

httpx is imported when a client is built, never at import: ``mlcanary --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

import click


class ApiClient:
    """The few admin API calls the commands need; any error answer becomes one ClickException line."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        import httpx

        if not url.startswith(("http://", "https://")):
            raise click.UsageError(f"--api must be an http(s) URL, got {url!r}")
        if not token:
            raise click.UsageError("--api needs --token (or MLCANARY_TOKEN)")
        self._client = httpx.Client(
            base_url=url.rstrip("/") + "/api/v1",
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
        )

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """Send one request; return the response (4xx/5xx become one ClickException line)."""
        import httpx

        params = {k: v for k, v in kwargs.pop("params", {}).items() if v is not None}
        try:
            response = self._client.request(method, path, json=body, params=params, **kwargs)
        except httpx.HTTPError as error:
            raise click.ClickException(f"cannot reach the admin API: {error}") from error
        if response.status_code >= 400:
            try:
                problem = response.json()["error"]
                message = f"{problem['message']} (HTTP {response.status_code}, {problem['code']})"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {response.status_code} from the admin API"
            raise click.ClickException(message)
        return response

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """Send one JSON request and return the JSON answer."""
        return self.request(method, path, body, params=params).json()
