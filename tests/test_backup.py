"""Backups: `paidan db backup` and the scheduled ones of `paidan serve`, against real databases.

The SQLite tests make their own database file with the project's migrations; the PostgreSQL ones run
when PAIDAN_TEST_DATABASE_URL names a PostgreSQL server (and need pg_dump and pg_restore).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from factories import cli_invoker, make_message
from models.tables import Message, Ticket
from paidan.backup import (
    BackupCancelled, BackupError, ScheduledBackups, back_up, backup_name, backup_time, next_backup_due,
    pg_client_args, prune, scheduled_backups, sqlite_file, to_prune,
)
from paidan.cli import cli
from paidan.db import make_engine, upgrade
from paidan.settings import Settings
from router.intake import Intake
from router.scheduler import Job, Scheduler
from serving import start_serve, wait_for, whole_log

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
PG_URL = os.environ.get("PAIDAN_TEST_DATABASE_URL", "")  # as conftest reads it
needs_postgresql = pytest.mark.skipif(not PG_URL.startswith("postgresql"),
                                      reason="PAIDAN_TEST_DATABASE_URL names no PostgreSQL server")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A migrated SQLite database file of its own (whichever database the rest of the suite runs on)."""
    url = f"sqlite:///{tmp_path / 'db' / 'paidan.db'}"
    (tmp_path / "db").mkdir()
    upgrade(url)
    return url


def add_tickets(url: str, count: int, *, raw_bytes: int = 100) -> None:
    engine = make_engine(url)
    intake = Intake(engine)
    for i in range(count):  # a customer each: every message opens a ticket
        intake.accept_now(make_message(email=f"c{uuid.uuid4().hex[:8]}@example.com", text=f"问题 {i}",
                                       raw=os.urandom(raw_bytes)))
    engine.dispose()


def counts_in(path: Path) -> tuple[int, int]:
    copy = sqlite3.connect(path)
    try:
        return (copy.execute("SELECT count(*) FROM tickets").fetchone()[0],
                copy.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        copy.close()


def migrations_head() -> str:
    from alembic.script import ScriptDirectory

    from paidan.db import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def our_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if backup_time(name))


# ---------------------------------------------------------------- pure helpers


def test_names_carry_the_utc_time_and_read_back():
    shanghai = NOW.astimezone(ZoneInfo("Asia/Shanghai"))
    assert backup_name(shanghai, ".db") == "paidan-backup-20261123T020000Z.db"
    assert backup_time("paidan-backup-20261123T020000Z.dump") == NOW
    for other in ("paidan.db", "paidan-backup-latest.db", "paidan-backup-20261123T020000Z.db.partial",
                  ".paidan-backup-20261123T020000Z.db.abc.partial", "paidan-backup-20261123T020000Z.sql"):
        assert backup_time(other) is None


def test_pruning_chooses_only_our_oldest_of_that_kind():
    names = [backup_name(NOW - timedelta(days=d), ".db") for d in range(5)]
    others = ["paidan.db", "notes.txt", backup_name(NOW - timedelta(days=9), ".dump"), "paidan-backup-old.db"]
    assert to_prune(names[::-1] + others, 2, ".db") == names[2:]  # newest first kept, whatever the order given
    assert to_prune(names + others, 7, ".db") == []
    assert to_prune(names + others, 1, ".dump") == []


def test_the_next_backup_is_due_a_period_after_the_newest_and_after_the_last_try():
    day = timedelta(hours=24)
    assert next_backup_due(None, None, day) < NOW  # nothing yet: at once
    assert next_backup_due(NOW, None, day) == NOW + day  # a restart does not make another at once
    assert next_backup_due(NOW - 3 * day, NOW, day) == NOW + day  # a failure is tried again a period later


def test_the_postgresql_password_goes_in_the_environment_never_on_the_command_line():
    args, env = pg_client_args("postgresql://paidan:s3cr%27t@db.internal:5433/paidan?sslmode=require")
    assert env == {"PGPASSWORD": "s3cr't"}
    assert not any("s3cr" in arg for arg in args)
    assert args == ["--dbname", "host='db.internal' port='5433' user='paidan' dbname='paidan' sslmode='require'",
                    "--no-password"]


@pytest.mark.parametrize("url,message", [
    ("sqlite://", "in memory"),
    ("sqlite:///:memory:", "in memory"),
    ("mysql://paidan@db/paidan", "cannot back up a mysql database"),
])
def test_what_cannot_be_backed_up_is_refused_in_one_line(url, message):
    with pytest.raises(BackupError, match=message):
        sqlite_file(url)


