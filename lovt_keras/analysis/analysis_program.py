"""``lovt.analyze``: look inside a pretrained model on a held-out SynthCXR split.

Registered by ``tools.gin_registry``; ``experiments/analysis/*.gin`` include the
pretraining file of the checkpoint (so that the same model is built) and run

    python -m tools.run --gin experiments/analysis/synthcxr_lovt.gin \\
        --bind "CHECKPOINT = 'runs/quickstart/pretrain/LoVT/run'"

For the checkpoint and, as the comparison, a randomly initialized model of the same
configuration, it writes into the run directory:

- ``embedding_metrics.csv`` / ``.png``: the official embedding diagnostics
  (``src/analysis/embedding_analysis.py``) of the encoder features ``y``, the projected
  local and global embeddings ``z``, the alignment distances and the local modality
  assignment (:mod:`embedding_metrics`);
- ``grounding.csv`` (one row per sentence that names a finding, and per image for the
  attention pooling) and ``grounding_summary.csv``: the share of each attention map
  inside the finding's mask and the pointing-game hit, against uniform attention;
- ``retrieval.csv``: image->report and report->image recall@1/5/10;
- ``zero_shot.csv``: AUC per finding from a positive and a negative prompt sentence;
- ``spatial_smoothness.csv`` / ``.png``: cosine similarity of regions vs grid distance;
- ``attention/<model>/pair_*.png`` and ``attention_<model>.html``: each sentence's
  attention over the image for the first pairs with findings (:mod:`attention_maps`);
- ``summary.json``: the headline numbers (also printed).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from lovt_keras import keys
from lovt_keras.analysis import embedding_metrics as em
from lovt_keras.analysis import model_outputs as mo
from lovt_keras.analysis.attention_maps import plot_attention_pair, write_attention_html
from lovt_keras.files import write_json

# One positive and one negative prompt per SynthCXR finding class, phrased as the
# generated reports phrase them (lovt_keras/data/synthcxr_reports.py).
PROMPTS = {
    "opacity": ("There is airspace opacity.", "There is no focal airspace opacity."),
    "pneumothorax": ("There is a pneumothorax.", "There is no pneumothorax."),
    "nodule": ("There is a pulmonary nodule.", "There is no pulmonary nodule."),
    "effusion": ("There is a pleural effusion.", "There is no pleural effusion."),
    "cardiomegaly": ("The heart is enlarged.", "Heart size is normal."),
    "foreign_object": ("A foreign body is seen.", "No radiopaque foreign body."),
}
CHECKPOINT_FILE = Path("checkpoints") / "last.npz"
ALIGNMENT = "alignment"
POOLING = "pooling"


@dataclasses.dataclass
class AnalysisResult:
    """What ``lovt.analyze`` returns: the run directory and the headline numbers."""

    output_dir: Path | None
    summary: dict[str, Any]


def analyze(model: Callable[[], keras.Model], train_data, val_data=None,
            output_dir: str | os.PathLike | None = None, verbose: int = 1,
            checkpoint: str | None = None, data_path: str | None = None,
            split: str = "test", name: str = "pretrained", random_baseline: bool = True,
            random_seed: int = 1, num_pairs: int = 8, max_batches: int | None = None,
            prompts: Mapping[str, tuple[str, str]] | None = None) -> AnalysisResult:
    """The analysis program (see the module docstring for what it writes).

    Args:
        model: zero-argument callable building the pretrainer of the checkpoint's
            configuration (``lovt.run.model``, from the included pretraining file).
        train_data: the evaluation batches of the split to analyze
            (``PretrainingBatches`` with ``training=False``: fixed order, no
            augmentation); their ``batch_rows`` map samples to dataset rows.
        val_data: unused; must be None.
        output_dir: where everything is written (None: nothing is written).
        verbose: print the summary when > 0.
        checkpoint: a pretraining run directory (its ``checkpoints/last.npz``) or a
            checkpoint ``.npz``; None analyzes only the random model.
        data_path: the prepared SynthCXR folder of ``train_data`` (its ``findings``,
            ``masks`` and ``sentences`` give the grounding targets and labels).
        split: the split of ``data_path`` that ``train_data`` reads.
        name: the checkpoint's name in the tables.
        random_baseline: also analyze a randomly initialized model of the same
            configuration (seed ``random_seed``), named ``"random init"``.
        num_pairs: image-report pairs (with findings) drawn per model.
        max_batches: analyze only the first batches (None: all).
        prompts: finding -> (positive, negative) prompt sentences (default ``PROMPTS``).
    """
    from lovt_keras.training.checkpoints import load_checkpoint, read_checkpoint_state
    from lovt_keras.training.data import load_prepared_dataset

    if val_data is not None:
        raise ValueError("lovt.analyze reads one split (lovt.run.train_data); leave "
                         "lovt.run.validation_data unset")
    if data_path is None:
        raise ValueError("lovt.analyze needs data_path, the SynthCXR folder of train_data")
    if checkpoint is None and not random_baseline:
        raise ValueError("nothing to analyze: give a checkpoint or random_baseline=True")
    prompts = dict(PROMPTS if prompts is None else prompts)
    output_dir = None if output_dir is None else Path(output_dir)
    dataset = load_prepared_dataset(os.fspath(data_path))[0][split]
    num_batches = len(train_data) if max_batches is None else min(max_batches, len(train_data))
    rows = np.concatenate([train_data.batch_rows(i, epoch=0)[1] for i in range(num_batches)])
    targets = _targets(dataset, rows, int(train_data.image_size))
    batches = [train_data[i] for i in range(num_batches)]

    models: dict[str, keras.Model] = {}
    if checkpoint is not None:
        path = _checkpoint_path(checkpoint)
        _check_vocabulary(Path(checkpoint), train_data.tokenizer)
        keras.utils.set_random_seed(random_seed)
        pretrained = _build(model, batches[0])
        load_checkpoint(path, pretrained, optimizer=False, restore_rng=False)
        if not read_checkpoint_state(path).finished:
            print(f"warning: {path} is the checkpoint of an unfinished run", file=sys.stderr)
        models[name] = pretrained
    if random_baseline:
        keras.utils.set_random_seed(random_seed)
        models["random init"] = _build(model, batches[0])

    tables: dict[str, list[dict]] = {k: [] for k in (
        "embedding_metrics", "grounding", "retrieval", "zero_shot", "spatial_smoothness")}
    pairs: dict[str, list[dict]] = {}
    for model_name, built in models.items():
        outputs = mo.collect_outputs(built, batches)
        grid = mo.grid_shape_of(built)
        tables["embedding_metrics"] += [dict(model=model_name, **r) for r in diagnostics(outputs)]
        tables["grounding"] += [dict(model=model_name, **r)
                                for r in grounding_rows(outputs, targets, grid)]
        if keys.IMAGE_GLOBAL in outputs:
            recall = em.retrieval_recall(outputs[keys.IMAGE_GLOBAL], outputs[keys.REPORT_GLOBAL])
            tables["retrieval"] += [dict(model=model_name, metric=k, value=v)
                                    for k, v in recall.items()]
            tables["zero_shot"] += [dict(model=model_name, **r) for r in _zero_shot(
                built, train_data.tokenizer, outputs, targets, prompts,
                batches[0][keys.IMAGES].shape[1:])]
        for space, key in (("y_regions", mo.IMAGE_FEATURES),
                           ("z_regions", keys.REGION_EMBEDDINGS)):
            if key in outputs:
                distances, similarity = em.spatial_smoothness(outputs[key], grid)
                tables["spatial_smoothness"] += [
                    dict(model=model_name, space=space, grid_distance=float(d),
                         cosine_similarity=float(s)) for d, s in zip(distances, similarity)]
        if output_dir is not None:
            pairs[model_name] = _draw_pairs(outputs, targets, grid, num_pairs,
                                            output_dir / "attention" / _slug(model_name))
    summary = _summary(tables)
    if output_dir is not None:
        _write(output_dir, tables, pairs, summary)
    if verbose:
        _print_summary(summary, output_dir)
    return AnalysisResult(output_dir, summary)


# ------------------------------------------------------------------ setup


def _checkpoint_path(checkpoint: str | os.PathLike) -> Path:
    path = Path(checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no checkpoint; CHECKPOINT must be a pretraining run directory "
            f"(with {CHECKPOINT_FILE}) or a checkpoint .npz")
    return path


def _check_vocabulary(run_dir: Path, tokenizer) -> None:
    """The run's ``vocab.txt`` must be the tokenizer's: another vocabulary would feed
    the report encoder ids it was not trained on."""
    from lovt_keras.training.pretrain import VOCABULARY_FILE

    vocab = run_dir / VOCABULARY_FILE if run_dir.is_dir() else None
    if vocab is None or not vocab.is_file():
        return
    stored = vocab.read_text(encoding="utf-8").split()
    if stored != list(tokenizer.vocabulary):
        raise ValueError(f"{vocab}: the checkpoint's vocabulary differs from the analysis "
                         "data's tokenizer; analyze it with its own pretraining data")


def _build(factory: Callable[[], keras.Model], batch: dict) -> keras.Model:
    built = factory()
    built({k: v[:2] for k, v in batch.items()}, training=False)
    return built


@dataclasses.dataclass
class _Target:
    """What SynthCXR knows about one analyzed sample."""

    image: np.ndarray  # (H, W) uint8 at the model's image size
    sentences: list[str]
    labels: np.ndarray  # (C,) bool, finding classes present
    sentence_masks: dict[int, tuple[np.ndarray, list[str]]]  # slot -> (mask, kinds)
    finding_mask: np.ndarray | None  # union of all findings


def _targets(dataset, rows: np.ndarray, image_size: int) -> list[_Target]:
    """Per analyzed row: image, sentences, class labels and the mask of each finding,
    per sentence that names it (``findings[k]['sentence_ids']``); a finding's mask is
    its class mask inside its box (two findings of a class never share a box)."""
    from lovt_keras.data.images import pad_and_resize
    from lovt_keras.data.synthcxr import FINDING_CLASSES, decode_masks

    table = dataset.with_format("numpy", columns=["image", "masks"])
    texts = dataset.select_columns(["sentences", "findings"])
    targets = []
    for row in rows.tolist():
        item = table[row]
        image, class_masks = item["image"], decode_masks(item["masks"])  # (C, H, W)
        scale = 1.0
        if image.shape != (image_size, image_size):
            scale = image_size / max(image.shape)
            image = pad_and_resize(image.astype(np.float32), image_size)[0]
            class_masks = np.stack([pad_and_resize(m.astype(np.float32), image_size)[0] > 0.5
                                    for m in class_masks])
        findings = json.loads(texts[row]["findings"])
        labels = np.zeros(len(FINDING_CLASSES), bool)
        sentence_masks: dict[int, tuple[np.ndarray, list[str]]] = {}
        union = np.zeros(class_masks.shape[1:], bool)
        for finding in findings:
            c = FINDING_CLASSES.index(finding["kind"])
            labels[c] = True
            x, y, w, h = (v * scale for v in finding["box"])
            box = np.zeros_like(union)
            box[int(y): int(np.ceil(y + h)), int(x): int(np.ceil(x + w))] = True
            mask = box & (class_masks[c] > 0)
            union |= mask
            for j in finding["sentence_ids"]:
                previous, kinds = sentence_masks.get(j, (np.zeros_like(union), []))
                sentence_masks[j] = (previous | mask, kinds + [finding["kind"]])
        targets.append(_Target(np.asarray(image), list(texts[row]["sentences"]), labels,
                               sentence_masks, union if union.any() else None))
    return targets


# ------------------------------------------------------------------ metrics


def diagnostics(outputs: Mapping[str, np.ndarray]) -> list[dict]:
    """Rows ``{space, metric, value}`` of the embedding diagnostics of collected
    outputs (l2-normalized, as the official ``EmbeddingMetrics.update``)."""
    mask = outputs[keys.SENTENCE_MASK]
    rows: list[dict] = []

    def add(space, values):
        rows.extend(dict(space=space, metric=k, value=float(v)) for k, v in values.items())

    local = {"y_regions": (mo.IMAGE_FEATURES, None),
             "y_sentences": (mo.SENTENCE_FEATURES, mask),
             "z_regions": (keys.REGION_EMBEDDINGS, None),
             "z_sentences": (keys.SENTENCE_EMBEDDINGS, mask)}
    for space, (key, local_mask) in local.items():
        if key not in outputs:
            continue
        x = em.l2_normalize(outputs[key])
        valid = np.ones(x.shape[:2], bool) if local_mask is None else local_mask
        add(space, em.channel_std(x, local_mask))
        add(space, {"uniformity": em.uniformity(x[valid]),
                    "per_sample_uniformity": em.local_uniformity(x, local_mask)})
    for space, key in (("z_image_global", keys.IMAGE_GLOBAL), ("z_report_global", keys.REPORT_GLOBAL)):
        if key in outputs:
            x = em.l2_normalize(outputs[key])
            add(space, {**em.channel_std(x), "uniformity": em.uniformity(x)})
    norm = {k: em.l2_normalize(v) for k, v in outputs.items()
            if k in (keys.REGION_EMBEDDINGS, keys.SENTENCE_EMBEDDINGS, keys.REPORT_TO_IMAGE,
                     keys.IMAGE_TO_REPORT, keys.IMAGE_GLOBAL, keys.REPORT_GLOBAL)}
    if keys.REPORT_TO_IMAGE in norm:
        add("alignment", {
            "dist_region_to_report_to_image": em.pair_distance(
                norm[keys.REGION_EMBEDDINGS], norm[keys.REPORT_TO_IMAGE]),
            "dist_sentence_to_image_to_report": em.pair_distance(
                norm[keys.SENTENCE_EMBEDDINGS], norm[keys.IMAGE_TO_REPORT], mask),
        })
        add("z_regions||z_sentences", em.modality_assignment(
            norm[keys.REGION_EMBEDDINGS], norm[keys.SENTENCE_EMBEDDINGS], None, mask))
    if keys.IMAGE_GLOBAL in norm:
        add("alignment", {"dist_image_global_to_report_global": em.pair_distance(
            norm[keys.IMAGE_GLOBAL], norm[keys.REPORT_GLOBAL])})
    return rows


def grounding_rows(outputs: Mapping[str, np.ndarray], targets: list[_Target],
                   grid: tuple[int, int]) -> list[dict]:
    """One row per (sample, sentence naming a finding) for the alignment attention and
    per sample with findings for the attention pooling (:func:`em.grounding_score`)."""
    rows = []
    attention = outputs.get(mo.SENTENCE_ATTENTION)
    pooling = outputs.get(mo.POOLING_WEIGHTS)
    mask = outputs[keys.SENTENCE_MASK]
    for index, target in enumerate(targets):
        if attention is not None:
            for slot, (finding_mask, kinds) in sorted(target.sentence_masks.items()):
                if slot >= mask.shape[1] or not mask[index, slot] or not finding_mask.any():
                    continue  # a sentence the tokenizer dropped, or a finding not drawn
                rows.append(dict(source=ALIGNMENT, sample=index, sentence=slot,
                                 kinds="+".join(sorted(set(kinds))),
                                 **em.grounding_score(attention[index, slot], finding_mask, grid)))
        if pooling is not None and target.finding_mask is not None:
            kinds = sorted({k for _, ks in target.sentence_masks.values() for k in ks})
            rows.append(dict(source=POOLING, sample=index, sentence=-1, kinds="+".join(kinds),
                             **em.grounding_score(pooling[index], target.finding_mask, grid)))
    return rows


def _zero_shot(model, tokenizer, outputs, targets, prompts, image_shape) -> list[dict]:
    from lovt_keras.data.synthcxr import FINDING_CLASSES

    names = [n for n in FINDING_CLASSES if n in prompts]
    positive = mo.report_embeddings(model, tokenizer, [prompts[n][0] for n in names], image_shape)
    negative = mo.report_embeddings(model, tokenizer, [prompts[n][1] for n in names], image_shape)
    labels = np.stack([t.labels for t in targets])[:, [FINDING_CLASSES.index(n) for n in names]]
    auc = em.zero_shot_auc(outputs[keys.IMAGE_GLOBAL], positive, negative, labels)
    return [dict(finding=n, auc=float(a), positives=int(labels[:, i].sum()),
                 negatives=int((~labels[:, i]).sum())) for i, (n, a) in enumerate(zip(names, auc))]


def summarize_grounding(rows: list[dict]) -> list[dict]:
    """Means per (model, source, finding kind) and over all kinds of ``grounding`` rows:
    share, uniform share, their ratio, hit rate and random hit rate."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        for kind in ("all", row["kinds"]):
            groups.setdefault((row["model"], row["source"], kind), []).append(row)
    summary = []
    for (model, source, kind), members in groups.items():
        share = float(np.mean([r["share"] for r in members]))
        uniform = float(np.mean([r["uniform_share"] for r in members]))
        summary.append(dict(
            model=model, source=source, kinds=kind, count=len(members), share=share,
            uniform_share=uniform, share_over_uniform=share / uniform if uniform else float("nan"),
            hit_rate=float(np.mean([r["hit"] for r in members])),
            random_hit_rate=float(np.mean([r["random_hit_rate"] for r in members]))))
    return sorted(summary, key=lambda r: (r["model"], r["source"], r["kinds"] != "all", r["kinds"]))


