"""Backups of paidan's database: `paidan db backup`, and the scheduled ones of `paidan serve`.

SQLite is copied with its online backup API from the live file while paidan keeps writing;
PostgreSQL is dumped with `pg_dump --format=custom`. Either way the copy is written to a hidden
temporary file beside its final name, checked, synced and only then renamed, so a file called
`paidan-backup-….db` (or `.dump`) is always a whole, checked backup. Backups hold personal data:
they are readable by their owner only.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from models.errors import PaidanError
from paidan.db import normalise_url

log = logging.getLogger(__name__)

PREFIX = "paidan-backup-"
STAMP = "%Y%m%dT%H%M%SZ"
# Only files named exactly like this are ever pruned; anything else in the directory is left alone.
OUR_NAME = re.compile(r"paidan-backup-(\d{8}T\d{6}Z)\.(db|dump)")
SQLITE_SUFFIX, POSTGRESQL_SUFFIX = ".db", ".dump"
# 1,024 pages (4 MiB at SQLite's default page size) per step: the progress bar moves smoothly and
# a cancelled backup (serve stopping) stops within a moment.
PAGES_PER_STEP = 1024

# (pages copied, pages in all); called after each step of a SQLite copy.
Progress = Callable[[int, int], None]


class BackupError(PaidanError):
    """A backup that could not be made or did not pass its checks; nothing was left behind."""


class BackupCancelled(BackupError):
    """`paidan serve` is stopping: the backup in progress was abandoned."""


@dataclass(frozen=True)
class Backup:
    path: Path
    size: int  # bytes
    revision: str  # the Alembic revision the copy is at
    tickets: int  # counted in the copy itself
    messages: int
    seconds: float

    def summary(self) -> str:
        return (f"{self.path}: {human_size(self.size)}, {self.tickets:,} tickets, {self.messages:,} messages, "
                f"revision {self.revision}, {self.seconds:.1f} s")


# ---------------------------------------------------------------- pure helpers


def backup_name(now: datetime, suffix: str) -> str:
    """`paidan-backup-20261123T020000Z.db`: UTC, so names sort in time order whatever the time zone."""
    return f"{PREFIX}{now.astimezone(UTC).strftime(STAMP)}{suffix}"


def backup_time(name: str) -> datetime | None:
    """When a backup of ours was made, read from its name; None for any other file name."""
    found = OUR_NAME.fullmatch(name)
    return datetime.strptime(found.group(1), STAMP).replace(tzinfo=UTC) if found else None


def to_prune(names: Iterable[str], keep: int, suffix: str) -> list[str]:
    """Our backups of one kind (`.db` or `.dump`) beyond the newest `keep`, oldest last; other names never."""
    ours = sorted((name for name in names if backup_time(name) and name.endswith(suffix)),
                  key=backup_time, reverse=True)
    return ours[keep:]


def next_backup_due(newest: datetime | None, last_attempt: datetime | None, every: timedelta) -> datetime:
    """When the next scheduled backup is due: a period after the newest one on disk (so restarting serve
    does not make another at once) and a period after the last attempt (so a failing one is tried
    again each period, not at every check)."""
    return max((t + every for t in (newest, last_attempt) if t is not None), default=datetime.min.replace(tzinfo=UTC))


def human_size(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    value, unit = size / 1000, "KB"
    for bigger in ("MB", "GB"):
        if value >= 1000:
            value, unit = value / 1000, bigger
    return f"{value:.1f} {unit}"


def sqlite_file(database_url: str) -> Path | None:
    """The file of a SQLite database URL; None for PostgreSQL. Refuses what cannot be backed up."""
    url = make_url(normalise_url(database_url))
    backend = url.get_backend_name()
    if backend == "postgresql":
        return None
    if backend != "sqlite":
        raise BackupError(f"cannot back up a {backend} database: paidan backs up SQLite and PostgreSQL only")
    if url.database in (None, "", ":memory:") or url.query.get("mode") == "memory":
        raise BackupError("the database is in memory (database_url has no file): there is nothing to back up")
    return Path(url.database).absolute()


def default_directory(database_url: str) -> Path:
    """Where backups go unless told: beside the SQLite file, or the working directory for PostgreSQL."""
    try:
        source = sqlite_file(database_url)
    except BackupError:
        return Path.cwd()
    return source.parent if source else Path.cwd()


def destination(out: Path | None, database_url: str, now: datetime) -> Path:
    """The backup's file: `out` itself, or our name in `out` when it is a directory (or beside the database)."""
    suffix = SQLITE_SUFFIX if sqlite_file(database_url) else POSTGRESQL_SUFFIX
    if out is None or out.is_dir():
        return (out or default_directory(database_url)) / backup_name(now, suffix)
    return out


