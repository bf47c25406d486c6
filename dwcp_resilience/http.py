"""HTTP for :class:`~dwcp_resilience.Retry` and friends: which errors and responses are worth another
try, and how long the server asked us to wait.

Neither httpx nor aiohttp is a dependency: nothing here imports them. A classifier looks a library
up in ``sys.modules``; an exception of that library can only exist once the application has
imported it. Responses are read by duck typing: ``status_code`` (httpx, Starlette) or ``status``
(aiohttp) for the status, ``headers.get("Retry-After")`` for the hint.

Use them together::

    from dwcp_resilience import Retry
    from dwcp_resilience.http import is_retryable_response, is_transient_error, retry_after_hint

    retry = Retry(
        "api",
        retry_on=is_transient_error,  # connection errors, timeouts, raise_for_status() 429/5xx
        retry_on_result=is_retryable_response,  # a returned 429, 502, 503 or 504
        retry_after=retry_after_hint,  # wait what Retry-After says (up to max_retry_after)
    )
    response = await retry.call(client.get, url)

- :func:`parse_retry_after`: a ``Retry-After`` value (delta-seconds or an HTTP-date) in seconds.
- :func:`is_transient_error`: a ``retry_on=`` predicate (transport errors of httpx and aiohttp,
  ``OSError``, and the status errors of ``raise_for_status()`` for :data:`RETRYABLE_STATUSES`).
- :func:`is_retryable_response`: a ``retry_on_result=`` predicate (status in
  :data:`RETRYABLE_STATUSES`).
- :func:`retry_after_hint`: a ``retry_after=`` reader (the ``Retry-After`` header of a response, or
  of the response an exception carries; else the ``retry_after`` attribute).
- :func:`status_of`: the status of a response or of an exception that carries one.
- :func:`format_retry_after`: the header value a server sends (whole seconds, rounded up).

These names live here only, not at the package root: the root is protocol-neutral, and this
module is the door for HTTP, as :mod:`dwcp_resilience.testing` is for tests.
"""

from __future__ import annotations

import math
import re
import ssl
import sys
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from .policies.retry import retry_after_attribute

__all__ = (
    "RETRYABLE_STATUSES",
    "RETRY_AFTER_CAP",
    "format_retry_after",
    "is_retryable_response",
    "is_transient_error",
    "parse_retry_after",
    "retry_after_hint",
    "status_of",
)

RETRYABLE_STATUSES: frozenset[int] = frozenset({429, 502, 503, 504})
"""Too Many Requests, Bad Gateway, Service Unavailable, Gateway Timeout: the server (or a proxy in
front of it) did not handle the request and may well handle it later. 500 is not here: it is as
often a bug that answers the same way every time."""

RETRY_AFTER_CAP = 86_400.0
"""The largest value :func:`parse_retry_after` returns (one day, in seconds): a longer or an
overflowing value is clamped to it, so that a retry with a smaller ``max_retry_after`` gives up
instead of treating the header as absent and retrying at once."""

_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_CAUSE_DEPTH = 8  # how far down __cause__/__context__ a certificate failure is looked for


def parse_retry_after(value: str | bytes | None, *, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header value in seconds from ``now``, or ``None`` when it is absent or garbage.

    Both forms of RFC 9110, section 10.2.3, are read: delta-seconds (``"120"``; a fraction such as
    ``"1.5"``, which some servers send, is accepted too) and an HTTP-date (``"Sun, 06 Nov 1994
    08:49:37 GMT"``, and the obsolete RFC 850 and asctime forms, through
    :func:`email.utils.parsedate_to_datetime`; a date without a zone is UTC, as HTTP dates are).

    The result is finite and in ``[0, RETRY_AFTER_CAP]``: a date in the past gives 0, a huge number
    gives :data:`RETRY_AFTER_CAP`. It never raises for a ``str`` or ``bytes`` value.

    Args:
        value: the header value (``bytes`` are decoded as Latin-1), or ``None``.
        now: the current time for an HTTP-date (default: the wall clock, UTC); naive means UTC.

    Raises:
        TypeError: if ``value`` is not ``str``, ``bytes`` or ``None``, or ``now`` not a datetime.
    """
    if now is not None and not isinstance(now, datetime):
        raise TypeError(f"now must be a datetime or None, got {type(now).__name__}")
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        value = value.decode("latin-1")
    elif not isinstance(value, str):
        raise TypeError(f"value must be str, bytes or None, got {type(value).__name__}")
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return min(float(text), RETRY_AFTER_CAP)  # float("9" * 400) is inf, not an error
    try:
        when = parsedate_to_datetime(text)
    except Exception:  # ValueError, TypeError, IndexError...: it varies with the Python version
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    seconds = (when - now).total_seconds()
    if seconds <= 0.0:
        return 0.0
    return min(seconds, RETRY_AFTER_CAP)


def format_retry_after(seconds: float) -> str:
    """The ``Retry-After`` value a server sends for a wait of ``seconds``: whole seconds, rounded up
    (so that a client does not come back early), at least 0, at most :data:`RETRY_AFTER_CAP`.

    Raises:
        TypeError: if ``seconds`` is not a number (``True`` included).
        ValueError: if ``seconds`` is NaN.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"seconds must be a number, got {type(seconds).__name__}")
    if math.isnan(seconds):
        raise ValueError("seconds must not be NaN")
    bounded = min(max(float(seconds), 0.0), RETRY_AFTER_CAP)
    return str(math.ceil(bounded))


