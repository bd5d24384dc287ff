"""Per image-report pair: where each report sentence looks, as heatmaps over the image.

:func:`plot_attention_pair` draws one grid figure per pair (the image, its
attention-pooling weights over regions and, for each sentence, the cross-modal
alignment's attention of that sentence over the regions, upsampled to the image with
:func:`embedding_metrics.upsample_attention`, the finding's mask outlined where the
sentence names one); :func:`write_attention_html` puts a batch of such figures with
their report sentences into one self-contained HTML page (the PNGs embedded as base64,
no script, no external resource), viewable offline.
"""

from __future__ import annotations

import base64
import html
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lovt_keras.analysis.embedding_metrics import upsample_attention
from lovt_keras.analysis.plots import save_figure


def plot_attention_pair(image: np.ndarray, sentences: Sequence[str],
                        attention: np.ndarray | None, grid_shape: tuple[int, int],
                        path: str | os.PathLike, pooling_weights: np.ndarray | None = None,
                        masks: Sequence[np.ndarray | None] | None = None,
                        scores: Sequence[float | None] | None = None,
                        title: str = "", columns: int = 4) -> Path:
    """Writes the grid figure of one image-report pair as a PNG.

    Args:
        image: ``(H, W)`` pixels (any range; shown in gray).
        sentences: the report's sentences, one panel each (those with attention).
        attention: ``(S, N)`` attention of each sentence slot over the ``N = h * w``
            regions (rows of sentences beyond ``len(sentences)`` are ignored), or None
            (a model without the local losses: only the pooling panel).
        grid_shape: ``(h, w)``.
        path: the PNG to write.
        pooling_weights: ``(N,)`` image attention-pooling weights (a panel of its own).
        masks: per sentence, the ``(H, W)`` mask of the finding it names (outlined) or
            None.
        scores: per sentence, its grounding share (printed in the panel title) or None.
        title: the figure title.
        columns: panels per row.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = np.asarray(image, np.float32)
    shape = image.shape[:2]
    panels: list[tuple[str, np.ndarray | None, np.ndarray | None]] = [("image", None, None)]
    if pooling_weights is not None:
        panels.append(("attention pooling (image)",
                       upsample_attention(pooling_weights, grid_shape, shape), None))
    if attention is not None:
        for j, sentence in enumerate(sentences[: len(attention)]):
            label = sentence
            if scores is not None and scores[j] is not None:
                label = f"[{scores[j]:.0%} in mask] {sentence}"
            mask = masks[j] if masks is not None else None
            panels.append((label, upsample_attention(attention[j], grid_shape, shape), mask))
    cols = min(columns, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.4 * rows), squeeze=False)
    for ax, (label, heat, mask) in zip(axes.flat, panels):
        ax.imshow(image, cmap="gray")
        if heat is not None:
            ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=float(heat.max()) or 1.0)
        if mask is not None and np.any(mask):
            ax.contour(np.asarray(mask, np.float32), levels=[0.5], colors="white",
                       linewidths=1.0)
        ax.set_title("\n".join(textwrap.wrap(label, 34)[:4]), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, axes, len(panels), path, dpi=90)


def write_attention_html(pairs: Sequence[dict], path: str | os.PathLike,
                         title: str = "Region-sentence attention") -> Path:
    """Writes one self-contained HTML page showing several pairs.

    Args:
        pairs: dicts with ``png`` (path of the pair's figure), ``title`` and
            ``sentences`` (list of str), optionally ``scores`` (per sentence: a grounding
            share or None) and ``caption`` (a line of text).
        path: the HTML file to write.
        title: the page title.

    Returns:
        The written path. The figures are embedded as ``data:image/png;base64`` URIs, so
        the file alone is the page.
    """
    sections = []
    for pair in pairs:
        data = base64.b64encode(Path(pair["png"]).read_bytes()).decode("ascii")
        scores = pair.get("scores") or [None] * len(pair["sentences"])
        items = []
        for sentence, score in zip(pair["sentences"], scores):
            badge = "" if score is None else f' <b>[{score:.0%} of its attention in the mask]</b>'
            items.append(f"<li>{html.escape(sentence)}{badge}</li>")
        caption = html.escape(pair.get("caption", ""))
        sections.append(
            f'<section><h2>{html.escape(pair["title"])}</h2><p>{caption}</p>'
            f'<img alt="{html.escape(pair["title"])}" src="data:image/png;base64,{data}">'
            f"<ol start=\"0\">{''.join(items)}</ol></section>"
        )
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:1300px;margin:auto}"
        "img{max-width:100%}section{border-top:1px solid #ccc;padding:8px 0}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
