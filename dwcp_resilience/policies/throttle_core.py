"""The pure core of the adaptive throttle: requests and accepts over a sliding window, and the
Google SRE book's client-side rejection probability (chapter 21, "Handling Overload").

Over the last ``window`` seconds, ``requests`` counts the calls the application attempted through
the throttle (those it refused locally included) and ``accepts`` those the backend accepted. A new
call is refused locally with probability::

    max(0, (requests - k * accepts) / (requests + 1))

So while the backend accepts everything, nothing is refused; once it accepts less than ``1 / k`` of
what is sent, the client sends about ``k`` times what it accepts and refuses the rest itself, which
no longer reaches the backend. The probability is computed from the window before the new call is
counted. With few requests it reacts at once: one refused request in an empty window gives 1/2.

The window is ``buckets`` buckets of ``window / buckets`` seconds on the caller's clock; a bucket
expires as a whole. A call refused locally is counted as a request at once. A call let through is
counted when its outcome is known, in the bucket of its admission (its *ticket*): an accept adds a
request and an accept, a refusal by the backend adds a request, and a neutral outcome (cancelled, or
one of our own rejections from an inner policy: the backend never saw it) adds nothing. A call still
in flight counts as nothing yet: counted at admission, it would read as a refusal until it ends, and
a burst of calls into an empty window would be refused for the calls ahead of it (with one call in
flight and nothing else, the next would see ``(1 - 0) / 2``). An outcome that arrives after its
bucket expired changes only the lifetime counters. So ``0 <= accepts <= requests`` in every bucket.

Nothing here reads a clock, awaits or draws a random number unless refusing is possible: callers
pass ``now`` and a uniform draw ``random()``, which is called only when the probability is above 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..core.outcome import Outcome
from ..core.validate import check_int, check_number

__all__ = ("REFUSED", "ThrottleCore")

REFUSED = -1
"""The ticket of a call refused locally."""

_SUCCESS = Outcome.SUCCESS
_NEUTRAL = Outcome.NEUTRAL


class ThrottleCore:
    """Requests and accepts per bucket, the running window totals, and lifetime counters.

    Args:
        k: the book's multiplier K: how many requests per accept may reach the backend (>= 1).
        window: the window in seconds (finite, > 0).
        buckets: how many buckets the window is cut into (1 to 10,000).

    Raises:
        ValueError, TypeError: a setting out of range or of the wrong type (the message names it).
    """

    __slots__ = (
        "_acc",
        "_edge",
        "_k",
        "_last",
        "_n",
        "_req",
        "_width",
        "accepted",
        "accepts",
        "admitted",
        "neutral",
        "refused",
        "rejected",
        "requests",
    )

    def __init__(self, k: float, window: float, buckets: int) -> None:
        self._k = check_number(k, "k", min_value=1.0)
        window = check_number(window, "window", min_value=0.0, allow_zero=False)
        self._n = check_int(buckets, "buckets", min_value=1, max_value=10_000)
        self._width = window / self._n
        self._req = [0] * self._n
        self._acc = [0] * self._n
        self._last = -(2**62)  # the index (now // width) of the newest bucket
        self._edge = -math.inf  # where the newest bucket ends: (last + 1) * width
        self.requests = self.accepts = 0  # over the window
        # lifetime: admitted or rejected locally; of the admitted, accepted, refused or neutral
        self.admitted = self.rejected = self.accepted = self.refused = self.neutral = 0

    @property
    def k(self) -> float:
        return self._k

    @property
    def window(self) -> float:
        return self._width * self._n

    def clear(self) -> None:
        """Forget the window (the lifetime counters stay)."""
        self._req = [0] * self._n
        self._acc = [0] * self._n
        self._last = -(2**62)
        self._edge = -math.inf
        self.requests = self.accepts = 0

    def _advance(self, now: float) -> int:
        if now >= self._edge:
            index = int(now // self._width)
            if index > self._last:
                self._slide(index)
        return self._last  # the newest bucket (a clock that steps back counts into it too)

    def _slide(self, index: int) -> None:
        """Make ``index`` the newest bucket: empty every bucket that slid out (at most n, however
        long the silence was)."""
        n = self._n
        req, acc = self._req, self._acc
        for k in range(max(self._last + 1, index - n + 1), index + 1):
            slot = k % n
            self.requests -= req[slot]
            self.accepts -= acc[slot]
            req[slot] = acc[slot] = 0
        self._last = index
        self._edge = (index + 1) * self._width

    def probability(self, now: float) -> float:
        """The probability that a call admitted at ``now`` is refused locally."""
        self._advance(now)
        requests = self.requests
        p = (requests - self._k * self.accepts) / (requests + 1)
        return p if p > 0.0 else 0.0

    def try_admit(self, now: float, random: Callable[[], float]) -> int:
        """Decide on a call at ``now``: its ticket (>= 0), or :data:`REFUSED` (counted at once)."""
        if now >= self._edge:  # a later bucket (a float compare: no division on the common path)
            index = int(now // self._width)
            if index > self._last:
                self._slide(index)
        index = self._last  # the newest bucket (a clock that steps back counts into it too)
        requests = self.requests
        excess = requests - self._k * self.accepts
        if excess > 0.0 and random() < excess / (requests + 1):  # p > 0 only then: no draw else
            self._req[index % self._n] += 1
            self.requests = requests + 1
            self.rejected += 1
            return REFUSED
        self.admitted += 1
        return index

    def accept(self, ticket: int) -> None:
        """The backend accepted the call admitted with ``ticket``: a request and an accept."""
        self.accepted += 1
        if ticket > self._last - self._n:  # its bucket has not slid out of the window
            slot = ticket % self._n
            self._acc[slot] += 1
            self._req[slot] += 1
            self.accepts += 1
            self.requests += 1

    def record(self, ticket: int, outcome: Outcome) -> None:
        """The outcome of the call admitted with ``ticket``: success is a request and an accept
        (:meth:`accept`), failure a request the backend refused, neutral no request at all."""
        if outcome is _SUCCESS:
            self.accept(ticket)
        elif outcome is _NEUTRAL:
            self.neutral += 1
        else:
            self.refused += 1
            if ticket > self._last - self._n:
                self._req[ticket % self._n] += 1
                self.requests += 1
