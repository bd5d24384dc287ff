"""Results of a study: several methods, each pretrained with several seeds, evaluated on
the same tasks; mean ± 95 % interval over the pretraining seeds, a table and a bar chart.

A study evaluates one encoder per (method, pretraining seed); the evaluation names
them ``"<method> #<seed>"`` (:func:`encoder_name`). Each encoder's score on a task is the
mean over its probe seeds (the localized-evaluation protocol); a method's score is the
mean of its encoders' scores, with the interval
``1.96 * std(ddof=1) / sqrt(number of pretraining seeds)`` — the spread that a reader
re-running the pretraining would see. A method with one pretraining seed (and an encoder
without pretraining, such as a random initialization) keeps the interval over its probe
seeds, as in a single evaluation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lovt_keras.analysis.plots import save_figure

CI_Z = 1.96
_SEEDED = re.compile(r"^(?P<method>.+) #(?P<seed>-?\d+)$")


def encoder_name(method: str, seed: int) -> str:
    """The evaluation row of the encoder of ``method`` pretrained with ``seed``."""
    return f"{method} #{int(seed)}"


def split_encoder_name(name: str) -> tuple[str, int | None]:
    """``("LoVT", 2)`` for ``"LoVT #2"``; ``(name, None)`` for an unseeded encoder."""
    match = _SEEDED.match(name)
    if match is None:
        return name, None
    return match.group("method"), int(match.group("seed"))


def aggregate_over_seeds(results: Sequence[Mapping]) -> list[dict]:
    """One summary per (method, task) from per-encoder task summaries.

    Args:
        results: task summaries with ``method`` (an encoder name, see
            :func:`encoder_name`), ``task``, ``mean``, ``ci95``, ``test`` (per probe
            seed), ``learning_rate`` and optionally ``label``, ``number``, ``metric``,
            ``failed_seeds`` (e.g. from ``evaluate_encoders``).

    Returns:
        Dicts with ``method``, ``task``, ``label``, ``number``, ``metric``, ``mean``,
        ``ci95``, ``pretraining_seeds``, ``encoder_means`` (one per pretraining seed),
        ``learning_rates`` (the probe rate chosen for each encoder), ``probe_values``
        (per encoder, per probe seed), ``failed_seeds`` (``"#<pretraining seed>/<probe
        seed>"`` of runs that learned nothing) and ``num_runs``; in the order in which
        methods and tasks first appear. Ready for ``results_table``.
    """
    groups: dict[tuple[str, str], list[tuple[int | None, Mapping]]] = {}
    for result in results:
        method, seed = split_encoder_name(str(result["method"]))
        groups.setdefault((method, str(result["task"])), []).append((seed, result))
    out = []
    for (method, task), members in groups.items():
        seeds = [seed for seed, _ in members]
        if len(members) > 1 and None in seeds:
            raise ValueError(f"method {method!r} has seeded and unseeded encoders on {task!r}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"method {method!r} has two encoders with the same seed on {task!r}")
        first = members[0][1]
        means = [float(r["mean"]) for _, r in members]
        if len(members) == 1:
            mean, ci = means[0], first.get("ci95")
        else:
            values = np.asarray(means, np.float64)
            mean = float(values.mean())
            ci = float(CI_Z * values.std(ddof=1) / np.sqrt(values.size))
        failed = [
            f"#{seed}/{probe}" if seed is not None else str(probe)
            for seed, r in members for probe in (r.get("failed_seeds") or [])
        ]
        out.append({
            "method": method,
            "task": task,
            "label": first.get("label"),
            "number": first.get("number"),
            "metric": first.get("metric"),
            "mean": mean,
            "ci95": ci,
            "pretraining_seeds": seeds,
            "encoder_means": means,
            "learning_rates": [r.get("learning_rate") for _, r in members],
            "probe_values": [list(r.get("test") or []) for _, r in members],
            "failed_seeds": failed,
            "num_runs": sum(len(r.get("test") or []) for _, r in members),
        })
    return out


def plot_study(results: Sequence[Mapping], path: str | os.PathLike, scale: float = 100.0,
               title: str | None = None) -> Path:
    """A bar chart, one panel per task, one bar per method with its 95 % interval and
    the per-pretraining-seed scores as dots.

    Args:
        results: summaries from :func:`aggregate_over_seeds`.
        path: the PNG to write.
        scale: factor of the values (100: fractions to percent).
        title: figure title.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks: list[str] = []
    methods: list[str] = []
    for r in results:
        column = str(r.get("label") or r["task"])
        if column not in tasks:
            tasks.append(column)
        if r["method"] not in methods:
            methods.append(r["method"])
    if not tasks:
        raise ValueError("no results to plot")
    by_cell = {(str(r.get("label") or r["task"]), r["method"]): r for r in results}
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    width = max(4.0, 0.45 * len(methods) + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.4 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes.flat, tasks):
        for x, method in enumerate(methods):
            r = by_cell.get((task, method))
            if r is None:
                continue
            ci = r.get("ci95")
            error = None if ci is None or not np.isfinite(ci) else ci * scale
            ax.bar(x, r["mean"] * scale, yerr=error, capsize=3,
                   color=colors[x % len(colors)], alpha=0.8)
            points = r.get("encoder_means") or []
            if len(points) > 1:
                ax.plot([x] * len(points), np.asarray(points) * scale, "k.", ms=4)
        ax.set_title(task, fontsize=9)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, axes, len(tasks), path)
