"""Real servers for tests and benchmarks: PostgreSQL, `prefect server start`, a worker.

Each is a context manager that starts a real process (no mock, no in-process
harness), waits until it answers, and stops it fully on exit, also when the
body raises:

    with postgres_cluster() as pg, prefect_server(pg.url) as server:
        prefect_cli(server, "work-pool", "create", "pool", "--type", "process")
        with prefect_worker(server, "pool", cwd=flows_dir):
            with server.settings():          # this process's Prefect client uses it
                run_deployment(...)

- `postgres_cluster`: a throwaway PostgreSQL cluster in a temporary directory,
  listening on 127.0.0.1 only, on a free port, trust authentication for
  localhost only; run as user `postgres` when this process is root (PostgreSQL
  refuses to run as root). Removed completely on exit.
- `prefect_server`: `prefect server start` on a free localhost port with its own
  PREFECT_HOME and a given database URL (SQLite in its home if none).
- `prefect_worker`: `prefect worker start --pool NAME` against such a server.

Processes are started in their own session, so stopping one stops its
children too (a worker's flow-run processes, a server's services). This module
does not import pytest: failures raise `ServerError` with the process's log.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
PREFECT = BIN / "prefect"
LOG_TAIL = 4000


class ServerError(RuntimeError):
    """A process did not start, did not answer in time, or a command failed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL:]
    except OSError:
        return "(no log)"


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process's group (it leads its own session), then SIGKILL what lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    # children of the group may outlive its leader (a flow-run process, a server service)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


# --- PostgreSQL --------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """Where `initdb`, `pg_ctl` and `postgres` are: on PATH, or Debian's /usr/lib/postgresql."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        bin_dir = Path(found).resolve().parent
        if (bin_dir / "postgres").exists():
            return bin_dir
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        bin_dir = Path(candidate)
        if all((bin_dir / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return bin_dir
    return None


@dataclass(frozen=True)
class PostgresCluster:
    """A running throwaway cluster and the database made for Prefect in it."""

    port: int
    database: str
    directory: Path

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Prefect takes as PREFECT_API_DATABASE_CONNECTION_URL."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{self.database}"


def _as_postgres(command: Sequence[str]) -> list[str]:
    """Run as user `postgres` when root (PostgreSQL refuses root), else as ourselves."""
    if os.geteuid() != 0:
        return list(command)
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *command]
    import shlex

    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)]


def _run(command: Sequence[str], cwd: Path, what: str, timeout: float = 120) -> None:
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise ServerError(
            f"{what} failed ({result.returncode}): {' '.join(command)}\n"
            f"{(result.stdout + result.stderr)[-LOG_TAIL:]}"
        )


@contextlib.contextmanager
def postgres_cluster(
    database: str = "prefect",
    settings: Mapping[str, str] | None = None,
    startup_attempts: int = 3,
) -> Iterator[PostgresCluster]:
    """A fresh PostgreSQL cluster on 127.0.0.1 and a free port; removed on exit.

    Authentication is `trust`, accepted only over the Unix socket in the
    cluster's own directory and from 127.0.0.1, and the server listens on
    127.0.0.1 only. `settings` are extra postgresql.conf entries (name ->
    value). Raises `ServerError` if the binaries are missing or it cannot start.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise ServerError("PostgreSQL binaries (initdb, pg_ctl, postgres) not found")
    account = None
    if os.geteuid() == 0:
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerError(
                "running as root: PostgreSQL must run as user 'postgres', and there is none"
                " (Debian's postgresql package creates it)"
            ) from None
    # the temporary directory's parents must be searchable by that user (/tmp is)
    root = Path(tempfile.mkdtemp(prefix="prefect-pg-"))
    data, sockets, log = root / "data", root / "sockets", root / "postgres.log"
    sockets.mkdir()
    if account is not None:
        for path in (root, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
    pg_ctl = str(bin_dir / "pg_ctl")
    try:
        _run(
            _as_postgres(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--auth=trust",
                    "--no-sync",
                ]
            ),
            root,
            "initdb",
        )
        (data / "pg_hba.conf").write_text(
            "# written by tests/servers.py: this machine only\n"
            "local all all trust\n"
            "host  all all 127.0.0.1/32 trust\n"
        )
        for attempt in range(1, startup_attempts + 1):
            port = free_port()
            conf = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(port),
                "unix_socket_directories": f"'{sockets}'",
                **(settings or {}),
            }
            # read after postgresql.conf, so these settings win
            with (data / "postgresql.auto.conf").open("w") as auto:
                auto.writelines(f"{k} = {v}\n" for k, v in conf.items())
            try:
                _run(
                    _as_postgres(
                        [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"]
                    ),
                    root,
                    "pg_ctl start",
                )
                break
            except ServerError as exc:
                _stop_cluster(pg_ctl, data)  # a start that timed out may still be running
                if attempt == startup_attempts:
                    raise ServerError(f"{exc}\npostgres.log:\n{_tail(log)}") from None
        _run(
            [
                str(bin_dir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                database,
            ],
            root,
            "createdb",
        )
        yield PostgresCluster(port=port, database=database, directory=root)
    finally:
        _stop_cluster(pg_ctl, data)
        shutil.rmtree(root, ignore_errors=True)


def _stop_cluster(pg_ctl: str, data: Path) -> None:
    """Stop the cluster if it runs or is starting (`-m immediate`: its data is thrown away)."""
    if not (data / "postmaster.pid").exists():
        return
    try:
        _run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
            data.parent,
            "pg_ctl stop",
            timeout=60,
        )
    except (ServerError, subprocess.TimeoutExpired):
        _kill_postmaster(data)


def _kill_postmaster(data: Path) -> None:
    """Last resort when pg_ctl cannot stop the cluster: SIGKILL the postmaster's pid."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)


