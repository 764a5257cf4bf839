"""Prefect's production topology on one machine: PostgreSQL, Redis, API servers behind haproxy.

What Prefect documents for teams that outgrow one server process (its guide
"How to scale self-hosted Prefect"), started from Debian's packages and this
virtualenv on 127.0.0.1 with throwaway data:

- a PostgreSQL cluster (`tests/servers.py`), migrated once before any server starts;
- `redis-server`, in memory only, for messaging, event ordering, lease storage
  and the docket of the background services (the `prefect-redis` integration);
- N `prefect server start --no-services` API processes;
- one `prefect server services start` process with every background service;
- haproxy in front of the API processes, one address for clients, workers and the UI;
- optionally worker processes on a process work pool.

    with topology(api_servers=2) as top:     # top.server is the balancer's address
        with prefect_worker(top.server, "pool"), top.server.settings():
            ...

A person can start it and use it too (stopped with Ctrl-C):

    .venv/bin/python -m tests.topology --workers 2

Everything started here is stopped on the way out, also when a start fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import (
    PREFECT,
    PostgresCluster,
    PrefectServer,
    PrefectWorker,
    ServerError,
    _as_postgres,
    _run,
    _tail,
    free_port,
    postgres_bin_dir,
    postgres_cluster,
    prefect_cli,
    prefect_server,
    prefect_worker,
    stop_process_group,
)

SBIN_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin"  # haproxy is in /usr/sbin on Debian
# How Prefect's server says it lost messages: its in-memory broker when a consumer's
# queue is full (one line each); its event services when a write to the database gave
# up ("Max flush retries (5) reached, dropping 24 events", "(1 to retry, 2 dropped)")
_DROPPED = re.compile(
    r"dropping message|dropping (?P<events>\d+) events|to retry, (?P<flushed>\d+) dropped\)"
)
# prefect-redis could not read a stream (after a Redis restart its consumer groups are
# gone): what the stream held then is lost, but the server logs no count
LOST_STREAM = "Failed to read from stream"
EVENT_BATCH = 100  # messages the event services read and write at once
DB_POOL = 20  # connections per server process, and as many again in overflow


def count_dropped(log: str) -> int:
    """Messages a Prefect server's log says it dropped: each count it gives, summed."""
    return sum(int(m["events"] or m["flushed"] or 1) for m in _DROPPED.finditer(log))


