"""A throwaway ``redis-server`` on a free loopback port, for tests and benchmarks.

:class:`RedisServer` runs the ``redis-server`` binary (Debian's package ``redis-server``) with no
persistence, bound to 127.0.0.1 only. ``stop()`` kills it (as an outage would) and ``start()`` brings
it back on the same port, which is how the fallback tests take Redis away mid-run.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ("RedisServer", "free_port")

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:``port`` (a free one by default).

    Use it as a context manager (start, then stop and remove its directory), or call :meth:`start`,
    :meth:`stop` (SIGKILL), :meth:`restart` and :meth:`close` yourself.
    """

    def __init__(self, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (scripts/install-sysdeps.sh does it)")
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="dwcp-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (if it is not running) and wait until it answers PING."""
        if self.running:
            return
        args = [
            str(REDIS_SERVER),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--daemonize", "no",
            "--loglevel", "warning",
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
