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
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, records in histories.items():
            for prefix, style in (("", "-"), ("val_", "--")):
                points = [(r["epoch"], r[prefix + key]) for r in records if prefix + key in r]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, marker="o", ms=3,
                            label=f"{name}{' (val)' if prefix else ''}")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    return save_figure(fig, axes, len(keys), path)


def save_figure(fig, axes, used: int, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Hides the unused panels (those after the first ``used`` of ``axes``), writes the
    figure as a PNG (creating its folder), closes it and returns the path."""
    import matplotlib.pyplot as plt

    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