# --- Redis ---------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A `redis-server` on 127.0.0.1, in memory only; can be restarted on the same port."""

    port: int
    directory: Path
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerError("redis-server not found (apt-get install redis-server; .ci/run does)")
        command = [binary, "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"redis-server did not start:\n{_tail(self.log)}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port: what was in memory is gone."""
        self.stop()
        self.start()

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="prefect-redis-"))
    redis = RedisServer(free_port(), directory, directory / "redis.log")
    try:
        redis.start()
        yield redis
    finally:
        redis.stop()
        shutil.rmtree(directory, ignore_errors=True)


# --- haproxy -------------------------------------------------------------------------------


def haproxy_config(port: int, backends: list[str]) -> str:
    """Round robin over the API servers, each checked on /api/health every second.

    `timeout tunnel` keeps the websockets that clients open to send events.
    """
    servers = "\n".join(
        f"    server api{i} {address} check inter 1s fall 2 rise 1"
        for i, address in enumerate(backends, 1)
    )
    return f"""# written by tests/topology.py
global
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout tunnel 1h
    retries 3
    option redispatch

frontend prefect
    bind 127.0.0.1:{port}
    default_backend api

backend api
    balance roundrobin
    option httpchk GET /api/health
{servers}
"""


@contextlib.contextmanager
def load_balancer(backends: list[str], directory: Path) -> Iterator[tuple[str, Path]]:
    """haproxy in the foreground on a free port; its base URL and log."""
    binary = shutil.which("haproxy", path=SBIN_PATH)
    if binary is None:
        raise ServerError("haproxy not found (apt-get install haproxy; .ci/run does)")
    port = free_port()
    config, log = directory / "haproxy.cfg", directory / "haproxy.log"
    config.write_text(haproxy_config(port, backends))
    _run([binary, "-c", "-f", str(config)], directory, "haproxy -c")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_port(port, process, log)
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop_process_group(process)


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise ServerError(f"{log.stem} did not listen on {port}:\n{_tail(log)}")
        time.sleep(0.1)


# --- the whole topology ----------------------------------------------------------------------


def server_env(database_url: str, redis: RedisServer) -> dict[str, str]:
    """The settings Prefect documents for several servers on PostgreSQL and Redis."""
    return {
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1",
        "PREFECT_REDIS_MESSAGING_PORT": str(redis.port),
        "PREFECT_REDIS_MESSAGING_DB": "0",
        "PREFECT_SERVER_DOCKET_URL": redis.url(1),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # each server process's database pool (Prefect's default is 5 + 10 overflow: at 200
        # runs at once requests waited 30 s for a connection and got a 500)
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": str(DB_POOL),
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": str(DB_POOL),
        # the event consumers read (and the recorder writes) one message at a time by
        # default: at 200 runs at once the task-run recorder then falls minutes behind
        **{
            f"PREFECT_SERVER_SERVICES_{service}_{setting}": str(EVENT_BATCH)
            for service, setting in [
                ("TASK_RUN_RECORDER", "READ_BATCH_SIZE"),
                ("TASK_RUN_RECORDER", "BATCH_SIZE"),
                ("EVENT_PERSISTER", "READ_BATCH_SIZE"),
                ("EVENT_PERSISTER", "BATCH_SIZE"),
                ("TRIGGERS", "READ_BATCH_SIZE"),
            ]
        },
    }


@dataclass
class Topology:
    """The running topology. `server` is the balancer's address, as clients see it."""

    server: PrefectServer
    postgres: PostgresCluster
    redis: RedisServer
    api_servers: list[PrefectServer]
    services: subprocess.Popen[bytes] = field(repr=False)
    services_log: Path
    balancer_log: Path
    workers: list[PrefectWorker] = field(default_factory=list)

    def logs(self) -> list[Path]:
        """Every server-side log: API servers, services, balancer, Redis."""
        return [
            *(s.log for s in self.api_servers),
            self.services_log,
            self.balancer_log,
            self.redis.log,
        ]

    def dropped_messages(self) -> int:
        """Messages the server-side logs say were dropped (each count they give, summed)."""
        return sum(count_dropped(text) for text in self._log_texts())

    def lost_streams(self) -> int:
        """Times a consumer found its Redis stream gone (messages lost, uncounted)."""
        return sum(text.count(LOST_STREAM) for text in self._log_texts())

    def _log_texts(self) -> Iterator[str]:
        for log in self.logs():
            with contextlib.suppress(OSError):
                yield log.read_text(errors="replace")

    def kill_api_server(self, index: int) -> None:
        """SIGKILL one API server (and its group): the balancer takes it out of rotation."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.api_servers[index].process.pid, signal.SIGKILL)
        self.api_servers[index].process.wait(timeout=10)

    def restart_postgres(self) -> None:
        """Restart the PostgreSQL cluster (fast shutdown: open connections are cut)."""
        bin_dir = postgres_bin_dir()
        data = self.postgres.directory / "data"
        log = self.postgres.directory / "postgres.log"
        _run(
            _as_postgres(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-m",
                    "fast",
                    "-w",
                    "restart",
                ]
            ),
            self.postgres.directory,
            "pg_ctl restart",
        )


@contextlib.contextmanager
def topology(
    api_servers: int = 2,
    *,
    home: Path | None = None,
    pool: str | None = None,
    workers: int = 0,
    worker_cwd: Path | None = None,
    worker_env: Mapping[str, str] | None = None,
) -> Iterator[Topology]:
    """Start the whole topology (and `workers` workers on `pool`), stop it all on exit."""
    owned_home = home is None
    home = Path(tempfile.mkdtemp(prefix="prefect-topology-")) if home is None else home
    home.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            # every server process may hold 2 * DB_POOL connections (Prefect's own default
            # of 100 would run out at three)
            pg = stack.enter_context(postgres_cluster(settings={"max_connections": "200"}))
            redis = stack.enter_context(redis_server())
            env = server_env(pg.url, redis)
            _migrate(home, env)
            ports = [free_port() for _ in range(api_servers)]
            lb_url, lb_log = stack.enter_context(
                load_balancer([f"127.0.0.1:{p}" for p in ports], home)
            )
            apis = [
                stack.enter_context(
                    prefect_server(
                        pg.url,
                        home=home / f"api{i}",
                        extra_env=env,
                        args=["--no-services"],
                        public_url=lb_url,
                        port=port,
                    )
                )
                for i, port in enumerate(ports, 1)
            ]
            services, services_log = _start_services(home, env, lb_url)
            stack.callback(stop_process_group, services)
            front = PrefectServer(lb_url, home, lb_log, apis[0].process, pg.url)
            top = Topology(front, pg, redis, apis, services, services_log, lb_log)
            if workers:
                if pool is None:
                    raise ValueError("workers need a pool")
                _ensure_pool(front, pool)
                top.workers = [
                    stack.enter_context(
                        prefect_worker(
                            front,
                            pool,
                            cwd=worker_cwd,
                            name=f"{pool}-worker-{i}",
                            extra_env=worker_env,
                        )
                    )
                    for i in range(1, workers + 1)
                ]
            yield top
    finally:
        if owned_home:
            shutil.rmtree(home, ignore_errors=True)


def _migrate(home: Path, env: Mapping[str, str]) -> None:
    """Prefect's schema, once, before any server starts (they start with migrations off)."""
    result = subprocess.run(
        [str(PREFECT), "server", "database", "upgrade", "-y"],
        cwd=home,
        env={**os.environ, "PREFECT_HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise ServerError(
            f"prefect server database upgrade failed:\n{result.stdout}{result.stderr}"
        )


def _start_services(
    home: Path, env: Mapping[str, str], api_url: str
) -> tuple[subprocess.Popen[bytes], Path]:
    log = home / "services.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(PREFECT), "server", "services", "start"],
            cwd=home,
            env={
                **os.environ,
                "PREFECT_HOME": str(home / "services"),
                "PREFECT_API_URL": f"{api_url}/api",
                **env,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while "Starting services" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process_group(process)
            raise ServerError(f"prefect server services did not start:\n{_tail(log)}")
        time.sleep(0.2)
    return process, log


def _ensure_pool(server: PrefectServer, pool: str) -> None:
    existing = server.request("POST", "/work_pools/filter", {})
    if not any(p.get("name") == pool for p in existing or []):  # type: ignore[union-attr]
        prefect_cli(server, "work-pool", "create", pool, "--type", "process")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-servers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", default="process-pool")
    args = parser.parse_args()
    with topology(
        args.api_servers,
        pool=args.pool,
        workers=args.workers,
        worker_cwd=Path(__file__).resolve().parent.parent / "flows",
    ) as top:
        print(f"Prefect API: {top.server.api_url} (UI: {top.server.base_url})")
        print(f"API servers: {', '.join(s.base_url for s in top.api_servers)}")
        print(f"PostgreSQL: {top.postgres.url}; Redis: {top.redis.url()}")
        print(f"workers on pool {args.pool!r}: {', '.join(w.name for w in top.workers) or 'none'}")
        print(f"logs in {top.server.home}; Ctrl-C stops everything")
        print(f"export PREFECT_API_URL={top.server.api_url}")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
