"""The three chart shapes of lab reports, drawn with matplotlib's Agg backend into PNG files.

- `box`: a distribution per group (order: accuracy over permutations, one box per demo set);
- `curves`: mean accuracy against a number, one line per series, with min-max bands (shots);
- `bars`: mean accuracy per condition with each seed's value as a dot (labels, select).
"""

from __future__ import annotations

from pathlib import Path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    return plt, fig, ax


def _save(plt, fig, ax, path: Path, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def box(groups: dict[str, list[float]], path: Path, title: str, ylabel: str = "accuracy",
        marks: dict[str, dict[str, float]] | None = None) -> None:
    """One box per group; `marks` adds labelled points per group (e.g. the GlobalE choice)."""
    plt, fig, ax = _figure()
    names = list(groups)
    ax.boxplot([groups[n] for n in names], tick_labels=names)
    colours = {}  # one colour per kind of mark, the same in every box, so the legend holds for all
    for position, name in enumerate(names, start=1):
        for label, value in (marks or {}).get(name, {}).items():
            first = label not in colours
            colours.setdefault(label, f"C{len(colours)}")
            ax.scatter([position], [value], marker="D" if "global" in label.lower() else "^", zorder=3,
                       color=colours[label], label=label if first else None)
    if marks:
        ax.legend(fontsize=8)
    _save(plt, fig, ax, path, title, ylabel)


def curves(series: dict[str, dict[int, list[float]]], path: Path, title: str, xlabel: str,
           ylabel: str = "accuracy", log_x: bool = False) -> None:
    """series: name -> {x: values over seeds}; plots the mean with a min-max band."""
    plt, fig, ax = _figure()
    if log_x:
        ax.set_xscale("log")
    for name, points in series.items():
        xs = sorted(points)
        means = [sum(points[x]) / len(points[x]) for x in xs]
        ax.plot(xs, means, marker="o", label=name)
        ax.fill_between(xs, [min(points[x]) for x in xs], [max(points[x]) for x in xs], alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.legend()
    _save(plt, fig, ax, path, title, ylabel)


def bars(groups: dict[str, list[float]], path: Path, title: str, ylabel: str = "accuracy") -> None:
    plt, fig, ax = _figure()
    names = list(groups)
    means = [sum(groups[n]) / len(groups[n]) for n in names]
    ax.bar(range(len(names)), means, color="#8fb3d9")
    for position, name in enumerate(names):
        ax.scatter([position] * len(groups[name]), groups[name], color="#1f3b5a", zorder=3, s=12)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    _save(plt, fig, ax, path, title, ylabel)