def pg_client_args(database_url: str) -> tuple[list[str], dict[str, str]]:
    """pg_dump's connection arguments and environment for a database URL. The password goes in
    PGPASSWORD, never on the command line, where every user of the machine can read it (ps)."""
    url = make_url(normalise_url(database_url))
    parts = {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database}
    parts.update({key: value if isinstance(value, str) else value[-1] for key, value in url.query.items()})
    conninfo = " ".join(f"{key}='{_quote(str(value))}'" for key, value in parts.items() if value is not None)
    env = {"PGPASSWORD": url.password} if url.password else {}
    return ["--dbname", conninfo, "--no-password"], env


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def restore_hint(database_url: str, path: Path) -> str:
    if source := sqlite_file(database_url):
        return (f"to restore: stop paidan, delete {source}-wal and {source}-shm if they are there, "
                f"then copy {path} over {source}")
    url = make_url(normalise_url(database_url))
    # Without the password: what is printed ends up in terminals' scrollback and in logs.
    target = URL.create("postgresql", username=url.username, host=url.host, port=url.port, database=url.database,
                        query=url.query).render_as_string()
    password = " (with the password in PGPASSWORD)" if url.password else ""
    return f"to restore: stop paidan, then pg_restore --clean --if-exists --dbname '{target}' {path}{password}"


# ---------------------------------------------------------------- making one


