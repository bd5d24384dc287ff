"""Plots of training curves."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_loss_curves(histories: Mapping[str, Sequence[Mapping]], path: str | os.PathLike,
                     keys: Sequence[str] | None = None) -> Path:
    """Plots per-epoch losses of several runs, one panel per loss component.

    Args:
        histories: run name -> its ``metrics.jsonl`` records (dicts with ``epoch`` and
            the logged values).
        path: the PNG to write.
        keys: the components to plot (default: every ``*loss`` key that some run logs,
            training and validation).

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if keys is None:
        found = {k for records in histories.values() for r in records for k in r}
        keys = sorted(k for k in found if k.endswith("loss") and not k.startswith("val_"))
    if not keys:
        raise ValueError("no loss values to plot")
    colors = run_colors(len(histories))
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for color, (name, records) in zip(colors, histories.items()):
            for prefix, style in (("", "-"), ("val_", "--")):
                points = [(r["epoch"], r[prefix + key]) for r in records if prefix + key in r]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, color=color, marker="o", ms=3,
                            label=f"{name}{' (val)' if prefix else ''}")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch")
    # One legend for the figure, beside the panels: a run has one colour in every
    # panel, solid for training and dashed for validation.
    handles = [plt.Line2D([], [], color=color, marker="o", ms=3, label=name)
               for color, name in zip(colors, histories)]
    handles += [plt.Line2D([], [], color="black", ls="-", label="training"),
                plt.Line2D([], [], color="black", ls="--", label="validation")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    return save_figure(fig, axes, len(keys), path)


def run_colors(count: int) -> list[tuple[float, ...]]:
    """``count`` distinct RGBA colours: matplotlib's ``tab10`` up to 10 runs, ``tab20``
    up to 20, evenly spaced on ``hsv`` beyond (the default cycle repeats after 10)."""
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["hsv"](i / count) for i in range(count)]


def save_figure(fig, axes, used: int, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Hides the unused panels (those after the first ``used`` of ``axes``), writes the
    figure as a PNG (creating its folder), closes it and returns the path. A figure
    with a legend of its own (beside the panels) is saved widened to hold it."""
    import matplotlib.pyplot as plt

    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight" if fig.legends else None)
    plt.close(fig)
    return path
