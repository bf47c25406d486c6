"""A throwaway ``redis-server`` on a free loopback port, for tests, benchmarks and examples.

:class:`RedisServer` runs the ``redis-server`` binary (Debian's package ``redis-server``) with no
persistence, bound to 127.0.0.1 only. ``stop()`` kills it (as an outage would) and ``start()`` brings
it back on the same port, which is how the fallback tests take Redis away mid-run. A Redis Cluster
and a Sentinel-watched primary of such servers are in :mod:`dwcp_resilience.redis.replicated`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ("RedisServer", "free_port")

REDIS_SERVER = shutil.which("redis-server")


def free_port(*, cluster_bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    With ``cluster_bus``, one whose cluster bus port (``port + 10000``) was free too.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not cluster_bus:
            return port
        if port + 10000 <= 65535:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:``port`` (a free one by default).

    Args:
        port: the port (default: a free one).
        args: more command-line options, e.g. ``("--replicaof", "127.0.0.1", "6379")``.
        config: a configuration file's text, written to the server's directory and passed first
            (Sentinel needs one it can rewrite).

    Use it as a context manager (start, then stop and remove its directory), or call :meth:`start`,
    :meth:`stop` (SIGKILL), :meth:`restart` and :meth:`close` yourself. Its directory (and so a
    cluster node's ``nodes.conf``) survives :meth:`stop`, so a restarted node keeps its identity.
    """

    def __init__(
        self, port: int | None = None, *, args: Sequence[str] = (), config: str | None = None
    ) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (scripts/install-sysdeps.sh does it)")
        self.port = port or free_port()
        self._args = tuple(args)
        self._config = config
        self._dir = tempfile.TemporaryDirectory(prefix="dwcp-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def directory(self) -> Path:
        """The server's working directory (its log, and a cluster node's ``nodes.conf``)."""
        return Path(self._dir.name)

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (if it is not running) and wait until it answers PING."""
        if self.running:
            return
        args = [str(REDIS_SERVER)]
        if self._config is not None:
            config = Path(self._dir.name, "redis.conf")
            if not config.exists():  # Sentinel rewrites it: keep what it learnt on a restart
                config.write_text(self._config, encoding="utf-8")
            args.append(str(config))
        args += [
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--daemonize", "no",
            "--loglevel", "warning",
            # A replica's first sync starts at once (the default waits 5 s for more replicas).
            "--repl-diskless-sync-delay", "0",
            *self._args,
        ]  # fmt: skip
        log = Path(self._dir.name, "redis.log").open("ab")  # noqa: SIM115 - kept for the process
        self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._proc.returncode}: {self.log()}"
                )
            if self._answers():
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server at once (SIGKILL: an outage, not a clean shutdown)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        """Kill the server and start it again on the same port (its data is gone)."""
        self.stop()
        self.start()

    def log(self) -> str:
        """The end of the server's log file."""
        path = Path(self._dir.name, "redis.log")
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
