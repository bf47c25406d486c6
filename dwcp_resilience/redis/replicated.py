"""Throwaway replicated Redis deployments on loopback, for tests, benchmarks and examples.

- :class:`RedisClusterServer`: a Redis Cluster of :class:`~dwcp_resilience.redis.server.RedisServer`
  nodes (``cluster-enabled yes``), joined by ``redis-cli --cluster create`` (Debian's
  ``redis-tools``, which ``redis-server`` depends on), with a short ``cluster-node-timeout`` so
  that a killed primary fails over to its replica in about a second; it can move a slot by hand
  (``CLUSTER SETSLOT`` + ``MIGRATE``), a step at a time.
- :class:`RedisSentinelServer`: a primary, its replicas and one Sentinel (``redis-server
  --sentinel``) that fails the primary over to a replica when it is killed.

Both talk to their servers with the synchronous ``redis`` client (the ``redis`` extra).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any, Self

import redis
from redis.exceptions import RedisError

from .server import RedisServer, free_port

__all__ = ("RedisClusterServer", "RedisSentinelServer")

REDIS_CLI = shutil.which("redis-cli")


def _client(port: int) -> Any:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0, decode_responses=True)


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class _Deployment:
    """``with deployment:`` starts it (closing whatever a failed start left running) and closes it."""

    def start(self, timeout: float = 30.0) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedisClusterServer(_Deployment):
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each, on loopback.

    Args:
        primaries: how many primaries (the slots are split evenly); at least 3, as
            ``redis-cli --cluster create`` requires.
        replicas: replicas per primary.
        node_timeout: ``cluster-node-timeout`` in ms: how long a primary may be unreachable before
            its replica takes over (about twice that in all, on this machine).

    :meth:`start` starts every node, joins them with ``redis-cli --cluster create`` and waits until
    every node says ``cluster_state:ok`` and every replica is in sync. :meth:`kill` SIGKILLs a
    node; :meth:`revive` starts it again (it rejoins, as a replica if it was failed over), and
    :meth:`wait_healthy` waits for the cluster to settle. :meth:`migrate_slot` moves one slot to
    another primary by hand, calling back between the steps.
    """

    def __init__(self, primaries: int = 3, replicas: int = 1, *, node_timeout: int = 1000) -> None:
        if REDIS_CLI is None:
            raise RuntimeError("redis-cli is not installed (Debian package redis-tools)")
        if primaries < 3 or replicas < 0 or node_timeout < 1:
            raise ValueError("a cluster needs primaries >= 3, replicas >= 0, node_timeout >= 1")
        self.replicas = replicas
        options = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout),
        )  # fmt: skip
        self.nodes = [
            RedisServer(free_port(cluster_bus=True), args=options)
            for _ in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>`` of the first node still running (a startup node)."""
        return f"redis://127.0.0.1:{self._any().port}"

    def _any(self) -> RedisServer:
        for node in self.nodes:
            if node.running:
                return node
        raise RuntimeError("no cluster node is running")

    def start(self, timeout: float = 30.0) -> None:
        """Start the nodes, create the cluster, and wait until it is healthy."""
        for node in self.nodes:
            node.start()
        command = [
            str(REDIS_CLI), "--cluster", "create",
            *(f"127.0.0.1:{node.port}" for node in self.nodes),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]!r}")
        self.wait_healthy(timeout)

    def _slots(self, port: int) -> list[tuple[int, int, int]]:
        """``(first slot, last slot, primary's port)`` as the node on ``port`` sees them."""
        with _client(port) as client:
            return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in client.cluster("slots"))

    def _healthy(self) -> bool:
        views = set()
        try:
            for node in self.nodes:
                if not node.running:
                    continue
                with _client(node.port) as client:
                    if client.cluster("info").get("cluster_state") != "ok":
                        return False
                    info = client.info("replication")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
                views.add(tuple(self._slots(node.port)))
        except (OSError, RedisError):
            return False
        if len(views) != 1:
            return False
        primaries = {port for _, _, port in views.pop()}
        return len(primaries) == len(self.nodes) // (1 + self.replicas)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running node says ``cluster_state:ok``, every replica is in sync
        with its primary, and every node sees the same slot owners."""
        _wait(self._healthy, timeout, "a healthy cluster")

    def keyslot(self, key: str) -> int:
        """The hash slot of ``key``."""
        with _client(self._any().port) as client:
            slot: int = client.cluster("keyslot", key)
            return slot

    def primary_of(self, slot: int) -> RedisServer:
        """The node that serves ``slot`` now."""
        for first, last, port in self._slots(self._any().port):
            if first <= slot <= last:
                return self.node(port)
        raise RuntimeError(f"slot {slot} is not covered")

    def node(self, port: int) -> RedisServer:
        """The node on ``port``."""
        return next(node for node in self.nodes if node.port == port)

    def primaries(self) -> list[RedisServer]:
        """The nodes that serve slots now."""
        ports = {port for _, _, port in self._slots(self._any().port)}
        return [node for node in self.nodes if node.port in ports]

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """A replica of ``primary`` (the cluster must have replicas)."""
        with _client(primary.port) as client:
            for entry in client.info("replication").values():
                if isinstance(entry, dict) and "port" in entry:
                    return self.node(int(entry["port"]))
        raise RuntimeError(f"node {primary.port} has no replica")

    def kill(self, node: RedisServer) -> None:
        """SIGKILL ``node``."""
        node.stop()

    def wait_failover(self, slot: int, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until a node other than ``old`` serves ``slot`` (a replica took over); return it."""

        def moved() -> bool:
            try:
                return self.primary_of(slot) is not old
            except (OSError, RedisError, RuntimeError):  # no running node, or the slot uncovered
                return False

        _wait(moved, timeout, f"slot {slot} to fail over from node {old.port}")
        return self.primary_of(slot)

    def revive(self, node: RedisServer) -> None:
        """Start ``node`` again with its ``nodes.conf``: it rejoins the cluster."""
        node.start()

    def migrate_slot(
        self, slot: int, target: RedisServer, between: Callable[[str], None] = lambda step: None
    ) -> None:
        """Move ``slot`` to ``target`` by hand, as ``redis-cli --cluster reshard`` does.

        The steps: ``CLUSTER SETSLOT IMPORTING`` on the target and ``MIGRATING`` on the source
        (``between("migrating")`` is called then: keys still on the source are served there, the
        others by ``ASK`` to the target), ``MIGRATE`` of every key of the slot
        (``between("migrated")``: every command of the slot is answered by ``ASK``), and
        ``CLUSTER SETSLOT NODE`` on every primary (the slot is the target's: ``MOVED``).
        """
        source = self.primary_of(slot)
        if source is target:
            raise ValueError(f"slot {slot} is already on node {target.port}")
        with _client(source.port) as src, _client(target.port) as dst:
            source_id, target_id = src.cluster("myid"), dst.cluster("myid")
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            between("migrating")
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            between("migrated")
            for node in (target, source, *self.primaries()):
                with _client(node.port) as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def close(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.close()


class RedisSentinelServer(_Deployment):
    """A primary, ``replicas`` replicas of it, and one Sentinel watching them as ``service``.

    Args:
        service: the name Sentinel knows the primary by (``master_for(service)``).
        replicas: how many replicas (at least 1, or there is nothing to fail over to).
        down_after: ``down-after-milliseconds``: how long the primary may be silent before the
            Sentinel fails it over (it then takes about a second more on this machine).

    :meth:`start` waits until the Sentinel knows every replica and each is in sync; :meth:`kill`
    SIGKILLs a server; :meth:`wait_failover` waits until the Sentinel names another primary.
    """

    def __init__(self, service: str = "fleet", replicas: int = 1, *, down_after: int = 500) -> None:
        if replicas < 1 or down_after < 1:
            raise ValueError("a Sentinel group needs replicas >= 1 and down_after >= 1")
        self.service = service
        self.primary = RedisServer()
        self.replicas = [
            RedisServer(args=("--replicaof", "127.0.0.1", str(self.primary.port)))
            for _ in range(replicas)
        ]
        config = (
            f"sentinel monitor {service} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {service} {down_after}\n"
            f"sentinel failover-timeout {service} {max(1000, 4 * down_after)}\n"
        )
        self.sentinel = RedisServer(config=config, args=("--sentinel",))

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The Sentinel's address, as ``redis.asyncio.sentinel.Sentinel`` takes it."""
        return [("127.0.0.1", self.sentinel.port)]

    def _servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    def primary_port(self) -> int:
        """The port of the primary the Sentinel names now."""
        with _client(self.sentinel.port) as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            return int(port)

    def _ready(self) -> bool:
        try:
            with _client(self.sentinel.port) as client:
                known = client.execute_command("SENTINEL", "REPLICAS", self.service)
            with _client(self.primary_port()) as client:
                synced = [
                    entry
                    for entry in client.info("replication").values()
                    if isinstance(entry, dict) and entry.get("state") == "online"
                ]
        except (OSError, RedisError):
            return False
        return len(known) >= len(self.replicas) and len(synced) >= len(self.replicas)

    def start(self, timeout: float = 30.0) -> None:
        """Start the servers and the Sentinel; wait until it knows every replica, in sync."""
        for server in (*self._servers(), self.sentinel):
            server.start()
        _wait(self._ready, timeout, f"Sentinel to see {len(self.replicas)} replica(s) in sync")

    def server(self, port: int) -> RedisServer:
        """The server on ``port``."""
        return next(server for server in self._servers() if server.port == port)

    def kill(self, server: RedisServer) -> None:
        """SIGKILL ``server``."""
        server.stop()

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until the Sentinel names a primary other than ``old_port``; return its port."""
        _wait(lambda: self.primary_port() != old_port, timeout, "the Sentinel's failover")
        return self.primary_port()

    def close(self) -> None:
        """Stop every server and remove their directories."""
        for server in (self.sentinel, *self._servers()):
            server.close()
