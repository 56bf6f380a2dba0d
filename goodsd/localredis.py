"""A private, throw-away redis-server for the demo, the tests and the benchmarks.

Each instance owns a short temp dir holding the unix socket, the log and nothing else: TCP is
off unless asked for, persistence is off, and eviction is off (goodsd must never lose items to
`maxmemory`). Nothing is shared with a system Redis, so a test or a demo cannot touch real data.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from goodsd.clusterslot import queue_slot

# Linux limits sun_path to 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

# How many log lines a start failure shows: enough for redis's own error, not a wall of text.
LOG_TAIL_LINES = 20


class RedisServerMissing(RuntimeError):
    """redis-server is not on PATH; the message tells the user how to install it."""

    def __str__(self) -> str:
        return (
            "redis-server was not found on PATH; install it "
            "(Debian/Ubuntu: apt-get install redis-server) or add its directory to PATH"
        )


def find_redis_server() -> str:
    """Return the path of redis-server, so a missing binary fails early with a clear hint."""
    path = shutil.which("redis-server")
    if path is None:
        raise RedisServerMissing()
    return path


class LocalRedis:
    """A redis-server child process in its own temp dir, used as a context manager.

    `stop()` then `start()` brings a fresh, empty server back on the same socket path, so tests
    can take Redis away for a while and check that goodsd reconnects.
    """

    def __init__(
        self,
        directory: str | None = None,
        *,
        tcp_port: int = 0,
        log_name: str = "redis.log",
        settings: tuple[str, ...] = (),
    ) -> None:
        # mkdtemp in /tmp, not $TMPDIR: a long TMPDIR would push the socket path over the limit.
        self._owns_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="goodsd-redis-", dir="/tmp")
        self.socket_path = os.path.join(self.directory, "redis.sock")
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"unix socket path {self.socket_path!r} is longer than {MAX_SOCKET_PATH} bytes;"
                " use a shorter directory"
            )
        self.log_path = os.path.join(self.directory, log_name)
        self.tcp_port = tcp_port
        self.settings = settings  # more redis-server arguments, e.g. ("--appendonly", "yes")
        if tcp_port:
            self.url = f"redis://127.0.0.1:{tcp_port}"
        else:
            self.url = f"unix://{self.socket_path}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalRedis:
        try:
            self.start()
        except BaseException:
            self._remove_directory()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self._remove_directory()

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, for tests that want to kill it the hard way."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def start(self, timeout: float = 10.0) -> None:
        """Spawn redis-server and return once it answers PING, or raise with its log tail."""
        if self.pid is not None:
            raise RuntimeError(f"redis-server is already running (pid {self.pid})")
        argv = [
            find_redis_server(),
            "--port", str(self.tcp_port),
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.directory,
            "--logfile", self.log_path,
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.tcp_port:
            argv += ["--bind", "127.0.0.1"]
        argv += self.settings
        # stdout/stderr go to the log as well: errors before redis opens its logfile land there.
        with open(self.log_path, "ab") as log:
            # Own session: a ^C in the terminal must not kill Redis under a running daemon.
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self._kill()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down without saving; escalate to SIGTERM, then SIGKILL. Idempotent."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                with self._ping_client(timeout) as conn:
                    conn.shutdown(nosave=True)
            except redis.RedisError:
                pass  # Already gone or not answering; the signals below handle it.
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._process = None

    def client(self, **kwargs: object) -> redis.Redis:
        """A new client for this server; keyword arguments go to `redis.Redis.from_url`."""
        return redis.Redis.from_url(self.url, **kwargs)

    def _ping_client(self, timeout: float) -> redis.Redis:
        """A client whose every call gives up after `timeout`, so start/stop stay bounded."""
        return self.client(socket_timeout=timeout, socket_connect_timeout=timeout)

    def _wait_until_ready(self, timeout: float) -> None:
        """Poll PING until it answers; a dead or silent server raises with its log tail."""
        assert self._process is not None
        deadline = time.monotonic() + timeout
        delay = 0.002
        with self._ping_client(min(timeout, 1.0)) as conn:
            while True:
                try:
                    if conn.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                code = self._process.poll()
                if code is not None:
                    raise RuntimeError(
                        f"redis-server exited with status {code} while starting;"
                        f" {self.log_path}:\n{self._log_tail()}"
                    )
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"redis-server did not answer PING within {timeout:g}s;"
                        f" {self.log_path}:\n{self._log_tail()}"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _kill(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; always reaps, so no zombie is left behind."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def _log_tail(self) -> str:
        try:
            lines = Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(log is empty)"

    def _remove_directory(self) -> None:
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


# The slots of a Redis Cluster.
CLUSTER_SLOTS = 16384


def free_tcp_port(*, bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that is free now; with ``bus``, its cluster bus port (10000
    more) is free too. Another process may take it before it is used: callers retry."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class _Group:
    """Several servers started together: ``with`` starts them all, and a start that fails
    half way stops what it started. Each subclass has its own ``start`` and ``__exit__``."""

    def __enter__(self) -> Self:
        try:
            self.start()  # type: ignore[attr-defined]
        except BaseException:
            self.__exit__(None, None, None)  # type: ignore[attr-defined]
            raise
        return self


class LocalCluster(_Group):
    """A Redis Cluster of private redis-servers on 127.0.0.1 in one temp dir, the slots split
    evenly among ``primaries`` nodes, each with ``replicas`` replicas of its own; used as a
    context manager. ``nodes`` holds the primaries first, then the replicas (those of the first
    primary, then of the second...), as they started: a failover changes who is what, which
    ``serving`` and ``replicas_of`` ask the cluster.

    Without replicas, a node is taken for failed after 2 s (``cluster-node-timeout``). With
    them, replication starts at once (diskless, no delay) and a node is taken for failed after
    1 s, so a replica takes over from a dead primary within a few seconds."""

    def __init__(
        self, primaries: int = 3, *, replicas: int = 0, settings: tuple[str, ...] = ()
    ) -> None:
        self.size = primaries
        self.replicas = replicas  # of each primary
        self.settings = settings  # more redis-server arguments for every node
        self.directory = tempfile.mkdtemp(prefix="goodsd-cluster-", dir="/tmp")
        self.nodes: list[LocalRedis] = []

    @property
    def url(self) -> str:
        """A redis+cluster:// URL naming every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.tcp_port}" for n in self.nodes)

    @property
    def running(self) -> list[LocalRedis]:
        """The nodes whose process runs (a test may have killed some)."""
        return [node for node in self.nodes if node.pid is not None]

    def __exit__(self, *exc_info: object) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def start(self, timeout: float = 20.0) -> None:
        """Start the nodes, give each primary its share of the slots, introduce them all to
        each other, make the replicas follow their primaries, and return once every node sees
        every slot served (``cluster_state:ok``) and every replica is in sync."""
        for number in range(self.size * (1 + self.replicas)):
            self.nodes.append(self._start_node(number))
        primaries = self.nodes[: self.size]
        share = CLUSTER_SLOTS // self.size
        for number, node in enumerate(primaries):
            last = CLUSTER_SLOTS - 1 if number == self.size - 1 else (number + 1) * share - 1
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", number * share, last)
        with self.nodes[0].client() as first:
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.tcp_port)
        if self.replicas:
            # CLUSTER REPLICATE needs the primary's id known to the replica, by gossip
            self._wait(timeout, "every node to know every other", self._all_known)
            for number, replica in enumerate(self.nodes[self.size :]):
                primary_id = self.node_id(primaries[number // self.replicas])
                with replica.client() as client:
                    client.execute_command("CLUSTER", "REPLICATE", primary_id)
        self.wait_until_settled(timeout)

    def _start_node(self, number: int) -> LocalRedis:
        directory = os.path.join(self.directory, str(number))
        os.mkdir(directory)
        if self.replicas:
            timeout = "1000"
            replication: tuple[str, ...] = (
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
            )  # fmt: skip
        else:
            timeout, replication = "2000", ()
        for _ in range(20):  # a port taken meanwhile by someone else: try another
            node = LocalRedis(
                directory,
                tcp_port=free_tcp_port(bus=True),
                settings=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", timeout,
                    *replication,
                    *self.settings,
                ),
            )  # fmt: skip
            try:
                node.start()
            except RuntimeError:
                continue
            return node
        raise RuntimeError(f"no free ports for cluster node {number}")

    def kill(self, node: LocalRedis, timeout: float = 5.0) -> None:
        """``node`` dies at once (SIGKILL), as in a crash; return once it is gone, so that
        ``running`` leaves it out."""
        assert node.pid is not None, "the node is not running"
        os.kill(node.pid, signal.SIGKILL)
        self._wait(timeout, "the killed node to be gone", lambda: node.pid is None)

    def _all_known(self) -> bool:
        """Whether every node knows every other (met directly or by gossip)."""
        for node in self.nodes:
            with node.client() as client:
                info = client.execute_command("CLUSTER", "INFO").decode()
            if f"cluster_known_nodes:{len(self.nodes)}" not in info:
                return False
        return True

    def _wait(self, timeout: float, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() >= deadline:
                raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.05)

    def slots_seen(self) -> list[dict[int, int]]:
        """For each running node: slot range start -> port of the node serving it, as that
        node sees the cluster."""
        seen = []
        for node in self.running:
            with node.client() as client:
                ranges = client.execute_command("CLUSTER", "SLOTS")
            seen.append({int(r[0]): int(r[2][1]) for r in ranges})
        return seen

    def replication_seen(self) -> list[dict[int, int]]:
        """For each running node: replica port -> port of its primary, as that node sees the
        cluster (nodes it takes for failed left out)."""
        seen = []
        for node in self.running:
            with node.client() as client:
                text = client.execute_command("CLUSTER", "NODES").decode()
            ports, following = {}, {}
            for line in text.splitlines():
                node_id, address, flags, primary_id = line.split()[:4]
                ports[node_id] = _port_of(address)
                if "slave" in flags.split(",") and "fail" not in flags.split(","):
                    following[node_id] = primary_id
            seen.append({ports[r]: ports[p] for r, p in following.items() if p in ports})
        return seen

    def wait_until_settled(self, timeout: float = 20.0) -> None:
        """Return once every running node reports ``cluster_state:ok``, all agree on who
        serves which slots and on who replicates whom, and every running replica is in sync
        with its primary; raise RuntimeError otherwise."""
        self._wait(timeout, "the cluster to settle", self._settled)

    def _settled(self) -> bool:
        for node in self.running:
            with node.client() as client:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
                replication = client.info("replication")
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return False
        slots, replication = self.slots_seen(), self.replication_seen()
        return all(view == slots[0] for view in slots) and all(
            view == replication[0] for view in replication
        )

    def serving(self, queue: str) -> LocalRedis:
        """The node that serves ``queue``'s slot, as the first running node sees it."""
        slot = queue_slot(queue)
        with self.running[0].client() as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        port = next(int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1]))
        return self._node_at(port)

    def replicas_of(self, primary: LocalRedis) -> list[LocalRedis]:
        """The nodes that replicate ``primary``, as the cluster sees it now."""
        with primary.client() as client:
            lines = client.execute_command("CLUSTER", "REPLICAS", self.node_id(primary))
        return [self._node_at(_port_of(line.decode().split()[1])) for line in lines]

    def _node_at(self, port: int) -> LocalRedis:
        return next(node for node in self.nodes if node.tcp_port == port)

    def node_id(self, node: LocalRedis) -> str:
        with node.client() as client:
            return client.execute_command("CLUSTER", "MYID").decode()

    def flush(self) -> None:
        """Empty every running primary (its replicas follow)."""
        for node in self.running:
            with node.client() as client:
                if client.execute_command("ROLE")[0] == b"master":
                    client.flushall()


