"""Settings: defaults, overridden by MLCANARY_* environment variables, then by explicit arguments.

Nothing reads the environment at import time: `Settings.from_env()` is called by the CLI and the app
factory. An MLCANARY_* variable that names no setting is an error, so a typo never goes unnoticed.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PREFIX = "MLCANARY_"
# Variables of ours that are not settings (read by tests, tools or libraries).
NOT_SETTINGS = frozenset(
    {
        "MLCANARY_TEST_PG_URL",
        "MLCANARY_PEER_CACHE",
        "MLCANARY_DEMO_FAST",
        "MLCANARY_API_URL",
        "MLCANARY_TOKEN",
        "MLCANARY_CONFIG",
    }
)
# The project's config file: looked up in the working folder, then each parent (MLCANARY_CONFIG names one).
CONFIG_FILE = "mlcanary.toml"


class ConfigError(ValueError):
    """A setting is unknown or has an impossible value."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting of mlcanary, with its default. docs/configuration.md lists them."""

    data_dir: Path = field(
        default=Path("var"), metadata={"help": "folder for the SQLite file, artifacts, spool"}
    )
    database_url: str = field(
        default="", metadata={"help": "SQLAlchemy URL; default sqlite:///DATA_DIR/mlcanary.db"}
    )
    artifact_dir: Path | None = field(
        default=None, metadata={"help": "artifact store; default DATA_DIR/artifacts"}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address the HTTP server binds"})
    port: int = field(default=8080, metadata={"help": "port the HTTP server binds"})
    workers: int = field(default=2, metadata={"help": "gunicorn worker processes"})
    threads: int = field(default=32, metadata={"help": "serving threads per worker process"})
    read_timeout_s: float = field(
        default=30.0,
        metadata={"help": "seconds a client has to send a whole request (and per socket operation after)"},
    )
    next_request_wait_ms: float = field(
        default=2.0,
        metadata={
            "help": "how long the thread that answered a kept-alive connection waits for its next request "
            "and serves it itself, skipping two thread hand-offs (0: never; at most 100; docs/operations.md)"
        },
    )
    cpu_affinity: str = field(
        default="auto",
        metadata={
            "help": "pin each worker process to one CPU: auto when there are at least as many workers as CPUs "
            "the server may use (a worker per core), on always, off never (docs/operations.md)"
        },
    )
    controller_interval: float = field(
        default=5.0, metadata={"help": "seconds between controller evaluations"}
    )
    controller_busy_share: float = field(
        default=0.25,
        metadata={
            "help": "most of the time the controller may spend looking (0..1]: after a look of t s of its own "
            "(wall time less waits for a CPU) it waits at least t (1/share - 1) s, so long looks on big "
            "steps never take a whole core (1: no limit)"
        },
    )
    controller_nice: int = field(
        default=10,
        metadata={
            "help": "niceness `serve` gives the controller loop it starts beside the router, once started "
            "(0..19): a look yields the cores to requests being served, and takes the CPU they leave "
            "(0: equal footing)"
        },
    )
    refresh_interval: float = field(
        default=0.25, metadata={"help": "seconds between routing-table refreshes"}
    )
    db_keepalive_idle_s: int = field(
        default=10,
        metadata={"help": "PostgreSQL: seconds of silence before TCP keepalive probes, both ends (0: off)"},
    )
    db_keepalive_interval_s: int = field(
        default=3, metadata={"help": "PostgreSQL: seconds between unanswered keepalive probes"}
    )
    db_keepalive_count: int = field(
        default=3,
        metadata={
            "help": "PostgreSQL: unanswered probes before a connection (and the server session) is dropped"
        },
    )
    trust_pickle: bool = field(
        default=False, metadata={"help": "allow joblib/pickle artifacts (runs their code)"}
    )
    max_body_bytes: int = field(default=10 * 1024 * 1024, metadata={"help": "largest request body accepted"})
    max_upload_bytes: int = field(
        default=1024 * 1024 * 1024, metadata={"help": "largest artifact upload (POST /api/v1/pipelines)"}
    )
    shadow_queue_size: int = field(default=10_000, metadata={"help": "shadow requests waiting per process"})
    shadow_timeout_s: float = field(default=2.0, metadata={"help": "shadow scoring timeout"})
    shadow_cpu_budget: float = field(
        default=0.15,
        metadata={
            "help": "most of a saturated router process's CPU shadow scoring may take (0..1]; "
            "beyond, the shadow share is cut (1: never for CPU)"
        },
    )
    upstream_timeout_s: float = field(default=5.0, metadata={"help": "HTTP upstream backend timeout"})
    breaker_failures: int = field(
        default=3, metadata={"help": "canary challenger faults in a row that open its circuit breaker"}
    )
    breaker_open_s: float = field(
        default=5.0, metadata={"help": "seconds an open breaker sends the challenger's share to the champion"}
    )
    challenger_concurrency: int = field(
        default=4,
        metadata={"help": "remote challenger calls in flight per worker; beyond, the champion answers"},
    )
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})
    webhook_urls: str = field(
        default="", metadata={"help": "comma-separated URLs that receive rollout events as signed JSON POSTs"}
    )
    webhook_secret: str = field(
        default="", metadata={"help": "HMAC-SHA256 key of the X-Mlcanary-Signature header (empty: unsigned)"}
    )
    webhook_timeout_s: float = field(default=5.0, metadata={"help": "seconds one webhook delivery may take"})
    webhook_retries: int = field(
        default=3, metadata={"help": "webhook retries after a failed delivery (0..10)"}
    )
    webhook_backoff_s: float = field(
        default=1.0, metadata={"help": "first webhook retry delay; doubles at each retry"}
    )
    webhook_interval: float = field(default=1.0, metadata={"help": "seconds between looks for new events"})
    feedback_auth: str = field(
        default="token",
        metadata={"help": "POST /v1/models/*/feedback needs a labeller (or operator) token: token, or open"},
    )
    feedback_max_labels: int = field(
        default=10_000, metadata={"help": "labels accepted in one feedback request"}
    )
    feedback_rate: float = field(
        default=2000.0, metadata={"help": "labels per second per deployment and process (0: no limit)"}
    )
    feedback_pending_s: float = field(
        default=3600.0, metadata={"help": "seconds a label waits for its request's pair before it is dropped"}
    )
    feedback_pending_max: int = field(
        default=100_000, metadata={"help": "labels waiting for their pair, per deployment"}
    )
    # Where the database setting came from (an --option, an MLCANARY_* variable, a mlcanary.toml or the
    # default folder): printed by the CLI so a command never quietly uses another database. Not a setting.
    database_source: str = field(default="default ./var", compare=False, metadata={"internal": True})

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'mlcanary.db').resolve()}"

    @property
    def resolved_artifact_dir(self) -> Path:
        return self.artifact_dir or self.data_dir / "artifacts"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def is_embedded_default(self) -> bool:
        return not self.database_url

    @property
    def sqlite_path(self) -> Path | None:
        """The file of a SQLite database URL (None for PostgreSQL or an in-memory SQLite)."""
        url = self.resolved_database_url
        if not url.startswith("sqlite:///"):
            return None
        path = url[len("sqlite:///") :].split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None

    def database_description(self) -> str:
        """One line naming the database and why this one: ``database sqlite:///... (from mlcanary.toml ...)``."""
        url = self.resolved_database_url
        if "@" in url:  # never print a password
            scheme, rest = url.split("://", 1)
            url = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return f"database {url} ({self.database_source})"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, cwd: Path | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from MLCANARY_* variables; unknown variables and bad values raise ConfigError."""
        environ = os.environ if environ is None else environ
        by_name = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}
        config_path = _config_path(environ, cwd)
        values: dict[str, Any] = read_config(config_path) if config_path else {}
        source = f"from {config_path}" if config_path else f"default folder var in {Path.cwd()}"
        for key, raw in environ.items():
            if not key.startswith(PREFIX) or key in NOT_SETTINGS:
                continue
            name = key[len(PREFIX) :].lower()
            if name not in by_name:
                raise ConfigError(f"unknown setting {key}{_did_you_mean(name, by_name, PREFIX)}")
            values[name] = _parse(by_name[name], raw, key)
            if name in ("data_dir", "database_url"):
                source = f"from {key}"
        given = {k: v for k, v in overrides.items() if v is not None}
        if given.keys() & {"data_dir", "database_url"}:
            source = "from --database-url" if "database_url" in given else "from --data-dir"
        values.update(given)
        values["database_source"] = source
        unknown = set(values) - set(by_name) - {"database_source"}
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}")
        for name in ("data_dir", "artifact_dir"):
            if values.get(name) is not None:
                values[name] = Path(values[name])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1..65535, got {self.port}")
        for name in (
            "workers",
            "threads",
            "breaker_failures",
            "challenger_concurrency",
            "db_keepalive_interval_s",
            "db_keepalive_count",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "controller_interval",
            "refresh_interval",
            "shadow_timeout_s",
            "upstream_timeout_s",
            "read_timeout_s",
            "breaker_open_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.db_keepalive_idle_s < 0:
            raise ConfigError(f"db_keepalive_idle_s must be >= 0 (0: off), got {self.db_keepalive_idle_s}")
        if not 0 <= self.next_request_wait_ms <= 100:
            raise ConfigError(
                f"next_request_wait_ms must be in 0..100 (0: never wait), got {self.next_request_wait_ms}"
            )
        if self.cpu_affinity not in ("auto", "on", "off"):
            raise ConfigError(f"cpu_affinity must be auto, on or off, got {self.cpu_affinity!r}")
        if not 0 <= self.controller_nice <= 19:
            raise ConfigError(f"controller_nice must be in 0..19, got {self.controller_nice}")
        if not 0 < self.controller_busy_share <= 1:
            raise ConfigError(f"controller_busy_share must be in (0, 1], got {self.controller_busy_share}")
        if not 0 < self.shadow_cpu_budget <= 1:
            raise ConfigError(f"shadow_cpu_budget must be in (0, 1], got {self.shadow_cpu_budget}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        for name in ("webhook_timeout_s", "webhook_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.webhook_retries <= 10:
            raise ConfigError(f"webhook_retries must be 0..10, got {self.webhook_retries}")
        if self.webhook_backoff_s < 0:
            raise ConfigError(f"webhook_backoff_s must be >= 0, got {self.webhook_backoff_s}")
        if self.feedback_auth not in ("token", "open"):
            raise ConfigError(f"feedback_auth must be token or open, got {self.feedback_auth!r}")
        if self.feedback_max_labels < 1 or self.feedback_pending_max < 0:
            raise ConfigError("feedback_max_labels must be >= 1 and feedback_pending_max >= 0")
        if self.feedback_rate < 0 or self.feedback_pending_s <= 0:
            raise ConfigError("feedback_rate must be >= 0 and feedback_pending_s positive")
        for url in self.webhook_url_list:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"webhook URL must start with http:// or https://, got {url!r}")

    @property
    def webhook_url_list(self) -> tuple[str, ...]:
        return tuple(u.strip() for u in self.webhook_urls.split(",") if u.strip())

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def describe() -> list[tuple[str, str, str]]:
    """Return (environment variable, default, help) for every setting."""
    return [
        (PREFIX + f.name.upper(), str(f.default), f.metadata.get("help", ""))
        for f in fields(Settings)
        if not f.metadata.get("internal")
    ]


def find_config(start: Path) -> Path | None:
    """Return the nearest mlcanary.toml in ``start`` or one of its parents (None if there is none)."""
    start = start.resolve()
    for folder in (start, *start.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def _config_path(environ: Mapping[str, str], cwd: Path | None) -> Path | None:
    named = environ.get("MLCANARY_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"MLCANARY_CONFIG={named}: no such file")
        return path.resolve()
    return find_config(cwd or Path.cwd())


def read_config(path: Path) -> dict[str, Any]:
    """Read a mlcanary.toml: setting names as keys (data_dir = "var"); relative folders are the file's.

    A key that names no setting is an error with the nearest name, as for the environment variables.
    """
    by_name = {f.name: f for f in fields(Settings) if not f.metadata.get("internal")}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from error
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in by_name:
            raise ConfigError(f"{path}: unknown setting {key!r}{_did_you_mean(key, by_name, '')}")
        value = _parse(by_name[key], raw, f"{path}: {key}") if isinstance(raw, str) else raw
        if key in ("data_dir", "artifact_dir"):
            value = (path.parent / str(value)).resolve()
        elif (
            key == "database_url"
            and str(value).startswith("sqlite:///")
            and not str(value).startswith("sqlite:////")
        ):
            value = f"sqlite:///{(path.parent / str(value)[len('sqlite:///') :]).resolve()}"
        values[key] = value
    return values


def _did_you_mean(name: str, known: Mapping[str, Any], prefix: str) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f"; did you mean {prefix}{close[0].upper() if prefix else close[0]}?"
    return f"; known: {', '.join(prefix + n.upper() if prefix else n for n in known)}"


def _parse(spec: dataclasses.Field[Any], raw: str, key: str) -> Any:
    kind = str(spec.type)
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as error:
        raise ConfigError(f"{key}={raw!r} is not a valid {kind}") from error
    return raw
