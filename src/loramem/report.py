"""Results rows -> Markdown tables and PNG plots. Pure helpers that recipes and the datasheet reuse."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


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
              ylabel: str, logx: bool = False, logy: bool = False, hline: float | None = None,
              hline_label: str | None = None, errors: dict[str, Sequence[float]] | None = None,
              integer_x: bool = False, y_from_zero: bool = False) -> Path:
    """One PNG with a line per series (name -> (xs, ys)); `errors` (name -> y error per point) draws error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v"]
    for i, (name, (xs, ys)) in enumerate(series.items()):
        # distinct line styles and markers: equal curves (e.g. two merges at the same accuracy) stay visible
        style = dict(marker=markers[i % len(markers)], linestyle=styles[i % len(styles)], label=str(name),
                     markersize=10 - 3 * (i % 2), fillstyle="none" if i % 2 == 0 else "full")
        if errors and name in errors:
            ax.errorbar(list(xs), list(ys), yerr=list(errors[name]), capsize=3, **style)
        else:
            ax.plot(list(xs), list(ys), **style)
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
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1 or hline_label:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    plt.close(fig)
    return path


def bar_plot(path: Path, labels: Sequence[str], values: Sequence[float], title: str, ylabel: str,
             reference: Sequence[float] | None = None, reference_label: str = "paper",
             label: str = "this run") -> Path:
    """One PNG bar chart (optionally with a second bar per label, e.g. the paper's numbers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.4, 0.55 * len(labels) + 2), 4.6), dpi=120)
    xs = range(len(labels))
    w = 0.4 if reference is not None else 0.7
    ax.bar([x - (w / 2 if reference is not None else 0) for x in xs], list(values), width=w, label=label)
    if reference is not None:
        ax.bar([x + w / 2 for x in xs], list(reference), width=w, label=reference_label, alpha=0.7)
        ax.legend(fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([str(x) for x in labels], rotation=40, ha="right", fontsize=8)  # long names must not overlap
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    plt.close(fig)
    return path


def _save(fig, path: Path) -> None:
    """The PNG the HTML report embeds, and an SVG beside it (vector, for papers and zooming)."""
    fig.savefig(path)
    fig.savefig(path.with_suffix(".svg"))
