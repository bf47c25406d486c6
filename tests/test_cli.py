"""``python -m dwcp_resilience``: version, help, the peer command, and the client commands against
real peers on 127.0.0.1 (in process through ``main(argv)``, and as real subprocesses)."""

from __future__ import annotations

import argparse
import functools
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import anyio
import pytest
from helpers import real_time_backends

import dwcp_resilience
from dwcp_resilience.__main__ import (
    EXIT_EMPTY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    build_parser,
    main,
)
from dwcp_resilience.dwcp import DWCPPeer

pytestmark = pytest.mark.anyio

anyio_backend = real_time_backends("asyncio", "trio")


async def cli(*argv: str) -> int:
    """``main(argv)`` in a worker thread (it runs its own event loop), so the test's peer serves."""
    return await anyio.to_thread.run_sync(main, list(argv))


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- version and help ------------------------------------------------------------------------------


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    installed = metadata.version("dwcp-resilience")
    assert capsys.readouterr().out == f"dwcp-resilience {installed}\n"
    assert installed == dwcp_resilience.__version__


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_argument_of_every_command_has_help() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {"demo", "peer", "connect", "send", "recv", "discover", "ops"}
    for name, command in [("", parser), *commands.items()]:
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


def test_the_help_spells_out_dwcp_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "DWCP (Distributed WAN Communication Protocol)" in out
    assert "0 success; 1 the operation failed" in out
    with pytest.raises(SystemExit):
        main(["peer", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default 127.0.0.1" in out
    assert "exposes the peer to the network" in out


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["send", "--peer", "nowhere", "bob", "hi"], "expected HOST:PORT"),
        (["send", "--peer", "127.0.0.1:70000", "bob", "hi"], "expected HOST:PORT"),
        (["send", "--peer", "127.0.0.1:1", "--id", "abc", "bob", "hi"], "32 hex digits"),
        (["recv", "--peer", "127.0.0.1:1", "--node", "b", "--count", "0"], "1 or more"),
        (["recv", "--peer", "127.0.0.1:1"], "--node"),
        (["connect", "--peer", "127.0.0.1:1", "--timeout", "nan"], "finite and above 0"),
        (["connect", "--peer", "127.0.0.1:1", "--retries", "-1"], "whole number"),
        (["recv", "--peer", "127.0.0.1:1", "--node", "b", "--wait", "-1"], "0 or more"),
        (["peer", "p", "--port", "65536"], "0-65535"),
        (["peer", "p", "--route", "bob"], "RECIPIENT=HOST:PORT"),
        (["peer", "p", "--route", "=127.0.0.1:7000"], "RECIPIENT=HOST:PORT"),
        (["peer", "p", "--route", "bob=127.0.0.1"], "expected HOST:PORT"),
        (["discover"], "--peer"),
    ],
)
def test_bad_usage_exits_2_and_says_why(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == EXIT_USAGE
    assert complaint in capsys.readouterr().err


def test_ops_takes_a_namespace_and_a_runbook_url(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ops", "alerts", "--namespace", "acme", "--runbook-url", "https://wiki.example.org/rb"]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert "- alert: AcmeCircuitBreakerOpen" in out
    assert 'runbook_url: "https://wiki.example.org/rb#circuitbreakeropen"' in out
    assert main(["ops", "tests", "--runbook-url", "https://wiki.example.org/rb"]) == EXIT_OK
    assert "https://wiki.example.org/rb#circuitbreakeropen" in capsys.readouterr().out
    assert main(["ops", "alerts", "--runbook-url", "docs/runbook.md"]) == EXIT_USAGE
    assert "runbook_url must be an absolute http" in capsys.readouterr().err


# --- client commands against a peer in this process --------------------------------------------------


async def test_connect_says_hello_and_pings(capsys: pytest.CaptureFixture[str]) -> None:
    async with DWCPPeer("p1") as peer:
        assert await cli("connect", "--peer", peer.address, "--node", "carol") == EXIT_OK
        connections = peer.statistics().connections_total
    out = capsys.readouterr().out
    assert re.fullmatch(
        rf"connected to {peer.host}:\d+ as 'carol': HELLO answered, ping \d+\.\d ms\n", out
    )
    assert connections == 1


async def test_send_then_recv_delivers_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    async with DWCPPeer("p1") as peer:
        address = peer.address
        text = "héllo\tbob, über alles"
        assert await cli("send", "--peer", address, "--node", "alice", "bob", text) == EXIT_OK
        sent = capsys.readouterr().out
        assert re.fullmatch(rf"stored for 'bob' on {address}: message id [0-9a-f]{{32}}\n", sent)
        assert peer.statistics().messages_stored == 1
        assert await cli("send", "--peer", address, "--node", "dave", "bob", "second") == EXIT_OK
        capsys.readouterr()
        assert await cli("recv", "--peer", address, "--node", "bob", "--count", "5") == EXIT_OK
        assert capsys.readouterr().out == f"alice\t{text}\ndave\tsecond\n"
        assert peer.statistics().messages_held == 0
        assert await cli("recv", "--peer", address, "--node", "bob") == EXIT_EMPTY
        assert f"no message for 'bob' on {address}" in capsys.readouterr().err


async def test_recv_count_takes_no_more_than_asked(capsys: pytest.CaptureFixture[str]) -> None:
    async with DWCPPeer("p1") as peer:
        for i in range(3):
            assert await cli("send", "--peer", peer.address, "bob", f"m{i}") == EXIT_OK
        capsys.readouterr()
        assert await cli("recv", "--peer", peer.address, "--node", "bob", "--count", "2") == 0
        assert capsys.readouterr().out == "cli\tm0\ncli\tm1\n"
        assert peer.statistics().messages_held == 1


async def test_send_with_the_same_id_is_stored_once(capsys: pytest.CaptureFixture[str]) -> None:
    mid = "00112233445566778899aabbccddeeff"
    async with DWCPPeer("p1") as peer:
        for _ in range(2):
            assert await cli("send", "--peer", peer.address, "--id", mid, "bob", "once") == 0
            assert capsys.readouterr().out.endswith(f"message id {mid}\n")
        stats = peer.statistics()
    assert (stats.messages_stored, stats.duplicates) == (1, 1)


async def test_recv_waits_for_a_message_that_comes_later(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with DWCPPeer("p1") as peer, anyio.create_task_group() as tg:
        codes: list[int] = []

        async def receive() -> None:
            codes.append(await cli("recv", "--peer", peer.address, "--node", "bob", "--wait", "30"))

        tg.start_soon(receive)
        with anyio.fail_after(10):
            while peer.statistics().connections_total == 0:  # noqa: ASYNC110 - a peer counter
                await anyio.sleep(0.01)
        assert await cli("send", "--peer", peer.address, "--node", "alice", "bob", "late") == 0
    assert codes == [EXIT_OK]
    assert capsys.readouterr().out.splitlines()[-1] == "alice\tlate"


async def test_discover_lists_the_peers_known(capsys: pytest.CaptureFixture[str]) -> None:
    async with DWCPPeer("p1") as first, DWCPPeer("p2", seeds=[first.address]) as second:
        assert await cli("discover", "--peer", second.address) == EXIT_OK
        assert capsys.readouterr().out == f"-\t{first.address}\n"
        assert await cli("discover", "--peer", first.address) == EXIT_OK
        captured = capsys.readouterr()
    assert captured.out == ""
    assert "knows no other peer" in captured.err


@pytest.mark.parametrize("command", ["connect", "send", "recv", "discover"])
async def test_a_peer_that_is_not_there_exits_1_with_the_error(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = {"send": ["bob", "hi"], "recv": ["--node", "bob"]}.get(command, [])
    argv = [command, "--peer", f"127.0.0.1:{free_port()}", "--retries", "1", *extra]
    assert await cli(*argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith(f"{command} failed: ConnectFailed: "), err
    if command != "connect":  # connecting has no retry of its own; the operations retry it
        assert "after 2 attempts" in err


async def test_peer_reports_an_address_it_cannot_listen_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with DWCPPeer("p1") as busy:
        port = busy.port
        code = await cli("peer", "p2", "--in-memory", "--host", "127.0.0.1", "--port", str(port))
    assert code == EXIT_FAILED
    assert f"peer: cannot listen on 127.0.0.1:{port}: " in capsys.readouterr().err


# --- real processes --------------------------------------------------------------------------------


def _python(*argv: str) -> list[str]:
    return [sys.executable, "-m", "dwcp_resilience", *argv]


_ENV = {**os.environ, "PYTHONWARNINGS": "error"}


@pytest.fixture(params=[signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def peer_process(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """``python -m dwcp_resilience peer`` on 127.0.0.1 in a subprocess; yields its address, then
    stops it with Ctrl-C's SIGINT or a service manager's SIGTERM: it must exit 0 and say so."""
    stop: signal.Signals = request.param
    store = tmp_path / "p1.db"
    process = subprocess.Popen(
        _python("peer", "p1", "--host", "127.0.0.1", "--port", "0", "--store", str(store)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ENV,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.fullmatch(
            rf"peer 'p1' serving on (127\.0\.0\.1:\d+), mailboxes in {re.escape(str(store))} "
            r"\(Ctrl-C to stop\)\n",
            line,
        )
        assert found, (line, process.stderr.read() if process.stderr else "")
        yield found[1]
        process.send_signal(stop)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert out == f"peer 'p1' stopped ({stop.name})\n"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_the_commands_as_real_processes(peer_process: str) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _python(*argv), capture_output=True, text=True, timeout=60, env=_ENV, check=False
        )

    sent = run("send", "--peer", peer_process, "--node", "alice", "bob", "over the wire")
    assert sent.returncode == EXIT_OK, sent.stderr
    assert "message id" in sent.stdout
    got = run("recv", "--peer", peer_process, "--node", "bob")
    assert (got.returncode, got.stdout) == (EXIT_OK, "alice\tover the wire\n"), got.stderr
    empty = run("recv", "--peer", peer_process, "--node", "bob")
    assert empty.returncode == EXIT_EMPTY
    version = run("--version")
    assert version.stdout.strip() == f"dwcp-resilience {metadata.version('dwcp-resilience')}"


def test_a_cli_peer_relays_the_recipients_it_is_given_a_route_for(peer_process: str) -> None:
    """``peer relay --route bob=HOST:PORT``: a send for bob through the relay lands on the peer
    at HOST:PORT (one subprocess each), and is read there."""
    relay = subprocess.Popen(
        _python("peer", "relay", "--port", "0", "--in-memory", "--route", f"bob={peer_process}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ENV,
    )
    try:
        assert relay.stdout is not None
        found = re.search(r"serving on (127\.0\.0\.1:\d+)", relay.stdout.readline())
        assert found, relay.stderr.read() if relay.stderr else ""
        run = functools.partial(
            subprocess.run, capture_output=True, text=True, timeout=60, env=_ENV, check=False
        )
        sent = run(_python("send", "--peer", found[1], "--node", "alice", "bob", "relayed"))
        assert sent.returncode == EXIT_OK, sent.stderr
        got = run(_python("recv", "--peer", peer_process, "--node", "bob"))
        assert (got.returncode, got.stdout) == (EXIT_OK, "alice\trelayed\n"), got.stderr
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.communicate(timeout=30)
    assert relay.returncode == 0


def test_a_cli_peer_keeps_its_mailboxes_across_a_kill(tmp_path: Path) -> None:
    """The CLI's peer is durable by default: a message stored before SIGKILL is there after."""
    store = tmp_path / "p.db"

    def start() -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen(
            _python("peer", "p", "--port", "0", "--store", str(store)),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_ENV,
        )
        assert process.stdout is not None
        found = re.search(r"serving on (\S+),", process.stdout.readline())
        assert found, "the peer did not start"
        return process, found[1]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _python(*argv), capture_output=True, text=True, timeout=60, env=_ENV, check=False
        )

    process, address = start()
    try:
        assert run("send", "--peer", address, "bob", "kept").returncode == EXIT_OK
    finally:
        process.kill()  # SIGKILL: no clean shutdown
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
    process, address = start()
    try:
        got = run("recv", "--peer", address, "--node", "bob")
        assert (got.returncode, got.stdout) == (EXIT_OK, "cli\tkept\n"), got.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
