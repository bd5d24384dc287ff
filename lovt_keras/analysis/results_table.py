"""Result tables laid out like the paper's: methods as rows, tasks as columns.

A cell is ``"mean ± ci"`` in percent with one decimal (the paper's "46.0±0.1" style, see
the official ``results/generated/results_table_rsna.png``), the CI being the half-width
of :func:`lovt_keras.training.evaluation.confidence_interval`. Columns follow the paper's
task numbers where tasks have one, then the order in which the other tasks first appear;
rows follow the order in which the methods first appear.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

MISSING = ""


def format_cell(mean: float, ci: float | None, scale: float = 100.0, decimals: int = 1) -> str:
    """``"46.0 ± 0.1"``; the mean alone when ``ci`` is None or NaN (a single seed)."""
    if mean is None or not math.isfinite(mean):
        return "nan"
    text = f"{mean * scale:.{decimals}f}"
    if ci is not None and math.isfinite(ci):
        text += f" ± {ci * scale:.{decimals}f}"
    return text


def _column(result: Mapping) -> str:
    return str(result.get("label") or result["task"])


def results_table(
    results: Sequence[Mapping],
    scale: float = 100.0,
    decimals: int = 1,
    methods: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The table of task summaries.

    Args:
        results: dicts with ``method``, ``task`` (or ``label``, the column header),
            ``mean``, ``ci95`` and optionally ``number`` (paper task number, orders the
            columns) and ``failed_seeds`` (runs that learned nothing, shown as
            ``[k/n failed]`` after the cell, n = ``num_runs`` or the number of ``test``
            values), e.g. from ``evaluate_encoders``.
        scale: factor of the values (100: fractions to percent).
        decimals: digits after the point.
        methods: row order (default: order of first appearance).
        columns: column order (default: paper numbers first, then first appearance).

    Returns:
        ``DataFrame`` of strings, index ``method`` (rows), one column per task; a
        missing (method, task) pair is an empty string.

    Raises:
        ValueError: the same (method, task) twice, or a result without ``method``.
    """
    cells: dict[tuple[str, str], str] = {}
    seen_methods: list[str] = []
    numbered: dict[str, float] = {}
    order: list[str] = []
    for result in results:
        if "method" not in result:
            raise ValueError(f"result of task {result.get('task')!r} has no 'method'")
        method, column = str(result["method"]), _column(result)
        if (method, column) in cells:
            raise ValueError(f"two results for method {method!r} and task {column!r}")
        cell = format_cell(result["mean"], result.get("ci95"), scale, decimals)
        failed = result.get("failed_seeds") or []
        if failed:
            runs = result.get("num_runs") or len(result.get("test") or failed)
            cell += f" [{len(failed)}/{runs} failed]"
        cells[(method, column)] = cell
        if method not in seen_methods:
            seen_methods.append(method)
        if column not in order:
            order.append(column)
            if result.get("number") is not None:
                numbered[column] = float(result["number"])
    if columns is None:
        columns = sorted(order, key=lambda c: (c not in numbered, numbered.get(c, 0), order.index(c)))
    rows = list(methods) if methods is not None else seen_methods
    frame = pd.DataFrame(
        [[cells.get((m, c), MISSING) for c in columns] for m in rows],
        index=pd.Index(rows, name="method"),
        columns=list(columns),
    )
    return frame


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``frame`` (index as the first column)."""
    header = [frame.index.name or ""] + [str(c) for c in frame.columns]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    for index, row in frame.iterrows():
        lines.append(line([index, *row.tolist()]))
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, path_stem: str | os.PathLike) -> tuple[Path, Path]:
    """Writes ``<path_stem>.csv`` and ``<path_stem>.md``; returns both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    frame.to_csv(csv_path)
    md_path.write_text(to_markdown(frame))
    return csv_path, md_path
