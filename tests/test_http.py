"""dwcp_resilience.http: Retry-After parsing, the httpx and aiohttp classifiers, hints read by Retry.

httpx is a dev dependency and is tested for real. aiohttp is not: its classifier is tested against a
module put in ``sys.modules`` that copies the exception tree of aiohttp 3.14.5 (class names and
bases, ``ClientResponseError(status=, headers=)``), which is all the classifier reads.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import subprocess
import sys
import textwrap
import types
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from http import HTTPStatus
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp_resilience import ExponentialBackoff, OperationContext, Retry
from dwcp_resilience.http import (
    RETRY_AFTER_CAP,
    RETRYABLE_STATUSES,
    format_retry_after,
    is_retryable_response,
    is_transient_error,
    parse_retry_after,
    retry_after_hint,
    status_of,
)

pytestmark = pytest.mark.anyio

NOW = datetime(2024, 1, 1, tzinfo=UTC)
BACKOFF = ExponentialBackoff(initial_delay=0.1, max_delay=1.0, multiplier=2.0, jitter=False)


# --- parse_retry_after ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 120\t", 120.0),  # optional whitespace around the value
        ("0", 0.0),
        ("007", 7.0),
        ("1.5", 1.5),  # not RFC 9110, but sent in the wild
        (b"30", 30.0),
        (bytearray(b"2"), 2.0),
        ("9" * 500, RETRY_AFTER_CAP),  # beyond float range: capped, never inf
        ("86401", RETRY_AFTER_CAP),
        ("Mon, 01 Jan 2024 00:02:00 GMT", 120.0),  # IMF-fixdate
        ("Monday, 01-Jan-24 00:02:00 GMT", 120.0),  # obsolete RFC 850
        ("Mon Jan  1 00:02:00 2024", 120.0),  # obsolete asctime, no zone: UTC
        ("Mon, 01 Jan 2024 00:02:00 -0000", 120.0),  # no zone information: UTC
        ("Mon, 01 Jan 2024 01:02:00 +0100", 120.0),  # another zone
        ("Sun, 31 Dec 2023 23:59:00 GMT", 0.0),  # in the past
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_CAP),
    ],
)
def test_parse_retry_after_reads_both_forms(value: str | bytes, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "-5",  # delta-seconds has no sign
        "+5",
        "1e3",
        "inf",
        "nan",
        "0x10",
        "five",
        "5 s",
        "1.",
        ".5",
        "١٢",  # Arabic-Indic digits are digits to str.isdigit, not to HTTP
        "Mon, 01 Jan 2024 25:00:00 GMT",  # hour 25
        "Mon, 32 Jan 2024 00:00:00 GMT",
        "Mon, 01 Jan 99999 00:00:00 GMT",  # beyond datetime
        "\x00",
        b"\xff\xfe",
    ],
)
def test_parse_retry_after_returns_none_for_garbage(value: str | bytes | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_parse_retry_after_naive_now_is_utc_and_default_now_is_the_wall_clock() -> None:
    naive = datetime(2024, 1, 1)
    assert parse_retry_after("Mon, 01 Jan 2024 00:00:30 GMT", now=naive) == 30.0
    other_zone = datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))  # = NOW
    assert parse_retry_after("Mon, 01 Jan 2024 00:00:30 GMT", now=other_zone) == 30.0
    in_an_hour = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    seconds = parse_retry_after(in_an_hour)
    assert seconds is not None and 3000.0 < seconds <= 3600.0


@pytest.mark.parametrize(
    ("value", "now", "match"),
    [
        (120, None, "value must be str, bytes or None, got int"),
        (1.5, None, "got float"),
        ("120", 1700000000.0, "now must be a datetime"),
    ],
)
def test_parse_retry_after_refuses_wrong_types(value: Any, now: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        parse_retry_after(value, now=now)


def _in_range(seconds: float | None) -> bool:
    return seconds is None or (math.isfinite(seconds) and 0.0 <= seconds <= RETRY_AFTER_CAP)


@settings(max_examples=500, deadline=None)
@given(
    value=st.one_of(st.text(), st.binary(), st.from_regex(r"\A\s*[0-9]{1,30}(\.[0-9]{1,5})?\s*\Z"))
)
def test_parse_retry_after_never_raises_never_negative_never_nan(value: str | bytes) -> None:
    assert _in_range(parse_retry_after(value, now=NOW))
    assert _in_range(parse_retry_after(value))


@settings(max_examples=300, deadline=None)
@given(
    when=st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
    ),
    now=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)),
)
def test_parse_retry_after_of_any_http_date(when: datetime, now: datetime) -> None:
    when = when.replace(microsecond=0)  # an HTTP-date has whole seconds
    seconds = parse_retry_after(format_datetime(when, usegmt=True), now=now)
    expected = (when - now.replace(tzinfo=UTC)).total_seconds()
    assert seconds == min(max(expected, 0.0), RETRY_AFTER_CAP)


@settings(max_examples=300, deadline=None)
@given(number=st.integers(min_value=0, max_value=10**40))
def test_parse_retry_after_of_any_delta(number: int) -> None:
    assert parse_retry_after(str(number)) == min(float(number), RETRY_AFTER_CAP)


@settings(max_examples=300, deadline=None)
@given(seconds=st.floats(min_value=-1e6, max_value=1e12, allow_nan=False))
def test_format_retry_after_never_asks_for_less(seconds: float) -> None:
    text = format_retry_after(seconds)
    assert text.isascii() and text.isdigit()
    parsed = parse_retry_after(text)
    assert parsed is not None
    assert parsed >= min(max(seconds, 0.0), RETRY_AFTER_CAP)
    assert parsed - max(seconds, 0.0) <= 1.0 or parsed == RETRY_AFTER_CAP


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.2, "1"), (5, "5"), (5.0, "5"), (0, "0"), (-3.0, "0"), (math.inf, "86400")],
)
def test_format_retry_after(seconds: float, expected: str) -> None:
    assert format_retry_after(seconds) == expected


def test_format_retry_after_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        format_retry_after(math.nan)
    with pytest.raises(TypeError, match="got bool"):
        format_retry_after(True)
    with pytest.raises(TypeError, match="got str"):
        format_retry_after("5")  # type: ignore[arg-type]


# --- status and responses ------------------------------------------------------------------------


class AiohttpLikeResponse:
    """What aiohttp's ClientResponse shows the helpers: ``status`` and case-insensitive ``headers``
    (here a dict holding the capitalised name)."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}