def _attribute(obj: object, name: str) -> object:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property that raises (httpx's Response.request, for one) is no value
        return None


def _status(obj: object) -> int | None:
    for name in ("status_code", "status"):
        value = _attribute(obj, name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def status_of(obj: object) -> int | None:
    """The HTTP status of a response (``status_code`` for httpx and Starlette, ``status`` for
    aiohttp), or of the ``response`` an exception carries (httpx ``HTTPStatusError``); ``None``
    when there is none."""
    status = _status(obj)
    if status is not None:
        return status
    response = _attribute(obj, "response")
    return None if response is None else _status(response)


def is_retryable_response(response: object) -> bool:
    """``retry_on_result=``: true for a response whose status is in :data:`RETRYABLE_STATUSES`."""
    return status_of(response) in RETRYABLE_STATUSES


def _certificate_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised from, a certificate that did not verify (httpx raises
    ``ConnectError`` from it; aiohttp's ``ClientConnectorCertificateError`` is one)."""
    seen: BaseException | None = exc
    for _ in range(_CAUSE_DEPTH):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _classes(module: object, *names: str) -> tuple[type[BaseException], ...]:
    """The exception classes ``names`` that ``module`` has (older releases lack some)."""
    found = (getattr(module, name, None) for name in names)
    return tuple(cls for cls in found if isinstance(cls, type) and issubclass(cls, BaseException))


def _httpx_verdict(httpx: object, exc: Exception) -> bool | None:
    transport = _classes(httpx, "TransportError")
    if transport and isinstance(exc, transport):
        # A URL scheme httpx does not speak, a request we built wrong, a proxy that refused us:
        # the next attempt would fail the same way.
        permanent = _classes(httpx, "UnsupportedProtocol", "LocalProtocolError", "ProxyError")
        return not isinstance(exc, permanent)
    status_error = _classes(httpx, "HTTPStatusError")
    if status_error and isinstance(exc, status_error):
        return status_of(exc) in RETRYABLE_STATUSES
    return None


def _aiohttp_verdict(aiohttp: object, exc: Exception) -> bool | None:
    response_error = _classes(aiohttp, "ClientResponseError")
    if response_error and isinstance(exc, response_error):
        return status_of(exc) in RETRYABLE_STATUSES
    connection = _classes(aiohttp, "ClientConnectionError")
    if connection and isinstance(exc, connection):
        # TLS set-up failures and a certificate whose fingerprint does not match do not heal.
        return not isinstance(exc, _classes(aiohttp, "ClientSSLError", "ServerFingerprintMismatch"))
    return None


def is_transient_error(exc: BaseException) -> bool:
    """``retry_on=``: true for errors that another attempt may not meet.

    - httpx: every ``TransportError`` (timeouts, ``ConnectError``, ``ReadError``, ``WriteError``,
      ``CloseError``, ``RemoteProtocolError`` such as a server that closed a kept-alive connection)
      except ``UnsupportedProtocol``, ``LocalProtocolError`` and ``ProxyError``; and an
      ``HTTPStatusError`` (``raise_for_status()``) whose status is in :data:`RETRYABLE_STATUSES`.
    - aiohttp: every ``ClientConnectionError`` (``ClientOSError``, ``ClientConnectorError``,
      ``ServerDisconnectedError``, ``ServerTimeoutError``...) except ``ClientSSLError`` and
      ``ServerFingerprintMismatch``; and a ``ClientResponseError`` whose status is in
      :data:`RETRYABLE_STATUSES`.
    - Any other ``OSError`` (connection errors, ``TimeoutError``, hence
      :class:`~dwcp_resilience.DeadlineExceeded` of an inner ``Timeout``).
    - Never: a certificate that did not verify (``ssl.SSLCertVerificationError``, or an error raised
      from one), anything that is not an ``Exception`` (cancellation), and everything else.

    An exception group is transient when one of its exceptions is.
    """
    if isinstance(exc, BaseExceptionGroup):
        return any(is_transient_error(inner) for inner in exc.exceptions)
    if not isinstance(exc, Exception) or _certificate_failure(exc):
        return False
    modules = sys.modules
    httpx = modules.get("httpx")
    if httpx is not None:
        verdict = _httpx_verdict(httpx, exc)
        if verdict is not None:
            return verdict
    aiohttp = modules.get("aiohttp")
    if aiohttp is not None:
        verdict = _aiohttp_verdict(aiohttp, exc)
        if verdict is not None:
            return verdict
    return isinstance(exc, OSError)


def _header(headers: object, name: str) -> str | bytes | None:
    get = _attribute(headers, "get")
    if not callable(get):
        return None
    for key in (name, name.lower()):  # httpx and aiohttp headers ignore case; a plain dict does not
        try:
            value = get(key)
        except Exception:
            return None
        if isinstance(value, str | bytes):
            return value
    return None


def retry_after_hint(outcome: object) -> float | None:
    """``retry_after=``: the server's hint for a failed attempt, in seconds, or ``None``.

    Reads the ``Retry-After`` header (:func:`parse_retry_after`) of ``outcome`` when it has
    ``headers`` (an httpx or aiohttp response, an aiohttp ``ClientResponseError``), else of the
    ``response`` it carries (an httpx ``HTTPStatusError``). Without a usable header it falls back
    to :func:`~dwcp_resilience.retry_after_attribute` (a ``retry_after`` attribute). Never raises.
    """
    headers = _attribute(outcome, "headers")
    if headers is None:
        headers = _attribute(_attribute(outcome, "response"), "headers")
    if headers is not None:
        value = _header(headers, "Retry-After")
        if value is not None:
            seconds = parse_retry_after(value)
            if seconds is not None:
                return seconds
    return retry_after_attribute(outcome)
