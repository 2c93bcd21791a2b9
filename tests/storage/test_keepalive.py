"""Every PostgreSQL connection asks the server for short TCP keepalives for its own session.

A session whose client vanished without a reset (a silent partition) would otherwise live on the
server for two hours, holding its locks. Real PostgreSQL, over TCP (the server ignores these settings
on a Unix socket).
"""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import make_url

from storage import Database, Keepalive

pytestmark = pytest.mark.postgres


def _session_settings(db: Database) -> dict[str, str]:
    names = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%(names)s)", {"names": list(names)}
        ).all()
    return {name: setting for name, setting in rows}


def test_the_server_drops_a_silent_session_after_the_configured_keepalives(postgres_url: str) -> None:
    db = Database(postgres_url, keepalive=Keepalive(idle_s=7, interval_s=2, count=4))
    try:
        assert _session_settings(db) == {
            "tcp_keepalives_idle": "7",
            "tcp_keepalives_interval": "2",
            "tcp_keepalives_count": "4",
            "tcp_user_timeout": "15000",  # ms: idle + interval * count
        }
    finally:
        db.dispose()


def test_the_defaults_give_up_on_a_silent_peer_in_well_under_a_minute(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        settings = _session_settings(db)
        assert settings["tcp_keepalives_idle"] == "10" and settings["tcp_user_timeout"] == "19000"
    finally:
        db.dispose()


def test_options_already_in_the_url_are_kept(postgres_url: str) -> None:
    url = make_url(postgres_url).update_query_dict({"options": "-c statement_timeout=12345"})
    db = Database(url.render_as_string(hide_password=False), keepalive=Keepalive(idle_s=9))
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "12345ms"
        assert _session_settings(db)["tcp_keepalives_idle"] == "9"
    finally:
        db.dispose()


def test_keepalives_off_leave_the_server_its_own_settings(postgres_url: str) -> None:
    plain, off = Database(postgres_url), Database(postgres_url, keepalive=Keepalive(idle_s=0))
    try:
        with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
            rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name LIKE 'tcp_%%'").fetchall()
        server_own = {name: setting for name, setting in rows}
        assert _session_settings(off) == {k: server_own[k] for k in _session_settings(off)}
        assert _session_settings(off) != _session_settings(plain)
    finally:
        plain.dispose()
        off.dispose()


def test_keepalive_values_are_checked() -> None:
    with pytest.raises(ValueError, match="interval and count >= 1"):
        Keepalive(interval_s=0)
    with pytest.raises(ValueError, match="0: off"):
        Keepalive(idle_s=-1)
    assert Keepalive(idle_s=5, interval_s=2, count=3).dead_after_s == 11
    assert Keepalive(idle_s=0).connect_args(options="-c x=1") == {}