# ---------------------------------------------------------------- SQLite


def test_a_sqlite_backup_is_a_checked_copy_readable_by_its_owner_only(sqlite_url, tmp_path):
    add_tickets(sqlite_url, 12)
    backup = back_up(sqlite_url, now=NOW)
    assert backup.path == tmp_path / "db" / "paidan-backup-20261123T020000Z.db"
    assert (backup.tickets, backup.messages, backup.revision) == (12, 12, migrations_head())
    assert counts_in(backup.path) == (12, 12)
    assert stat.S_IMODE(backup.path.stat().st_mode) == 0o600
    assert backup.size == backup.path.stat().st_size
    # One self-contained file: no WAL beside it, nothing half-written left in the directory.
    copy = sqlite3.connect(backup.path)
    assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    copy.close()
    assert sorted(os.listdir(tmp_path / "db")) == ["paidan-backup-20261123T020000Z.db", "paidan.db"]
    with pytest.raises(BackupError, match="already exists"):
        back_up(sqlite_url, now=NOW)


def test_a_backup_taken_while_paidan_keeps_writing_is_consistent(sqlite_url, tmp_path):
    add_tickets(sqlite_url, 150, raw_bytes=8000)  # a few hundred pages, so the copy takes many steps
    engine = make_engine(sqlite_url)
    intake = Intake(engine)
    written, stop = [], threading.Event()

    def keep_writing():
        while not stop.is_set():
            written.append(intake.accept_now(make_message(email=f"w{len(written)}@example.com", text="还在写",
                                                          raw=os.urandom(8000))))

    steps: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        steps.append((done, total))
        if len(steps) > 2 * (total // 16 + 1):
            raise AssertionError("the copy keeps starting over after the writer's commits")
        if len(steps) % 8 == 1:  # the writer commits between the copy's steps, again and again
            before = len(written)
            wait_for(lambda: len(written) > before, "the writer to write during the copy", seconds=10)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        wait_for(lambda: written, "the writer to start")
        backup = back_up(sqlite_url, tmp_path, progress=progress, pages_per_step=16)
    finally:
        stop.set()
        writer.join()
    with Session(engine) as session:
        tickets_now = session.scalar(select(func.count()).select_from(Ticket))
    engine.dispose()
    # Many steps with commits between them, and the copy never started over (SQLite restarts a stepped
    # copy after another connection's write unless it reads from one snapshot), and it finished.
    done = [d for d, _ in steps]
    assert len(steps) > 10 and done == sorted(done) and steps[-1][0] == steps[-1][1]
    assert 150 < backup.tickets < tickets_now  # written to during the copy, and the copy is one moment of it
    assert counts_in(backup.path) == (backup.tickets, backup.messages) and backup.tickets == backup.messages
    copy = sqlite3.connect(backup.path)
    assert copy.execute("PRAGMA foreign_key_check").fetchall() == []
    copy.close()


@pytest.mark.parametrize("when", ["copying", "checking"])
def test_a_cancelled_backup_leaves_nothing_behind(sqlite_url, tmp_path, when):
    add_tickets(sqlite_url, 40, raw_bytes=8000)
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if when == "copying" or done == total:
            cancel.set()

    out = tmp_path / "backups"
    out.mkdir()
    with pytest.raises(BackupCancelled):
        back_up(sqlite_url, out, progress=progress, cancel=cancel, pages_per_step=8)
    assert os.listdir(out) == []


def test_prune_keeps_exactly_the_newest_n_of_ours_and_nothing_else_goes(tmp_path):
    ours = [backup_name(NOW - timedelta(hours=h), ".db") for h in range(6)]
    dumps = [backup_name(NOW - timedelta(hours=h), ".dump") for h in range(3)]
    others = ["paidan.db", "paidan-backup-manual.db", "notes.txt", ".paidan-backup-20261123T020000Z.db.x.partial"]
    for name in ours + dumps + others:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / backup_name(NOW - timedelta(days=30), ".db")).mkdir()  # named like ours, but not a file
    (tmp_path / backup_name(NOW - timedelta(days=31), ".db")).symlink_to(tmp_path / "paidan.db")
    removed = prune(tmp_path, 2, ".db")
    assert sorted(p.name for p in removed) == sorted(ours[2:])
    left = set(os.listdir(tmp_path))
    assert left == set(ours[:2] + dumps + others) | {backup_name(NOW - timedelta(days=d), ".db") for d in (30, 31)}
    assert prune(tmp_path, 2, ".db") == []


# ---------------------------------------------------------------- the command