def request() -> httpx.Request:
    return httpx.Request("GET", "http://127.0.0.1/x")


def test_status_of_reads_httpx_aiohttp_and_carried_responses() -> None:
    assert status_of(httpx.Response(503)) == 503
    assert status_of(AiohttpLikeResponse(429)) == 429
    error = httpx.HTTPStatusError("no", request=request(), response=httpx.Response(502))
    assert status_of(error) == 502
    assert status_of(types.SimpleNamespace(status_code=HTTPStatus.GATEWAY_TIMEOUT)) == 504
    assert status_of(types.SimpleNamespace(status=True)) is None  # a bool is no status
    assert status_of(types.SimpleNamespace(status="503")) is None
    assert status_of(object()) is None
    assert status_of(None) is None


def test_is_retryable_response() -> None:
    for status in range(100, 600):
        expected = status in {429, 502, 503, 504}
        assert is_retryable_response(httpx.Response(status)) is expected, status
        assert is_retryable_response(AiohttpLikeResponse(status)) is expected, status


def test_retryable_statuses() -> None:
    assert frozenset({429, 502, 503, 504}) == RETRYABLE_STATUSES
    assert not is_retryable_response("not a response")


# --- is_transient_error: httpx (real) ------------------------------------------------------------


def status_error(status: int) -> httpx.HTTPStatusError:
    return httpx.HTTPStatusError(
        f"{status}", request=request(), response=httpx.Response(status, request=request())
    )


