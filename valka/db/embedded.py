"""An embedded PostgreSQL server in a local data folder, so `valka server` runs with no setup.

Uses the PostgreSQL binaries shipped in the `pgserver` wheel (or, without it, the ones on
PATH) but not pgserver's own lifecycle code, whose semantics do not fit a server process:
it shares one postgres between "handles" through a pid list on disk, so after its owner is
SIGKILLed the dead pid stays listed and no later owner ever stops the server; it trusts any
live pid in postmaster.pid; and as root it opens every parent folder to all users.

Here one process owns the server at a time. Ownership is an exclusive flock on
`<data_dir>/postgres.lock`, which the kernel releases when the owner dies however it dies,
so a new owner knows for certain that any postgres still running on the folder is an orphan
of a killed run: it stops that server cleanly and starts its own. A stale postmaster.pid
whose pid is gone, or belongs to an unrelated process, is removed. The owner stops its
server on `stop()`, on leaving a `with` block, or at interpreter exit.

Layout of `data_dir`: `postgres/` (the cluster), `postgres.lock`, `postgres.log`.
The server listens on a unix socket only (no TCP port to collide with or to expose).

PostgreSQL refuses to run as root. As root the cluster is run by the owner of an existing
cluster folder if that is not root (a folder made by a normal user stays usable by them),
else by a system user created with useradd (`valka-postgres`); each parent folder of the
cluster gains the traverse bit for others (o+x, never read), which is logged.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Final, Self
from urllib.parse import quote

import psutil
import psycopg
from psycopg import sql

from valka.core.errors import DatabaseError
from valka.db.sqlfile import load_queries

__all__ = [
    "EmbeddedPostgres",
    "create_database",
    "drop_database",
    "postgres_bin_dir",
    "stop_orphaned_servers",
]

_log = logging.getLogger(__name__)

_QUERIES: Final = load_queries("valka.db", "sql/admin.sql")

SYSTEM_USER: Final = "valka-postgres"
_SUPERUSER: Final = "postgres"
# sun_path is 108 bytes on Linux and 104 on macOS, including the final NUL.
_MAX_SOCKET_PATH: Final = 100
_SAFE_PATH_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/_.-"
)


class EmbeddedPostgres:
    """One PostgreSQL server on `data_dir`, owned by this object while started."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        database: str = "valka",
        port: int = 5432,
        durable: bool = True,
        bin_dir: Path | None = None,
        system_user: str = SYSTEM_USER,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        """`durable=False` trades crash safety for speed (fsync off): for tests only."""
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.pgdata = self.data_dir / "postgres"
        self.database = database
        self.port = port
        self.durable = durable
        self._bin_dir = bin_dir
        self._system_user = system_user
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._mutex = threading.Lock()
        self._lock_fd: int | None = None
        self._owner_pid = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None

    # -- public ------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._process is not None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while started."""
        return self._process.pid if self._process is not None else None

    @property
    def conninfo(self) -> str:
        """URL of `database` (the one Valka uses); only valid while started."""
        return self._url(self.database)

    @property
    def admin_conninfo(self) -> str:
        """URL of the `postgres` maintenance database; only valid while started."""
        return self._url(_SUPERUSER)

    def start(self) -> str:
        """Start the server (initializing the cluster if needed); return `conninfo`.

        Raises DatabaseError if another live process owns the folder or the server does not
        come up (the message carries the end of the server log).
        """
        with self._mutex:
            if self._process is not None:
                return self.conninfo
            if os.name != "posix":
                raise DatabaseError("the embedded PostgreSQL needs a POSIX system")
            try:
                self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._lock_fd = _take_ownership(self.data_dir / "postgres.lock")
                self._owner_pid = os.getpid()
                try:
                    self._start_locked()
                except BaseException:
                    self._stop_locked()
                    raise
            except (OSError, psycopg.Error) as exc:
                # OSError: typically a folder made by another user (e.g. by a run as root).
                raise DatabaseError(
                    f"cannot start the embedded PostgreSQL in {self.data_dir}: {exc}"
                ) from exc
            atexit.register(self.stop)
            return self.conninfo

    def stop(self) -> None:
        """Stop the server if this object started it; safe to call more than once."""
        with self._mutex:
            # A forked child inherits atexit hooks; only the process that started the
            # server may stop it.
            if self._owner_pid != os.getpid():
                return
            self._stop_locked()
            atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- start -------------------------------------------------------------------------

    def _start_locked(self) -> None:
        bin_dir = self._bin_dir or postgres_bin_dir()
        run_as = self._run_as()
        _stop_orphan(self.pgdata, self._stop_timeout_s)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir, run_as)
        if run_as is not None:
            _prepare_for_user(self.pgdata, bin_dir, run_as)
        self._socket_dir = self._choose_socket_dir(run_as)
        self._process = self._spawn(bin_dir, run_as)
        self._wait_ready(self._process)
        if self.database != _SUPERUSER:
            create_database(self.admin_conninfo, self.database, exist_ok=True)

    def _run_as(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        with contextlib.suppress(FileNotFoundError):
            owner = self.pgdata.stat().st_uid
            if owner != 0:
                try:
                    return pwd.getpwuid(owner)
                except KeyError:
                    raise DatabaseError(
                        f"{self.pgdata} belongs to uid {owner}, which has no user account"
                    ) from None
        return _ensure_system_user(self._system_user)

    def _initdb(self, bin_dir: Path, run_as: pwd.struct_passwd | None) -> None:
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise DatabaseError(
                    f"{self.pgdata} is not empty but is not a PostgreSQL cluster"
                    " (no PG_VERSION); move it away or choose another data_dir"
                )
            self.pgdata.rmdir()
        # initdb into a scratch folder renamed at the end: a run killed half-way leaves
        # the scratch folder (removed next time), never a half-made cluster.
        scratch = self.data_dir / "postgres.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(scratch, run_as.pw_uid, run_as.pw_gid)
            _grant_traverse(scratch, run_as.pw_uid)
        args = [
            str(bin_dir / "initdb"),
            "-D",
            str(scratch),
            f"--username={_SUPERUSER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if not self.durable:
            args.append("--no-sync")
        _log.info("initializing an embedded PostgreSQL cluster in %s", self.pgdata)
        user = _RunAs(run_as)
        result = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            env=user.env,
            user=user.user,
            group=user.group,
            extra_groups=user.extra_groups,
            cwd=user.cwd,
        )
        if result.returncode != 0:
            raise DatabaseError(
                f"initdb failed for {self.pgdata} (exit {result.returncode}):"
                f" {result.stderr.strip() or result.stdout.strip()}"
            )
        scratch.rename(self.pgdata)

    def _choose_socket_dir(self, run_as: pwd.struct_passwd | None) -> Path:
        candidate = self.pgdata
        socket_path = str(candidate / f".s.PGSQL.{self.port}")
        if len(socket_path) <= _MAX_SOCKET_PATH and set(socket_path) <= _SAFE_PATH_CHARS:
            return candidate
        # The folder path is too long for a unix socket (or would need quoting in
        # unix_socket_directories): use a short private folder named after it instead.
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        short = Path(tempfile.gettempdir()) / f"valka-pg-{digest}"
        short.mkdir(mode=0o700, exist_ok=True)
        uid = run_as.pw_uid if run_as is not None else os.geteuid()
        info = short.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (uid, os.geteuid()):
            raise DatabaseError(f"socket folder {short} exists and belongs to someone else")
        if run_as is not None:
            os.chown(short, run_as.pw_uid, run_as.pw_gid)
        return short

    def _spawn(self, bin_dir: Path, run_as: pwd.struct_passwd | None) -> subprocess.Popen[bytes]:
        assert self._socket_dir is not None
        log_path = self.data_dir / "postgres.log"
        with contextlib.suppress(FileNotFoundError):
            log_path.replace(self.data_dir / "postgres.log.1")
        args = [
            str(bin_dir / "postgres"),
            "-D",
            str(self.pgdata),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=",
            "-c",
            f"unix_socket_directories={self._socket_dir}",
            "-c",
            "unix_socket_permissions=0700",
        ]
        if not self.durable:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            args += ["-c", "full_page_writes=off"]
        user = _RunAs(run_as)
        with log_path.open("ab") as log:
            # A new session keeps a terminal's Ctrl-C away from postgres: the server must
            # outlive the signal long enough to drain and shut down in order.
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=user.env,
                user=user.user,
                group=user.group,
                extra_groups=user.extra_groups,
                cwd=user.cwd,
            )

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        delay = 0.005
        while True:
            if process.poll() is not None:
                raise DatabaseError(
                    f"embedded PostgreSQL exited at start (code {process.returncode});"
                    f" server log:\n{self._log_tail()}"
                )
            lines = _read_pid_file(self.pgdata)
            # Line 8 of postmaster.pid is the server state, "ready" once it accepts
            # connections (written since PostgreSQL 10).
            if len(lines) >= 8 and lines[0] == str(process.pid) and lines[7] == "ready":
                return
            if time.monotonic() > deadline:
                raise DatabaseError(
                    f"embedded PostgreSQL not ready after {self._start_timeout_s:g}s;"
                    f" server log:\n{self._log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _log_tail(self) -> str:
        try:
            return "\n".join(
                (self.data_dir / "postgres.log").read_text(errors="replace").splitlines()[-20:]
            )
        except OSError as exc:
            return f"<no log: {exc}>"

    # -- stop --------------------------------------------------------------------------

    def _stop_locked(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            _shutdown(process.pid, self._stop_timeout_s, child=process)
        if self._socket_dir is not None and self._socket_dir != self.pgdata:
            with contextlib.suppress(OSError):
                self._socket_dir.rmdir()  # the short /tmp folder, empty once postgres is gone
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _url(self, database: str) -> str:
        if self._socket_dir is None or self._process is None:
            raise DatabaseError("the embedded PostgreSQL is not started")
        host = quote(str(self._socket_dir), safe="/")
        return f"postgresql://{_SUPERUSER}@/{quote(database, safe='')}?host={host}&port={self.port}"


# -- databases -----------------------------------------------------------------------------


def create_database(
    admin_conninfo: str, name: str, *, template: str | None = None, exist_ok: bool = False
) -> None:
    """Create database `name` (a copy of `template` if given) on the admin connection's server."""
    _check_db_name(name)
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        if exist_ok:
            row = conn.execute(_QUERIES["database_exists"], {"name": name}).fetchone()
            if row is not None and row[0]:
                return
        if template is None:
            statement = sql.SQL(_QUERIES["database_create"]).format(name=sql.Identifier(name))
        else:
            _check_db_name(template)
            statement = sql.SQL(_QUERIES["database_create_from_template"]).format(
                name=sql.Identifier(name), template=sql.Identifier(template)
            )
        try:
            conn.execute(statement)
        except psycopg.errors.DuplicateDatabase:
            if not exist_ok:
                raise


def drop_database(admin_conninfo: str, name: str) -> None:
    """Drop database `name` if it exists, disconnecting its sessions first."""
    _check_db_name(name)
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL(_QUERIES["database_drop"]).format(name=sql.Identifier(name)))


def _check_db_name(name: str) -> None:
    # PostgreSQL silently truncates longer identifiers, which would create or drop a
    # database other than the one named.
    if not name or len(name.encode()) > 63:
        raise DatabaseError(f"database name {name!r} must be 1 to 63 bytes long")


# -- binaries and users --------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The folder holding `postgres` and `initdb`: pgserver's wheel, else PATH."""
    # find_spec does not import pgserver, whose import has side effects (a runtime
    # folder lookup that warns when XDG_RUNTIME_DIR is unset).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "pginstall" / "bin"
            if (candidate / "postgres").is_file():
                return candidate
    found = shutil.which("postgres")
    if found is not None and (Path(found).parent / "initdb").is_file():
        return Path(found).parent
    raise DatabaseError(
        "no PostgreSQL binaries for the embedded server: install valka with the pgserver"
        " dependency or put postgres and initdb on PATH, or configure database_url"
    )


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    useradd = shutil.which("useradd")
    if useradd is None:
        raise DatabaseError(
            f"PostgreSQL refuses to run as root and useradd is not available to create"
            f" the {name!r} user; create it, run valka as a normal user, or configure"
            " database_url"
        )
    _log.warning("running as root: creating system user %r to run PostgreSQL", name)
    result = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # Another process may have created it at the same time: success either way.
        return pwd.getpwnam(name)
    except KeyError:
        raise DatabaseError(
            f"could not create system user {name!r}: {result.stderr.strip()}"
        ) from None


class _RunAs:
    """subprocess keyword arguments that run a PostgreSQL program as `run_as`."""

    def __init__(self, run_as: pwd.struct_passwd | None) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.user: int | None = None
        self.group: int | None = None
        self.extra_groups: list[int] | None = None
        self.cwd: str | None = None
        if run_as is not None:
            # Drop root's supplementary groups too; cwd "/" because root's may be unreadable.
            self.env["HOME"] = run_as.pw_dir
            self.env["USER"] = self.env["LOGNAME"] = run_as.pw_name
            self.user, self.group, self.extra_groups = run_as.pw_uid, run_as.pw_gid, []
            self.cwd = "/"


def _prepare_for_user(pgdata: Path, bin_dir: Path, run_as: pwd.struct_passwd) -> None:
    info = pgdata.stat()
    if info.st_uid == 0:
        # A cluster left owned by root cannot be run by anyone; hand it to the user.
        _log.warning("giving %s to user %s", pgdata, run_as.pw_name)
        for path in [pgdata, *pgdata.rglob("*")]:
            os.chown(path, run_as.pw_uid, run_as.pw_gid, follow_symlinks=False)
    _grant_traverse(pgdata, run_as.pw_uid)
    _grant_traverse(bin_dir, run_as.pw_uid)


def _grant_traverse(path: Path, uid: int) -> None:
    changed: list[str] = []
    for folder in path.parents:
        info = folder.stat()
        if info.st_uid == uid or info.st_mode & stat.S_IXOTH:
            continue
        folder.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
        changed.append(str(folder))
    if changed:
        _log.warning(
            "so that PostgreSQL's user (uid %d) can reach its files, added o+x (traverse,"
            " not read) to %s",
            uid,
            ", ".join(changed),
        )


# -- ownership and orphans -----------------------------------------------------------------


def _take_ownership(lock_path: Path) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DatabaseError(
            f"the embedded PostgreSQL in {lock_path.parent} is in use by another process"
            f" (pid {holder}); stop it, use another data_dir, or point both at one"
            " database_url"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def stop_orphaned_servers(root: Path, *, older_than_s: float = 0.0) -> list[int]:
    """Stop embedded servers under `root` whose owner is gone; return their pids.

    For folders nobody restarts, such as the temporary clusters of a killed test run: a
    server counts as orphaned when the lock of its data folder is free (or the folder has
    been deleted under it). Servers with a live owner are left alone, and so are servers
    started less than `older_than_s` ago (another process may be about to adopt them).
    """
    stopped: list[int] = []
    newest = time.time() - older_than_s
    for proc in psutil.process_iter(["name", "ppid", "create_time"]):
        try:
            if proc.info["name"] != "postgres" or proc.info["create_time"] > newest:
                continue
            parent = psutil.Process(proc.info["ppid"])
            if parent.name() == "postgres":
                continue  # a backend; its postmaster is handled on its own
            cwd = Path(proc.cwd().removesuffix(" (deleted)"))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if not cwd.is_relative_to(root) or cwd.name != "postgres":
            continue
        try:
            fd = _take_ownership(cwd.parent / "postgres.lock")
        except DatabaseError:
            continue  # owned by a live process
        except OSError:
            fd = None  # the folder is gone: nobody can own this server any more
        try:
            _log.warning("stopping orphaned embedded PostgreSQL (pid %d) in %s", proc.pid, cwd)
            _shutdown(proc.pid, 30.0, child=None)
            stopped.append(proc.pid)
        finally:
            if fd is not None:
                os.close(fd)
    return stopped


def _read_pid_file(pgdata: Path) -> list[str]:
    try:
        return [line.strip() for line in (pgdata / "postmaster.pid").read_text().splitlines()]
    except (FileNotFoundError, UnicodeDecodeError):
        return []


def _stop_orphan(pgdata: Path, timeout_s: float) -> None:
    """With ownership held: stop a server left running on `pgdata`, drop a stale pid file."""
    lines = _read_pid_file(pgdata)
    if not lines:
        return
    try:
        pid = abs(int(lines[0]))
    except ValueError:
        pid = 0
    if pid and _is_postmaster_of(pid, pgdata):
        _log.warning("stopping PostgreSQL (pid %d) left running on %s by a killed run", pid, pgdata)
        _shutdown(pid, timeout_s, child=None)
    # The server removes the file on a clean stop; after a crash, or when its pid now
    # belongs to an unrelated process, postgres would refuse to start while it exists.
    with contextlib.suppress(FileNotFoundError):
        (pgdata / "postmaster.pid").unlink()


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    if pid == os.getpid():
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or not proc.name().startswith("postgres"):
            return False
        try:
            # The postmaster makes its data folder its working directory.
            return Path(proc.cwd()).resolve() == pgdata.resolve()
        except psutil.AccessDenied:
            return str(pgdata) in proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return False


def _shutdown(pid: int, timeout_s: float, *, child: subprocess.Popen[bytes] | None) -> None:
    """Fast shutdown, then immediate, then kill: each step waits for the process to exit."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        children = []
    for sig, wait_s in (
        (signal.SIGINT, timeout_s),  # fast: roll back sessions, checkpoint, exit
        (signal.SIGQUIT, 5.0),  # immediate: exit now, recover at next start
        (signal.SIGKILL, 5.0),
    ):
        try:
            if child is not None:
                # Does nothing once the child has exited and been reaped, when its pid
                # may already belong to another process.
                child.send_signal(sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            break
        if sig == signal.SIGKILL:
            for proc in children:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        if _wait_exit(pid, wait_s, child):
            return
        _log.warning("PostgreSQL (pid %d) still running after %s", pid, sig.name)
    _wait_exit(pid, 5.0, child)


def _wait_exit(pid: int, timeout_s: float, child: subprocess.Popen[bytes] | None) -> bool:
    if child is not None:
        try:
            child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True  # exited; its parent (not us) has yet to reap it
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