@pytest.fixture
def run(sqlite_url, monkeypatch, tmp_path):
    return cli_invoker(cli, sqlite_url, monkeypatch, tmp_path, unset=("PAIDAN_CONFIG",))


def test_db_backup_prints_one_line_and_how_to_restore(run, sqlite_url, tmp_path):
    add_tickets(sqlite_url, 3)
    out = run("db", "backup").output
    [written] = our_files(tmp_path / "db")
    assert f"backed up to {tmp_path / 'db' / written}:" in out and "3 tickets, 3 messages" in out and " s\n" in out
    assert "to restore: stop paidan" in out and "paidan.db-wal" in out
    assert counts_in(tmp_path / "db" / written) == (3, 3)


def test_db_backup_keep_prunes_the_oldest_of_ours_in_the_out_directory(run, tmp_path):
    out = tmp_path / "backups"
    out.mkdir()
    old = [backup_name(datetime.now(UTC) - timedelta(days=d), ".db") for d in (1, 2, 3)]
    for name in old + ["keep-me.txt"]:
        (out / name).write_bytes(b"old")
    printed = run("db", "backup", "--out", str(out), "--keep", "2").output
    assert "removed 2 older" in printed
    mine = our_files(out)
    assert len(mine) == 2 and old[0] in mine and old[1] not in mine and (out / "keep-me.txt").exists()


def test_db_backup_to_a_named_file_never_writes_over_one(run, tmp_path):
    run("db", "backup", "--out", "mine.db")
    assert counts_in(tmp_path / "mine.db") == (0, 0)
    again = run("db", "backup", "--out", "mine.db", ok=False)
    assert again.exit_code == 1 and "already exists" in again.output and "Traceback" not in again.output


@pytest.mark.parametrize("url,message", [
    ("sqlite://", "the database is in memory"),
    ("mysql://paidan@db.internal/paidan", "cannot back up a mysql database"),
    ("sqlite:///missing/paidan.db", "there is no SQLite database at"),
])
def test_db_backup_refuses_in_one_line(run, monkeypatch, url, message):
    monkeypatch.setenv("PAIDAN_DATABASE_URL", url)
    result = run("db", "backup", ok=False)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_db_backup_says_to_install_the_postgresql_client(run, monkeypatch):
    monkeypatch.setenv("PAIDAN_DATABASE_URL", "postgresql://paidan:pw@127.0.0.1:9/paidan")
    monkeypatch.setenv("PATH", "")
    result = run("db", "backup", ok=False)
    assert result.exit_code == 1 and "pg_dump is not on PATH: install the PostgreSQL client" in result.output


def test_db_backup_help_says_how_to_restore(run):
    out = run("db", "backup", "--help").output
    assert "while `paidan serve` keeps running" in out and "pg_restore --clean" in out and "--keep" in out


# ---------------------------------------------------------------- scheduled, in serve


def test_scheduled_backups_run_each_period_and_keep_the_newest(sqlite_url, tmp_path):
    add_tickets(sqlite_url, 2)
    directory = tmp_path / "backups"  # made by the first backup
    backups = ScheduledBackups(sqlite_url, timedelta(seconds=1), directory, keep=2)
    job = Job("backup", backups.check_every, backups.run_if_due)
    scheduler = Scheduler(make_engine(sqlite_url), [job])

    async def until_three_started():
        stop = asyncio.Event()
        timers = asyncio.create_task(scheduler.run_forever(stop))
        await asyncio.to_thread(wait_for, lambda: job.done >= 3, "three scheduled backups", seconds=60)
        stop.set()
        await timers

    directory.mkdir()
    (directory / "unrelated.txt").write_text("mine")
    for days in (3, 2):
        (directory / backup_name(datetime.now(UTC) - timedelta(days=days), ".db")).write_bytes(b"old")
    asyncio.run(until_three_started())
    backups.close()
    mine = our_files(directory)
    assert len(mine) == 2 and all(datetime.now(UTC) - backup_time(n) < timedelta(minutes=5) for n in mine)
    assert all(counts_in(directory / name) == (2, 2) for name in mine)
    assert (directory / "unrelated.txt").read_text() == "mine" and job.failures == 0


def test_a_failed_scheduled_backup_is_logged_and_tried_again_a_period_later(tmp_path, caplog):
    backups = ScheduledBackups(f"sqlite:///{tmp_path / 'gone.db'}", timedelta(hours=6), tmp_path / "b", keep=2)
    caplog.set_level(logging.INFO, logger="paidan.backup")
    now = datetime.now(UTC)
    assert backups.run_if_due(None, now) == 1
    wait_for(lambda: not backups.busy, "the backup to fail")
    assert "backup failed: there is no SQLite database at" in caplog.text and "trying again in 6 h" in caplog.text
    assert backups.run_if_due(None, now + timedelta(hours=1)) == 0
    assert backups.run_if_due(None, now + timedelta(hours=6)) == 1
    wait_for(lambda: not backups.busy, "the backup to fail again")
    assert caplog.text.count("backup failed") == 2