def _summary(tables: dict[str, list[dict]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for row in summarize_grounding(tables["grounding"]):
        if row["kinds"] == "all":
            summary.setdefault(row["model"], {})[f"grounding_{row['source']}"] = {
                k: row[k] for k in ("count", "share", "uniform_share", "share_over_uniform",
                                    "hit_rate", "random_hit_rate")}
    for row in tables["retrieval"]:
        summary.setdefault(row["model"], {})[row["metric"]] = row["value"]
    for row in tables["zero_shot"]:
        summary.setdefault(row["model"], {}).setdefault("zero_shot_auc", {})[row["finding"]] = row["auc"]
    return summary


# ------------------------------------------------------------------ outputs


def _draw_pairs(outputs, targets, grid, num_pairs: int, folder: Path) -> list[dict]:
    attention = outputs.get(mo.SENTENCE_ATTENTION)
    pooling = outputs.get(mo.POOLING_WEIGHTS)
    mask = outputs[keys.SENTENCE_MASK]
    chosen = [i for i, t in enumerate(targets) if t.finding_mask is not None][:num_pairs]
    pairs = []
    for index in chosen:
        target = targets[index]
        kept = int(mask[index].sum())
        sentences = target.sentences[:kept]
        masks, scores = [], []
        for slot in range(kept):
            finding_mask = target.sentence_masks.get(slot, (None, []))[0]
            masks.append(finding_mask)
            score = None
            if attention is not None and finding_mask is not None and finding_mask.any():
                score = em.grounding_score(attention[index, slot], finding_mask, grid)["share"]
            scores.append(score)
        png = plot_attention_pair(
            target.image, sentences, None if attention is None else attention[index, :kept],
            grid, folder / f"pair_{index:04d}.png",
            pooling_weights=None if pooling is None else pooling[index], masks=masks,
            scores=scores, title=f"sample {index}")
        pairs.append(dict(png=png, title=f"sample {index}", sentences=sentences, scores=scores,
                          caption="white outline: the finding the sentence names"))
    return pairs


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _write(output_dir: Path, tables, pairs, summary) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    for table, rows in tables.items():
        _write_csv(output_dir / f"{table}.csv", rows)
    _write_csv(output_dir / "grounding_summary.csv", summarize_grounding(tables["grounding"]))
    for model_name, model_pairs in pairs.items():
        if model_pairs:
            write_attention_html(model_pairs, output_dir / f"attention_{_slug(model_name)}.html",
                                 title=f"Region-sentence attention: {model_name}")
    _plot_smoothness(tables["spatial_smoothness"], output_dir / "spatial_smoothness.png")
    _plot_diagnostics(tables["embedding_metrics"], output_dir / "embedding_metrics.png")
    write_json(output_dir / "summary.json", summary)


def _plot_smoothness(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in dict.fromkeys((r["model"], r["space"]) for r in rows):
        points = [(r["grid_distance"], r["cosine_similarity"]) for r in rows
                  if (r["model"], r["space"]) == key]
        ax.plot(*zip(*points), marker="o", ms=3, label=f"{key[0]}: {key[1]}")
    ax.set_xlabel("distance on the region grid (cells)")
    ax.set_ylabel("mean cosine similarity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_diagnostics(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("ch_std", "uniformity")
    models = list(dict.fromkeys(r["model"] for r in rows))
    spaces = list(dict.fromkeys(r["space"] for r in rows if r["metric"] in metrics))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    width = 0.8 / len(models)
    for ax, metric in zip(axes.flat, metrics):
        for m, model_name in enumerate(models):
            values = {r["space"]: r["value"] for r in rows
                      if r["model"] == model_name and r["metric"] == metric}
            xs = np.arange(len(spaces)) + m * width
            ax.bar(xs, [values.get(s, np.nan) for s in spaces], width, label=model_name)
        ax.set_xticks(np.arange(len(spaces)) + 0.4 - width / 2)
        ax.set_xticklabels(spaces, rotation=30, ha="right", fontsize=7)
        ax.set_title(metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_summary(summary: dict, output_dir: Path | None) -> None:
    for model_name, values in summary.items():
        for source in (ALIGNMENT, POOLING):
            g = values.get(f"grounding_{source}")
            if g:
                print(f"{model_name}: {source} attention in the finding's mask "
                      f"{g['share']:.3f} vs uniform {g['uniform_share']:.3f} "
                      f"(x{g['share_over_uniform']:.2f}), pointing hit rate "
                      f"{g['hit_rate']:.3f} vs random {g['random_hit_rate']:.3f} "
                      f"over {g['count']}", flush=True)
        recall = {k: v for k, v in values.items() if "recall" in k}
        if recall:
            print(f"{model_name}: " + ", ".join(f"{k} {v:.3f}" for k, v in recall.items()),
                  flush=True)
        if "zero_shot_auc" in values:
            print(f"{model_name}: zero-shot AUC " + ", ".join(
                f"{k} {v:.3f}" for k, v in values["zero_shot_auc"].items()), flush=True)
    if output_dir is not None:
        print(f"analysis written to {output_dir}", flush=True)