def raised_from(exc: Exception, cause: BaseException) -> Exception:
    try:
        raise exc from cause
    except Exception as error:
        return error


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ConnectTimeout("slow"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.WriteTimeout("slow"), True),
        (httpx.PoolTimeout("busy"), True),
        (httpx.ReadError("reset"), True),
        (httpx.WriteError("reset"), True),
        (httpx.CloseError("reset"), True),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), True),
        (httpx.UnsupportedProtocol("ftp://"), False),
        (httpx.LocalProtocolError("no Host header"), False),
        (httpx.ProxyError("407"), False),
        (httpx.DecodingError("bad gzip"), False),
        (httpx.TooManyRedirects("loop"), False),
        (httpx.InvalidURL("bad"), False),
        (status_error(429), True),
        (status_error(502), True),
        (status_error(503), True),
        (status_error(504), True),
        (status_error(500), False),
        (status_error(404), False),
        (raised_from(httpx.ConnectError("tls"), ssl.SSLCertVerificationError("bad cert")), False),
        (
            raised_from(httpx.ConnectError("tls"), raised_from(OSError("x"), ssl.SSLError("eof"))),
            True,  # a TLS handshake cut short is not a certificate that did not verify
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_httpx_errors(exc: Exception, transient: bool) -> None:
    assert is_transient_error(exc) is transient


def test_httpx_connect_error_is_not_an_oserror() -> None:
    """Issue 17: the default retry_on (OSError) does not see httpx.ConnectError; this one does."""
    assert not isinstance(httpx.ConnectError("refused"), OSError)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (OSError("io"), True),
        (ConnectionRefusedError(), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (ssl.SSLCertVerificationError("bad cert"), False),
        (ValueError("bug"), False),
        (KeyError("bug"), False),
        (asyncio.CancelledError(), False),
        (KeyboardInterrupt(), False),
        (ExceptionGroup("g", [ValueError(), httpx.ReadTimeout("t")]), True),
        (ExceptionGroup("g", [ValueError(), KeyError()]), False),
        (BaseExceptionGroup("g", [asyncio.CancelledError()]), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_other_errors(exc: BaseException, transient: bool) -> None:
    assert is_transient_error(exc) is transient


@pytest.mark.real_time
async def test_a_refused_connection_is_transient(anyio_backend: Any) -> None:
    """A real httpx.ConnectError: a loopback port that nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"http://127.0.0.1:{port}/")
    assert is_transient_error(info.value)


# --- is_transient_error: aiohttp (its exception tree, without aiohttp) ---------------------------


def fake_aiohttp() -> types.ModuleType:
    """aiohttp 3.14.5's client exception classes (names and bases) in a module."""
    module = types.ModuleType("aiohttp")
    source = textwrap.dedent(
        """
        import ssl

        class ClientError(Exception): ...
        class ClientConnectionError(ClientError): ...
        class ClientConnectionResetError(ClientConnectionError, ConnectionResetError): ...
        class ClientOSError(ClientConnectionError, OSError): ...
        class ClientConnectorError(ClientOSError): ...
        class ClientProxyConnectionError(ClientConnectorError): ...
        class ClientConnectorDNSError(ClientConnectorError): ...
        class ClientSSLError(ClientConnectorError): ...
        class ClientConnectorSSLError(ClientSSLError, ssl.SSLError): ...
        class ClientConnectorCertificateError(ClientSSLError, ssl.SSLCertVerificationError): ...
        class ServerConnectionError(ClientConnectionError): ...
        class ServerTimeoutError(ServerConnectionError, TimeoutError): ...
        class ConnectionTimeoutError(ServerTimeoutError): ...
        class SocketTimeoutError(ServerTimeoutError): ...
        class ServerDisconnectedError(ServerConnectionError): ...
        class ServerFingerprintMismatch(ServerConnectionError): ...
        class ClientPayloadError(ClientError): ...
        class InvalidURL(ClientError, ValueError): ...

        class ClientResponseError(ClientError):
            def __init__(self, request_info, history, *, status=None, message="", headers=None):
                super().__init__(f"{status}, message={message!r}")
                self.request_info = request_info
                self.history = history
                self.status = status or 0
                self.message = message
                self.headers = headers

        class ClientHttpProxyError(ClientResponseError): ...
        class ContentTypeError(ClientResponseError): ...
        """
    )
    exec(compile(source, "fake_aiohttp", "exec"), module.__dict__)
    return module


@pytest.fixture
def aiohttp(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = fake_aiohttp()
    monkeypatch.setitem(sys.modules, "aiohttp", module)
    return module


TRANSIENT_AIOHTTP = [
    "ClientConnectionError",
    "ClientConnectionResetError",
    "ClientOSError",
    "ClientProxyConnectionError",
    "ClientConnectorDNSError",
    "ServerConnectionError",
    "ServerTimeoutError",
    "ConnectionTimeoutError",
    "SocketTimeoutError",
    "ServerDisconnectedError",
]
PERMANENT_AIOHTTP = [
    "ClientError",
    "ClientSSLError",
    "ClientConnectorSSLError",
    "ClientConnectorCertificateError",
    "ServerFingerprintMismatch",
    "ClientPayloadError",
    "InvalidURL",
]


@pytest.mark.parametrize("name", TRANSIENT_AIOHTTP)
def test_aiohttp_connection_errors_are_transient(aiohttp: types.ModuleType, name: str) -> None:
    assert is_transient_error(getattr(aiohttp, name)())


@pytest.mark.parametrize("name", PERMANENT_AIOHTTP)
def test_aiohttp_other_errors_are_not(aiohttp: types.ModuleType, name: str) -> None:
    assert not is_transient_error(getattr(aiohttp, name)())


@pytest.mark.parametrize("status", [429, 502, 503, 504, 500, 404])
def test_aiohttp_response_errors_by_status(aiohttp: types.ModuleType, status: int) -> None:
    for kind in ("ClientResponseError", "ClientHttpProxyError"):
        error = getattr(aiohttp, kind)(None, (), status=status, headers={"Retry-After": "7"})
        assert is_transient_error(error) is (status in RETRYABLE_STATUSES)
        assert retry_after_hint(error) == 7.0


def test_aiohttp_is_looked_up_not_imported(
    aiohttp: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    disconnected = aiohttp.ServerDisconnectedError()  # an aiohttp error that is no OSError
    assert is_transient_error(disconnected)
    monkeypatch.delitem(sys.modules, "aiohttp")
    assert not is_transient_error(disconnected)  # no aiohttp imported: nothing of it is known
    assert is_transient_error(aiohttp.ClientOSError())  # still an OSError


def test_an_older_aiohttp_without_some_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    module = fake_aiohttp()
    for name in ("ClientSSLError", "ServerFingerprintMismatch", "ClientResponseError"):
        delattr(module, name)
    monkeypatch.setitem(sys.modules, "aiohttp", module)
    assert is_transient_error(module.ServerDisconnectedError())
    assert not is_transient_error(module.ClientPayloadError())


def test_the_package_works_without_httpx_and_aiohttp() -> None:
    """Importing the package and using every helper imports neither library."""
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"httpx", "aiohttp"}:
                    raise ImportError(f"{name} is blocked")
                return None

        sys.meta_path.insert(0, Block())
        import dwcp_resilience
        from dwcp_resilience import Retry
        from dwcp_resilience.http import (
            is_retryable_response, is_transient_error, parse_retry_after, retry_after_hint,
        )

        class Response:
            status_code = 503
            headers = {"Retry-After": "2"}

        assert is_transient_error(ConnectionRefusedError())
        assert not is_transient_error(ValueError())
        assert is_retryable_response(Response())
        assert retry_after_hint(Response()) == 2.0
        assert parse_retry_after("3") == 3.0
        Retry("r", retry_on=is_transient_error, retry_after=retry_after_hint)
        assert not {"httpx", "aiohttp"} & set(sys.modules), sorted(sys.modules)
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


# --- retry_after_hint ----------------------------------------------------------------------------


class Broken:
    @property
    def headers(self) -> object:
        raise RuntimeError("no headers")

    retry_after = 4.0


class RaisingHeaders:
    def get(self, name: str) -> str:
        raise RuntimeError("broken mapping")


def test_retry_after_hint_reads_responses_and_carried_responses() -> None:
    assert retry_after_hint(httpx.Response(503, headers={"Retry-After": "5"})) == 5.0
    assert retry_after_hint(httpx.Response(503, headers={"retry-after": "5"})) == 5.0
    date = format_datetime(datetime.now(UTC) + timedelta(minutes=10), usegmt=True)
    hint = retry_after_hint(httpx.Response(429, headers={"Retry-After": date}))
    assert hint is not None and 500.0 < hint <= 600.0
    error = httpx.HTTPStatusError(
        "429",
        request=request(),
        response=httpx.Response(429, headers={"Retry-After": "3"}, request=request()),
    )
    assert retry_after_hint(error) == 3.0
    assert retry_after_hint(AiohttpLikeResponse(503, {"Retry-After": "8"})) == 8.0
    assert retry_after_hint(AiohttpLikeResponse(503, {"retry-after": "9"})) == 9.0
    assert retry_after_hint(types.SimpleNamespace(headers={"Retry-After": b"6"})) == 6.0


def test_retry_after_hint_falls_back_to_the_attribute() -> None:
    garbage = types.SimpleNamespace(headers={"Retry-After": "soon"}, retry_after=timedelta(2))
    assert retry_after_hint(garbage) == 172800.0
    assert retry_after_hint(types.SimpleNamespace(retry_after=1.5)) == 1.5
    assert retry_after_hint(Broken()) == 4.0
    assert retry_after_hint(types.SimpleNamespace(headers=RaisingHeaders())) is None
    assert retry_after_hint(types.SimpleNamespace(headers={"Retry-After": 5})) is None
    assert retry_after_hint(httpx.Response(503)) is None
    assert retry_after_hint(ConnectionError()) is None
    assert retry_after_hint(None) is None


# --- with Retry (virtual time) -------------------------------------------------------------------


def http_retry(**options: Any) -> Retry:
    return Retry(
        "api",
        backoff=BACKOFF,
        retry_on=is_transient_error,
        retry_on_result=is_retryable_response,
        retry_after=retry_after_hint,
        **options,
    )


class Server:
    """Answers from a script: a response, or an exception to raise. Records when it was called."""

    def __init__(self, *script: httpx.Response | Exception) -> None:
        self.script = list(script)
        self.times: list[float] = []

    async def __call__(self) -> httpx.Response:
        self.times.append(anyio.current_time())
        step = self.script.pop(0) if self.script else httpx.Response(200)
        if isinstance(step, Exception):
            raise step
        return step

    def offsets(self) -> list[float]:
        return [round(t - self.times[0], 6) for t in self.times]


@pytest.mark.virtual_time
async def test_retry_after_5_with_max_delay_1_waits_5_seconds(anyio_backend: Any) -> None:
    server = Server(httpx.Response(503, headers={"Retry-After": "5"}))
    response = await http_retry().call(server)
    assert response.status_code == 200
    assert server.offsets() == [0.0, 5.0]


@pytest.mark.virtual_time
async def test_an_http_date_hint(anyio_backend: Any) -> None:
    in_30_s = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    server = Server(httpx.Response(503, headers={"Retry-After": in_30_s}))
    await http_retry().call(server)
    assert 25.0 < server.offsets()[1] <= 30.0


@pytest.mark.virtual_time
async def test_a_hint_above_max_retry_after_returns_the_response_at_once(
    anyio_backend: Any,
) -> None:
    retry = http_retry()
    server = Server(httpx.Response(429, headers={"Retry-After": "120"}))
    response = await retry.call(server)
    assert response.status_code == 429  # the caller sees what the server said
    assert server.offsets() == [0.0]
    assert dict(retry.statistics().failures)["retry_after"] == 1
    patient = http_retry(max_retry_after=300)
    server = Server(httpx.Response(429, headers={"Retry-After": "120"}))
    assert (await patient.call(server)).status_code == 200
    assert server.offsets() == [0.0, 120.0]


@pytest.mark.virtual_time
@pytest.mark.parametrize("header", ["soon", "-1", "nan", "inf", ""])
async def test_garbage_hints_fall_back_to_the_backoff(anyio_backend: Any, header: str) -> None:
    server = Server(httpx.Response(503, headers={"Retry-After": header}), httpx.Response(503))
    await http_retry().call(server)
    assert server.offsets() == [0.0, 0.1, 0.3]


@pytest.mark.virtual_time
async def test_transport_errors_and_status_errors_are_retried(anyio_backend: Any) -> None:
    server = Server(
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.HTTPStatusError(
            "429",
            request=request(),
            response=httpx.Response(429, headers={"Retry-After": "2"}, request=request()),
        ),
    )
    assert (await http_retry().call(server)).status_code == 200
    assert server.offsets() == [0.0, 0.1, 0.3, 2.3]
    default = Retry("default", backoff=BACKOFF)  # retry_on=OSError: httpx.ConnectError is not one
    with pytest.raises(httpx.ConnectError) as info:
        await default.call(Server(httpx.ConnectError("refused")))
    assert "(not_retryable)" in info.value.__notes__[0]


@pytest.mark.virtual_time
async def test_the_deadline_still_bounds_a_hint(anyio_backend: Any) -> None:
    server = Server(httpx.Response(503, headers={"Retry-After": "5"}))
    start = anyio.current_time()
    with OperationContext("op", deadline=start + 4.0).activate():
        response = await http_retry().call(server)
    assert response.status_code == 503 and server.offsets() == [0.0]
    assert anyio.current_time() == start


@pytest.mark.virtual_time
async def test_a_permanent_error_is_not_retried(anyio_backend: Any) -> None:
    server = Server(httpx.UnsupportedProtocol("ftp"), httpx.Response(404))
    with pytest.raises(httpx.UnsupportedProtocol):
        await http_retry().call(server)
    assert (await http_retry().call(server)).status_code == 404
    assert server.offsets() == [0.0, 0.0]