def test_backup_settings_come_from_toml_and_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIDAN_CONFIG", str(tmp_path / "paidan.toml"))
    assert Settings().backup.every_hours == 0 and scheduled_backups(Settings()) is None  # off unless asked
    (tmp_path / "paidan.toml").write_text('database_url = "sqlite:///data/paidan.db"\n[backup]\nevery_hours = 24\n')
    backups = scheduled_backups(Settings())
    assert backups.every == timedelta(hours=24) and backups.keep == 7 and backups.directory == tmp_path / "data"
    monkeypatch.setenv("PAIDAN_BACKUP__DIRECTORY", "/srv/backups")
    monkeypatch.setenv("PAIDAN_BACKUP__KEEP", "30")
    assert scheduled_backups(Settings()).directory == Path("/srv/backups") and Settings().backup.keep == 30


def test_serve_makes_backups_when_told_and_stops_cleanly(database_url, tmp_path):
    env = {**os.environ, "PAIDAN_DATABASE_URL": database_url, "PAIDAN_WEB_PORT": "0", "PAIDAN_SMTP_PORT": "0",
           "PAIDAN_SECRET_KEY": "test",
           "PAIDAN_BACKUP__EVERY_HOURS": str(1.5 / 3600), "PAIDAN_BACKUP__DIRECTORY": str(tmp_path / "backups"),
           "PAIDAN_BACKUP__KEEP": "1"}
    proc, _base, lines = start_serve(env, tmp_path)
    try:
        wait_for(lambda: sum("backup: " in line and "older removed" in line for line in lines), "a pruned backup",
                 lines, seconds=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    log = whole_log(proc, lines)
    assert f"backup: every 0.000416667 h into {tmp_path / 'backups'}" in log
    assert "Traceback" not in log and "backup failed" not in log
    assert len(our_files(tmp_path / "backups")) == 1
    assert not [n for n in os.listdir(tmp_path / "backups") if n.endswith(".partial")]


# ---------------------------------------------------------------- PostgreSQL


@needs_postgresql
def test_a_postgresql_dump_restores_into_a_fresh_database(database_url, engine, tmp_path):
    intake = Intake(engine)
    for i in range(5):
        intake.accept_now(make_message(email=f"pg{i}@example.com", raw=b"\x00raw mail\xff" * 10))
    backup = back_up(database_url, tmp_path, now=NOW)
    assert backup.path.name == "paidan-backup-20261123T020000Z.dump"
    assert (backup.tickets, backup.messages) == (5, 5) and backup.revision
    assert stat.S_IMODE(backup.path.stat().st_mode) == 0o600

    admin_url = make_url(PG_URL)
    fresh = f"paidan_r_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{fresh}"'))
    fresh_url = admin_url.set(database=fresh).render_as_string(hide_password=False)
    try:
        args, secrets = pg_client_args(fresh_url)
        restored = subprocess.run(["pg_restore", "--no-owner", *args, str(backup.path)], capture_output=True,
                                  text=True, env={**os.environ, **secrets})
        assert restored.returncode == 0, restored.stderr
        restored_engine = create_engine(make_url(fresh_url))
        with Session(restored_engine) as session:
            assert session.scalar(select(func.count()).select_from(Ticket)) == 5
            raws = session.scalars(select(Message.raw)).all()
            assert len(raws) == 5 and all(raw == b"\x00raw mail\xff" * 10 for raw in raws)
        restored_engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)'))
        admin.dispose()


@needs_postgresql
def test_db_backup_on_postgresql_prints_how_to_restore(database_url, monkeypatch, tmp_path):
    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(cli, ["db", "backup", "--keep", "3"], catch_exceptions=False).output
    [written] = our_files(tmp_path)
    assert written.endswith(".dump") and "0 tickets, 0 messages" in out
    assert "pg_restore --clean --if-exists --dbname" in out


def test_the_restore_hint_never_prints_a_password():
    from paidan.backup import restore_hint

    hint = restore_hint("postgresql://paidan:s3cret@db.internal:5432/paidan", Path("b.dump"))
    assert "s3cret" not in hint and "postgresql://paidan@db.internal:5432/paidan" in hint
    assert hint.endswith("b.dump (with the password in PGPASSWORD)")