# --- Prefect server ----------------------------------------------------------------------


@dataclass
class PrefectServer:
    """A running `prefect server start`: its URL, home, log and process."""

    base_url: str
    home: Path
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    database_url: str | None = None

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess (CLI, worker, script) that talks to this server."""
        return {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **extra,
        }

    @contextlib.contextmanager
    def settings(self) -> Iterator[None]:
        """Point this process's Prefect client at the server (Prefect's temporary_settings)."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            try:
                yield
            finally:
                # send the events this process emitted to the server while it still runs
                from prefect.events.worker import EventsWorker

                EventsWorker.instance().drain()

    def request(self, method: str, path: str, body: object = None) -> object:
        """One JSON call to the server's REST API (no Prefect client needed)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.api_url}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")


@contextlib.contextmanager
def prefect_server(
    database_url: str | None = None,
    *,
    home: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    startup_timeout: float = 120.0,
    args: Sequence[str] = (),
    public_url: str | None = None,
    port: int | None = None,
) -> Iterator[PrefectServer]:
    """`prefect server start` on 127.0.0.1 and a free port, stopped (with its group) on exit.

    `database_url` becomes PREFECT_API_DATABASE_CONNECTION_URL; without it the
    server keeps SQLite in its PREFECT_HOME (`home`, or a temporary directory
    removed on exit). `args` go to `prefect server start` (`--no-services`);
    `public_url` is the address clients and the UI use when it is not the
    server's own (a load balancer's). Returns once /api/health answers 200.
    """
    owned_home = home is None
    home = Path(tempfile.mkdtemp(prefix="prefect-home-")) if home is None else home
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    public = public_url or base
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"{public}/api",
        # the UI's JavaScript calls this URL; by default it is the one of port 4200
        "PREFECT_UI_API_URL": f"{public}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        **(extra_env or {}),
    }
    # explicit either way, so a URL in this process's environment cannot leak in
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = (
        database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    )
    log = home / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port), *args],
            env=env,
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = PrefectServer(base, home, log, process, database_url)
    try:
        _wait_healthy(server, startup_timeout)
        yield server
    finally:
        stop_process_group(process)
        if owned_home:
            shutil.rmtree(home, ignore_errors=True)


def _wait_healthy(server: PrefectServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise ServerError(
                f"prefect server exited with {server.process.returncode}:\n{_tail(server.log)}"
            )
        try:
            with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ServerError(
                f"prefect server did not answer {server.api_url}/health within {timeout:.0f}s:\n"
                + _tail(server.log)
            )
        time.sleep(0.3)


def prefect_cli(
    server: PrefectServer,
    *args: str,
    cwd: Path | None = None,
    executable: Path = PREFECT,
    timeout: float = 180.0,
) -> str:
    """Run `prefect ARGS` (or another console script) against the server; its output.

    Raises `ServerError` with the output when the command fails.
    """
    result = subprocess.run(
        [str(executable), *args],
        cwd=cwd,
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise ServerError(
            f"{executable.name} {' '.join(args)} exited with {result.returncode}:\n"
            f"{output[-LOG_TAIL:]}"
        )
    return output


# --- worker ------------------------------------------------------------------------------


@dataclass
class PrefectWorker:
    """A running `prefect worker start`: its name, log and process."""

    name: str
    pool: str
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)


@contextlib.contextmanager
def prefect_worker(
    server: PrefectServer,
    pool: str,
    *,
    cwd: Path | None = None,
    name: str | None = None,
    query_seconds: float = 1.0,
    extra_env: Mapping[str, str] | None = None,
    startup_timeout: float = 60.0,
) -> Iterator[PrefectWorker]:
    """`prefect worker start --pool POOL`, ready once the server lists it; stopped on exit.

    The worker polls every `query_seconds` (Prefect's default is 10 s). Its
    flow-run processes are in its process group and stop with it.
    """
    name = name or f"worker-{free_port()}"
    log = server.home / f"{name}.log"
    env = server.env(PREFECT_WORKER_QUERY_SECONDS=str(query_seconds), **(extra_env or {}))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(PREFECT), "worker", "start", "--pool", pool, "--name", name],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = PrefectWorker(name, pool, log, process)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise ServerError(f"worker exited with {process.returncode}:\n{_tail(log)}")
            workers = server.request("POST", f"/work_pools/{pool}/workers/filter", {})
            if any(w.get("name") == name for w in workers or []):  # type: ignore[union-attr]
                break
            if time.monotonic() > deadline:
                raise ServerError(f"worker {name} did not register in {startup_timeout:.0f}s")
            time.sleep(0.3)
        yield worker
    finally:
        stop_process_group(process)


class _QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib's name)
        """Requests are not logged: a test's output stays its own."""


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    """Run an in-process server (an `http.server` one) on a thread; stop and close it on exit."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def file_server(directory: Path) -> Iterator[str]:
    """A static HTTP server on 127.0.0.1 for the files of `directory`; yields its base URL.

    Stands in for wherever a team serves a file its users' browsers load (the
    block type's logo), so a test fetches it over real HTTP rather than through
    a patched opener.
    """
    handler = functools.partial(_QuietFileHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}"