def back_up(database_url: str, out: Path | None = None, *, now: datetime | None = None,
            progress: Progress | None = None, cancel: threading.Event | None = None,
            pages_per_step: int = PAGES_PER_STEP) -> Backup:
    """Copy the database to `out` (see `destination`), check the copy, and return what it holds."""
    started = time.monotonic()
    source = sqlite_file(database_url)
    final = destination(out, database_url, now or datetime.now(UTC))
    if source is not None and not source.is_file():
        raise BackupError(f"there is no SQLite database at {source} (database_url); nothing to back up")
    _refuse_existing(final)
    if not final.parent.is_dir():
        raise BackupError(f"cannot write {final}: {final.parent} is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)  # mode 0600
    except OSError as exc:
        raise BackupError(f"cannot write in {final.parent}: {exc.strerror or exc}") from exc
    os.close(fd)
    partial = Path(name)
    try:
        if source is not None:
            _copy_sqlite(source, partial, progress, cancel, pages_per_step)
            revision, tickets, messages = _check_sqlite_copy(partial, cancel)
        else:
            connection, secrets = pg_client_args(database_url)
            _run([_pg_client("pg_dump"), "--format=custom", "--file", str(partial), *connection], secrets, cancel)
            revision, tickets, messages = _check_dump(partial, cancel)
        _publish(partial, final)
    except sqlite3.Error as exc:
        if cancel is not None and cancel.is_set():  # the integrity check was interrupted
            raise BackupCancelled("paidan is stopping: the backup was abandoned") from exc
        raise BackupError(f"cannot back up {source}: {exc}") from exc
    except OSError as exc:
        raise BackupError(f"cannot write {final}: {exc.strerror or exc}") from exc
    finally:
        for leftover in (partial, *(partial.with_name(partial.name + s) for s in ("-journal", "-wal", "-shm"))):
            leftover.unlink(missing_ok=True)
    return Backup(final, final.stat().st_size, revision, tickets, messages, time.monotonic() - started)


def prune(directory: Path, keep: int, suffix: str, *, spare: Path | None = None) -> list[Path]:
    """Delete our backups of one kind in `directory` beyond the newest `keep`; returns what went."""
    removed = []
    try:
        names = [entry.name for entry in os.scandir(directory) if entry.is_file(follow_symlinks=False)]
        for name in to_prune(names, keep, suffix):
            path = directory / name
            if spare is not None and path == spare:
                continue  # the backup just made stays, whatever its name says
            path.unlink(missing_ok=True)
            removed.append(path)
    except OSError as exc:
        raise BackupError(f"cannot remove old backups in {directory}: {exc.strerror or exc}") from exc
    return removed


def _refuse_existing(final: Path) -> None:
    if final.exists():
        raise BackupError(f"{final} already exists: choose another --out (a backup is never written over a file)")


def _copy_sqlite(source: Path, partial: Path, progress: Progress | None, cancel: threading.Event | None,
                 pages_per_step: int) -> None:
    # mode=rw: a mistyped path is an error, not a new empty database.
    live = sqlite3.connect(source.resolve().as_uri() + "?mode=rw", uri=True, timeout=30, isolation_level=None)
    try:
        # One read snapshot for the whole copy. Without it SQLite restarts a stepped copy after every
        # write by another connection, so under steady intake it never ends; in WAL mode (paidan/db.py)
        # a reader holds up no writer, so intake and the router carry on meanwhile.
        live.execute("BEGIN")
        live.execute("SELECT count(*) FROM sqlite_master").fetchone()
        copy = sqlite3.connect(partial, isolation_level=None)
        try:
            def step(_status: int, remaining: int, total: int) -> None:
                if cancel is not None and cancel.is_set():
                    raise BackupCancelled("paidan is stopping: the backup was abandoned")
                if progress is not None:
                    progress(total - remaining, total)

            live.backup(copy, pages=pages_per_step, progress=step)
        finally:
            copy.close()
    finally:
        live.close()


def _check_sqlite_copy(partial: Path, cancel: threading.Event | None) -> tuple[str, int, int]:
    copy = sqlite3.connect(partial, isolation_level=None)
    if cancel is not None:  # checking a big copy takes a while: serve stopping need not wait for it
        copy.set_progress_handler(cancel.is_set, 1000)
    try:
        # The copy carries the live database's WAL flag; one self-contained file is easier to keep and
        # to restore (paidan turns WAL on again when it opens it).
        copy.execute("PRAGMA journal_mode=DELETE")
        problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupError(f"the copy failed SQLite's integrity check: {problems[0]}")
        try:
            revision = copy.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:
            revision = None
        if revision is None:
            raise BackupError("the database has no migration revision: not a paidan database, or never "
                              "migrated (`paidan db upgrade`)")
        tickets, = copy.execute("SELECT count(*) FROM tickets").fetchone()
        messages, = copy.execute("SELECT count(*) FROM messages").fetchone()
        return revision[0], tickets, messages
    finally:
        copy.close()


def _publish(partial: Path, final: Path) -> None:
    """fsync, then rename: after a power cut there is either the whole backup or none."""
    os.chmod(partial, 0o600)  # personal data
    _fsync(partial)
    _refuse_existing(final)
    os.replace(partial, final)
    _fsync(final.parent)  # the rename itself


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pg_client(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise BackupError(f"{program} is not on PATH: install the PostgreSQL client, the same major version as "
                          f"the server or newer (Debian: apt-get install postgresql-client)")
    return found


def _run(argv: list[str], env: dict[str, str], cancel: threading.Event | None) -> None:
    """Run a PostgreSQL client program to its end (or until `cancel`); its last error line if it fails."""
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while True:
        try:
            _, err = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                proc.terminate()
                proc.communicate()
                raise BackupCancelled("paidan is stopping: the backup was abandoned") from None
    if proc.returncode != 0:
        last = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise BackupError(f"{Path(argv[0]).name} failed: {last}")


def _check_dump(dump: Path, cancel: threading.Event | None) -> tuple[str, int, int]:
    """The dump's table of contents must read back, and its data for the tables we count."""
    pg_restore = _pg_client("pg_restore")
    listing = subprocess.run([pg_restore, "--list", str(dump)], capture_output=True, text=True)
    if listing.returncode != 0 or not re.search(r"TABLE DATA \S+ tickets ", listing.stdout):
        last = (listing.stderr.strip().splitlines() or ["no data for the tickets table"])[-1]
        raise BackupError(f"the dump does not read back (pg_restore --list): {last}")
    # The data of three tables as pg_restore would load it: one line per row between COPY and "\.".
    proc = subprocess.Popen([pg_restore, "--data-only", "--table=alembic_version", "--table=tickets",
                             "--table=messages", "--file=-", str(dump)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    rows: Counter[str] = Counter()
    revision, table = None, None
    for line in proc.stdout:
        if cancel is not None and cancel.is_set():
            proc.kill()
            proc.wait()
            raise BackupCancelled("paidan is stopping: the backup was abandoned")
        if table is None:
            if line.startswith(b"COPY "):
                table = line.split()[1].decode().rsplit(".", 1)[-1]
        elif line == b"\\.\n":
            table = None
        else:
            rows[table] += 1
            if table == "alembic_version":
                revision = line.strip().decode()
    if proc.wait() != 0 or revision is None:
        raise BackupError("the dump does not read back (pg_restore --data-only): no migration revision in it")
    return revision, rows["tickets"], rows["messages"]


# ---------------------------------------------------------------- scheduled, in `paidan serve`

# How often serve looks whether a backup is due: often enough to keep to the hour after a restart.
CHECK_SECONDS = 60.0


class ScheduledBackups:
    """The [backup] job of `paidan serve`: a backup every `every`, then all but the newest `keep` pruned.

    The scheduler runs its jobs one after another, so the copy (minutes, for a big database) runs in a
    thread of its own and routing, SLA sweeps and offers carry on meanwhile; it reads through its own
    connection and leaves the job's transaction unused. A failed backup is logged and tried again a
    period later.
    """

    def __init__(self, database_url: str, every: timedelta, directory: Path, keep: int):
        self.database_url = database_url
        self.every = every
        self.directory = directory
        self.keep = keep
        self.check_every = min(CHECK_SECONDS, every.total_seconds())
        self._last_attempt: datetime | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()

    @property
    def busy(self) -> bool:
        """A backup is being made."""
        return self._thread is not None and self._thread.is_alive()

    def run_if_due(self, _session, now: datetime) -> int:
        """A scheduler Job's run: start a backup when one is due; 1 when it started one."""
        if self.busy:
            return 0
        if now < next_backup_due(self.newest(), self._last_attempt, self.every):
            return 0
        self._last_attempt = now
        self._thread = threading.Thread(target=self._back_up, args=(now,), name="paidan-backup", daemon=True)
        self._thread.start()
        return 1

    def newest(self) -> datetime | None:
        try:
            names = os.listdir(self.directory)
        except OSError:  # not made yet: the first backup makes it
            return None
        return max(filter(None, map(backup_time, names)), default=None)

    def close(self) -> None:
        """Abandon a backup in progress (its temporary file is removed) and wait for its thread."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join()

    def _back_up(self, now: datetime) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            backup = back_up(self.database_url, self.directory, now=now, cancel=self._cancel)
            log.info("backup: %s", backup.summary())
            removed = prune(self.directory, self.keep, backup.path.suffix, spare=backup.path)
            if removed:
                log.info("backup: %d older removed, the newest %d kept", len(removed), self.keep)
        except BackupCancelled:
            log.info("backup: abandoned, paidan is stopping")
        except (BackupError, OSError) as exc:
            log.error("backup failed: %s; trying again in %s", exc, _period(self.every))
        except Exception:  # noqa: BLE001 — a bug must not stop the backups to come; the traceback says where
            log.exception("backup failed; trying again in %s", _period(self.every))


def _period(every: timedelta) -> str:
    hours = every.total_seconds() / 3600
    return f"{hours:g} h" if hours >= 1 else f"{every.total_seconds():g} s"


def scheduled_backups(settings) -> ScheduledBackups | None:
    """The settings' [backup] job, or None when `every_hours` is 0 (the default)."""
    b = settings.backup
    if b.every_hours <= 0:
        return None
    directory = Path(b.directory) if b.directory else default_directory(settings.database_url)
    log.info("backup: every %g h into %s, keeping the newest %d", b.every_hours, directory, b.keep)
    return ScheduledBackups(settings.database_url, timedelta(hours=b.every_hours), directory, b.keep)
