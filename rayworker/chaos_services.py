"""Private Redis and PostgreSQL servers that a fault drill may stop and start at will.

The shared servers (127.0.0.1:6379 and :5432) serve everyone and must never be restarted; a
drill of an outage (:mod:`rayworker.chaos`, ``bench/bench_chaos.py``, the chaos tests) starts
its own server here, on a free port of 127.0.0.1, and stops and starts it as often as it
likes. Both keep their port across restarts, so clients built from ``.url`` / ``.dsn``
reconnect to the new process.

* :class:`PrivateRedis` runs ``redis-server`` in the foreground with nothing on disk
  (``--save "" --appendonly no``): a restart loses every key, like a Redis without
  persistence in production.
* :class:`PrivatePostgres` runs ``initdb`` into a temporary directory (trust auth, fsync off)
  and ``pg_ctl``; a restart keeps the data. ``initdb`` refuses to run as root, so as root
  everything runs as the ``postgres`` user (``runuser -u postgres --``) in a directory that
  user owns. Binaries come from ``$PATH`` or ``/usr/lib/postgresql/*/bin``.

A missing binary raises :class:`ServiceMissingError` (a test turns it into a skip, or a
failure in CI: ``tests/integration/private_services.py``). Nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from rayworker.errors import RayworkerError

__all__ = [
    "PrivatePostgres",
    "PrivateRedis",
    "ServiceError",
    "ServiceMissingError",
    "free_port",
]

_HOST = "127.0.0.1"
_START_TIMEOUT_S = 30.0


class ServiceError(RayworkerError):
    """Raised when a private server cannot be set up, started or stopped."""


class ServiceMissingError(ServiceError):
    """Raised when a server's binaries (or the user to run them as) are not installed."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((_HOST, port)) == 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class PrivateRedis:
    """A ``redis-server`` on a free port of 127.0.0.1 that keeps nothing on disk."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            msg = "redis-server is not installed; install Debian's redis-server package"
            raise ServiceMissingError(msg)
        self.binary = found
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="rw-redis-"))
        self._log = self._dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server (on the same port as before) and wait until it answers PING."""
        if self.running:
            return
        log = self._log.open("ab")
        try:
            # The binary was found on $PATH and every argument is ours: nothing untrusted.
            self._proc = subprocess.Popen(  # noqa: S603
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    _HOST,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(self._dir),
                    "--protected-mode",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        msg = f"redis-server on port {self.port} did not start:\n{_tail(self._log)}"
        raise ServiceError(msg)

    def _ping(self) -> bool:
        try:
            with socket.create_connection((_HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and wait until it has exited."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pg_bin_dir() -> Path:
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidate = Path(initdb).resolve().parent
        if (candidate / "pg_ctl").exists():
            return candidate
    # Debian keeps the server binaries off $PATH; take the newest installed major version.
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not found:
        msg = "PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql"
        raise ServiceMissingError(msg)
    return found[-1].parent


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, on a free port of 127.0.0.1.

    ``initdb`` runs in the constructor; :meth:`start` and :meth:`stop` then run the server.
    Connect with :attr:`dsn` (database ``test``, user ``postgres``, no password).
    """

    def __init__(self, database: str = "test") -> None:
        self.bin = _pg_bin_dir()
        self.port = free_port()
        self.database = database
        self._as_postgres: list[str] = []
        self._dir = Path(tempfile.mkdtemp(prefix="rw-pg-"))
        if os.geteuid() == 0:
            # initdb refuses root: run every server command as postgres, in a dir it owns.
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self._dir, ignore_errors=True)
                msg = "running as root and there is no postgres user to run initdb as"
                raise ServiceMissingError(msg) from None
            os.chown(self._dir, user.pw_uid, user.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self._data = self._dir / "data"
        self._log = self._dir / "server.log"
        self._created_db = False
        self.initdb_s = self._initdb()
        self.start_s: list[float] = []
        """Seconds each :meth:`start` took until the server accepted connections."""

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/DATABASE``."""
        return f"postgresql://postgres@{_HOST}:{self.port}/{self.database}"

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = [*self._as_postgres, *args]
        # Binaries from the PostgreSQL installation, arguments built here: nothing untrusted.
        result = subprocess.run(  # noqa: S603
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            msg = (
                f"{Path(args[0]).name} failed (exit {result.returncode}):\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
            raise ServiceError(msg)
        return result

    def _initdb(self) -> float:
        started = time.perf_counter()
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self._data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )
        return time.perf_counter() - started

    @property
    def running(self) -> bool:
        """True while the server answers on its port."""
        return _listening(self.port)

    def start(self) -> None:
        """Start the server (same port and data as before) and wait until it accepts
        connections; creates the database on the first start."""
        if self.running:
            return
        started = time.perf_counter()
        options = (
            f"-p {self.port} -c listen_addresses={_HOST}"
            f" -c unix_socket_directories={self._dir}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self._data),
            "-l",
            str(self._log),
            "-o",
            options,
            "-w",
            "-t",
            str(int(_START_TIMEOUT_S)),
            "start",
            timeout=_START_TIMEOUT_S + 10,
        )
        self.start_s.append(time.perf_counter() - started)
        if not self._created_db and self.database != "postgres":
            self._run(
                str(self.bin / "createdb"),
                "-h",
                _HOST,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                self.database,
            )
        self._created_db = True

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``: clients are disconnected) and wait."""
        if not (self._data / "postmaster.pid").exists():
            return
        self._run(str(self.bin / "pg_ctl"), "-D", str(self._data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        """Stop the server (immediately) and remove its directory."""
        if (self._data / "postmaster.pid").exists():
            with contextlib.suppress(ServiceError, subprocess.TimeoutExpired):
                self._run(
                    str(self.bin / "pg_ctl"), "-D", str(self._data), "-m", "immediate", "stop"
                )
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