def _port_of(address: str) -> int:
    """The client port of a node's address as CLUSTER NODES gives it, "ip:port@busport"
    (Redis 7 may add ",hostname")."""
    return int(address.split("@")[0].rsplit(":", 1)[1])


class LocalSentinels(_Group):
    """A primary, its replicas and the sentinels that watch them, private redis-servers on
    127.0.0.1 in one temp dir; used as a context manager. ``url`` is goodsd's
    redis+sentinel:// URL for them. Replication starts at once (diskless, no delay) and the
    sentinels take a primary for down after a second, so a failover takes a few seconds."""

    def __init__(
        self,
        replicas: int = 2,
        sentinels: int = 3,
        *,
        service: str = "goods",
        settings: tuple[str, ...] = (),
        sentinel_password: str | None = None,
    ) -> None:
        self.service = service
        self.settings = settings  # more redis-server arguments for the primary and replicas
        self.sentinel_password = sentinel_password  # the sentinels' requirepass, if any
        self.directory = tempfile.mkdtemp(prefix="goodsd-sentinel-", dir="/tmp")
        self.replica_count = replicas
        self.sentinel_count = sentinels
        self.servers: list[LocalRedis] = []  # the first is the primary at start
        self.sentinel_ports: list[int] = []
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}"

    def __exit__(self, *exc_info: object) -> None:
        for process in self._sentinels:
            if process.poll() is None:
                process.kill()
            process.wait()
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def start(self, timeout: float = 20.0) -> None:
        """Start them all; return once every replica is in sync and every sentinel knows the
        primary, its replicas and the other sentinels."""
        replication = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
        primary = self._server("primary", (*replication, *self.settings))
        for number in range(self.replica_count):
            following = ("--replicaof", "127.0.0.1", str(primary.tcp_port))
            self._server(f"replica{number}", (*replication, *self.settings, *following))
        for number in range(self.sentinel_count):
            self._start_sentinel(number, primary.tcp_port)
        deadline = time.monotonic() + timeout
        while not self._settled():
            if time.monotonic() >= deadline:
                raise RuntimeError(f"sentinels not settled within {timeout:g}s")
            time.sleep(0.05)

    def _server(self, name: str, settings: tuple[str, ...]) -> LocalRedis:
        directory = os.path.join(self.directory, name)
        os.mkdir(directory)
        for _ in range(20):  # a port taken meanwhile by someone else: try another
            server = LocalRedis(directory, tcp_port=free_tcp_port(), settings=settings)
            try:
                server.start()
            except RuntimeError:
                continue
            self.servers.append(server)
            return server
        raise RuntimeError(f"no free port for {name}")

    def _start_sentinel(self, number: int, primary_port: int) -> None:
        directory = os.path.join(self.directory, f"sentinel{number}")
        os.mkdir(directory)
        port = free_tcp_port()
        conf = os.path.join(directory, "sentinel.conf")
        with open(conf, "w") as out:
            out.write(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"logfile {os.path.join(directory, 'sentinel.log')}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {primary_port} 2\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 5000\n"
            )
            if self.sentinel_password:
                out.write(f"requirepass {self.sentinel_password}\n")
        process = subprocess.Popen(
            [find_redis_server(), conf, "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._sentinels.append(process)
        self.sentinel_ports.append(port)

    def sentinel(self, number: int = 0) -> redis.Redis:
        """A client of one sentinel."""
        return redis.Redis(
            port=self.sentinel_ports[number], password=self.sentinel_password, socket_timeout=2.0
        )

    def _settled(self) -> bool:
        for number in range(self.sentinel_count):
            try:
                with self.sentinel(number) as client:
                    state = client.sentinel_master(self.service)
            except redis.RedisError:
                return False
            if state["num-slaves"] < self.replica_count:
                return False
            if state["num-other-sentinels"] < self.sentinel_count - 1:
                return False
        with self.primary().client() as client:
            info = client.info("replication")
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return len(online) == self.replica_count and all(r.get("state") == "online" for r in online)

    def primary(self) -> LocalRedis:
        """The server the sentinels name primary now."""
        with self.sentinel() as client:
            _, port = client.sentinel_get_master_addr_by_name(self.service)
        return next(s for s in self.servers if s.tcp_port == int(port))
