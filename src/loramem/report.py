"""Results rows -> Markdown tables and PNG/SVG plots. Pure helpers that recipes and the datasheet reuse.

Every plot says what its points are measured on (`n`, required) and draws 95% intervals where the recipe has
per-item data (loramem.intervals).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loramem.intervals import Interval


def markdown_table(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None,
                   fmt: dict[str, str] | None = None) -> str:
    """A Markdown table of `columns` from `rows` (fmt: column -> format spec, e.g. {'accuracy': '.3f'})."""
    fmt = fmt or {}
    head = list(headers or columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(format(v, fmt[c]) if c in fmt and isinstance(v, (int, float)) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def line_plot(path: Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str,
              ylabel: str, *, n: str, logx: bool = False, logy: bool = False, hline: float | None = None,
              hline_label: str | None = None, intervals: dict[str, Sequence[Interval | None]] | None = None,
              integer_x: bool = False, y_from_zero: bool = False) -> Path:
    """One PNG (and SVG) with a line per series (name -> (xs, ys)); `n` (what each point is measured on, e.g.
    "n = 40 facts per point") goes under the title; `intervals` (name -> a (lo, hi) per point) draws 95% bars.

    When every series has the same single x, each series is drawn as one point with its bar and its value
    written beside it, side by side: a line through one x says nothing and hides the interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    xs_all = {x for xs, _ in series.values() for x in xs}
    if len(xs_all) == 1:
        _points(ax, series, intervals or {})
        ax.set_xlabel(f"{xlabel} = {_num(next(iter(xs_all)))}")
        logx = integer_x = False
    else:
        _lines(ax, series, intervals or {})
        ax.set_xlabel(xlabel)
    if y_from_zero:  # a flat series on an axis zoomed to its own range looks like a trend
        ax.set_ylim(bottom=0)
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1, label=hline_label)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_title(_caption(title, n, any(_any(v) for v in (intervals or {}).values())), fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if (len(series) > 1 and len(xs_all) > 1) or hline_label:
        ax.legend(fontsize=8)
    return _finish(fig, path)


def _lines(ax, series: dict, intervals: dict) -> None:
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v"]
    for i, (name, (xs, ys)) in enumerate(series.items()):
        # distinct line styles and markers: equal curves (e.g. two merges at the same accuracy) stay visible
        style = dict(marker=markers[i % len(markers)], linestyle=styles[i % len(styles)], label=str(name),
                     markersize=10 - 3 * (i % 2), fillstyle="none" if i % 2 == 0 else "full")
        if intervals.get(name) is not None:
            ax.errorbar(list(xs), list(ys), yerr=_yerr(ys, intervals[name]), capsize=3, **style)
        else:
            ax.plot(list(xs), list(ys), **style)


def _points(ax, series: dict, intervals: dict) -> None:
    """One point per series at its own position, with its interval bar and its value (and interval) written."""
    for i, (name, (_, ys)) in enumerate(series.items()):
        y = list(ys)[0]
        ci = (intervals.get(name) or [None])[0]
        ax.errorbar([i], [y], yerr=_yerr([y], [ci]), marker="o", markersize=8, linestyle="none", capsize=5)
        text = f"{_num(y)}" + (f"  [{_num(ci[0])}, {_num(ci[1])}]" if ci is not None else "")
        ax.annotate(text, (i, y), textcoords="offset points", xytext=(10, 0), va="center", fontsize=9)
    ax.set_xticks(range(len(series)))
    ax.set_xticklabels([str(k) for k in series])
    ax.set_xlim(-0.6, len(series) - 0.4 + 0.6)  # room for the value written right of the last point


def bar_plot(path: Path, labels: Sequence[str], values: Sequence[float], title: str, ylabel: str, *, n: str,
             reference: Sequence[float] | None = None, reference_label: str = "paper", label: str = "this run",
             intervals: Sequence[Interval | None] | None = None,
             reference_intervals: Sequence[Interval | None] | None = None) -> Path:
    """One PNG (and SVG) bar chart, optionally with a second bar per label (e.g. the base model alone); `n` goes
    under the title, `intervals` / `reference_intervals` (a (lo, hi) per bar) draw 95% bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.4, 0.55 * len(labels) + 2), 4.6), dpi=120)
    xs = range(len(labels))
    w = 0.4 if reference is not None else 0.7
    bars = dict(capsize=3, error_kw={"elinewidth": 1})
    ax.bar([x - (w / 2 if reference is not None else 0) for x in xs], list(values), width=w, label=label,
           yerr=_yerr(values, intervals) if intervals is not None else None, **bars)
    if reference is not None:
        ax.bar([x + w / 2 for x in xs], list(reference), width=w, label=reference_label, alpha=0.7,
               yerr=_yerr(reference, reference_intervals) if reference_intervals is not None else None, **bars)
        ax.legend(fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([str(x) for x in labels], rotation=40, ha="right", fontsize=8)  # long names must not overlap
    ax.set_title(_caption(title, n, _any(intervals) or _any(reference_intervals)), fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig, path)


def _caption(title: str, n: str, bars: bool) -> str:
    """The title, then what each point is measured on, and what the bars are when there are any."""
    return f"{title}\n{n}" + ("; bars: 95% CI" if bars else "")


def _any(cis) -> bool:
    return any(ci is not None for ci in cis or [])


def _yerr(ys: Sequence[float], cis: Sequence[Interval | None]) -> list[list[float]]:
    """matplotlib's asymmetric error bars from (lo, hi) intervals; a missing interval draws no bar (NaN)."""
    nan = float("nan")
    low = [max(0.0, y - ci[0]) if ci is not None and y is not None else nan for y, ci in zip(ys, cis, strict=True)]
    high = [max(0.0, ci[1] - y) if ci is not None and y is not None else nan for y, ci in zip(ys, cis, strict=True)]
    return [low, high]


def _num(x: float) -> str:
    """A value written on a plot: three significant digits, whole numbers from 100 up (no 1e+03)."""
    if not isinstance(x, float):
        return str(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, path: Path) -> Path:
    """The PNG the HTML report embeds, and an SVG beside it (vector, text kept as text: searchable, editable)."""
    import matplotlib
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path
