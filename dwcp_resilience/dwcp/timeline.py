"""The demo's timeline picture: the send breaker's state, the degradation level and every send's
latency over the fault schedule, drawn with matplotlib (the optional extra ``demo``).

Three panels share the time axis, so no line hides under another. The fault bands are shaded in
every panel, numbered above the top one and named in the legend below the panels, so no label
covers the data.
"""

from __future__ import annotations

from typing import Any

from .faults import Fault
from .scenario import SendRecord

__all__ = ("save_timeline", "timeline_figure")

_BAND_COLOURS = ("#f6c85f", "#ef8a8a", "#9d9df0", "#8fd18f", "#e5a0e5", "#8fd0e5")


def timeline_figure(
    timeline: list[tuple[float, int, int]],
    records: list[SendRecord],
    schedule: tuple[tuple[float, float, Fault | None, str], ...],
) -> Any:
    """The timeline as a matplotlib figure (see the module docstring).

    Args:
        timeline: ``(seconds, breaker state 0-2, degradation level 0-3)`` samples.
        records: every send as the caller saw it.
        schedule: ``(start, duration, fault, label)``; entries with an empty label are not drawn.
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415 - optional extra "demo"
    from matplotlib.lines import Line2D  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    fig, axes = plt.subplots(
        3, 1, figsize=(11, 8.5), sharex=True, gridspec_kw={"height_ratios": [1, 1.2, 2.4]}
    )
    breaker_axis, level_axis, latency_axis = axes
    times = [t for t, _, _ in timeline]
    breaker_axis.step(times, [s for _, s, _ in timeline], where="post", color="tab:blue", lw=1.8)
    breaker_axis.set_yticks([0, 1, 2], ["closed", "half-open", "open"])
    breaker_axis.set_ylim(-0.35, 2.35)
    breaker_axis.set_ylabel("send breaker")
    level_axis.step(times, [lv for _, _, lv in timeline], where="post", color="tab:purple", lw=1.8)
    level_axis.set_yticks([0, 1, 2, 3], ["normal", "degraded", "severe", "emergency"])
    level_axis.set_ylim(-0.35, 3.35)
    level_axis.set_ylabel("degradation level")
    kinds = (
        ("send ok", "tab:green", "o", 4, lambda r: r.ok),
        ("send failed (error after retries)", "tab:red", "x", 14, lambda r: not r.ok and not r.rejected),
        ("send rejected (CircuitOpen, ...)", "tab:orange", "o", 6, lambda r: r.rejected),
    )  # fmt: skip
    handles: list[Any] = []
    for label, colour, marker, size, keep in kinds:
        points = [(r.start, r.latency * 1000) for r in records if keep(r)]
        if points:
            xs, ys = zip(*points, strict=True)
            latency_axis.scatter(xs, ys, s=size, color=colour, marker=marker, lw=0.8)
        handles.append(Line2D([], [], ls="", marker=marker, color=colour, label=label))
    latency_axis.set_yscale("symlog", linthresh=10)
    latency_axis.set_ylabel("send latency (ms)")
    latency_axis.set_xlabel("seconds since start")
    shown = [(start, length, label) for start, length, _, label in schedule if label]
    for number, (start, length, label) in enumerate(shown, 1):
        colour = _BAND_COLOURS[(number - 1) % len(_BAND_COLOURS)]
        for axis in axes:
            axis.axvspan(start, start + length, color=colour, alpha=0.35, lw=0)
        breaker_axis.text(
            start + length / 2, 1.03, str(number), transform=breaker_axis.get_xaxis_transform(),
            ha="center", va="bottom", fontsize=9, fontweight="bold",
        )  # fmt: skip
        handles.append(Patch(color=colour, alpha=0.6, label=f"{number}: {label}"))
    fig.suptitle("DWCP demo: alice -> bob through a chaos proxy (numbered bands: faults injected)")
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    rows = -(-len(handles) // 3)
    fig.tight_layout(rect=(0, 0.015 + 0.022 * rows, 1, 0.98))
    return fig


def save_timeline(
    path: str,
    timeline: list[tuple[float, int, int]],
    records: list[SendRecord],
    schedule: tuple[tuple[float, float, Fault | None, str], ...],
) -> str | None:
    """Draw :func:`timeline_figure` into the PNG ``path``; ``None`` without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415 - optional extra "demo"

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    fig = timeline_figure(timeline, records, schedule)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
