"""The quickstart: SynthCXR -> LoVT and global-only pretraining -> localized evaluation.

One call runs the whole path offline on a CPU: it generates (or reuses) SynthCXR,
pretrains LoVT and a global-only (ConVIRT-style) baseline for the same fixed number
of steps, evaluates their frozen image encoders and a randomly initialized one with
linear segmentation probes on conv5 (pooled Dice, several probe seeds), and writes the
comparison table and loss-curve plots to the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import keras
import keras_hub

from lovt_keras.analysis.plots import plot_loss_curves
from lovt_keras.analysis.results_table import results_table, to_markdown, write_table
from lovt_keras.data.image_augment import EvalTransform
from lovt_keras.data.pretraining_dataset import PretrainingBatches, synthcxr_tokenizer
from lovt_keras.data.synthcxr import load_stats, load_synthcxr
from lovt_keras.models import VARIANTS, BertReportEncoder, LoVTPretrainer, ResNetImageEncoder
from lovt_keras.training.evaluation import evaluate_encoders, from_checkpoint, random_init
from lovt_keras.training.pretrain import pretrain
from lovt_keras.training.tasks import synth_task


@dataclasses.dataclass
class QuickstartConfig:
    """Sizes of the quickstart; the defaults fit about 15 minutes on a 2-core CPU.

    The image side stays at 224 px so that conv5 is the paper's 7x7 grid (at 128 px the
    grid is 4x4 and, at the 0.5 threshold, most regions are soft positives of each
    other); the network is made cheaper instead: a ResNet-18 of width 16 (1/16 of the
    standard network's compute) and a 2-layer BERT trained on the SynthCXR reports.

    Deliberate differences from the paper's recipe, for a few hundred CPU steps from
    scratch (measured: with the full network, ConVIRT image augmentation and lr 3e-4,
    150-300 steps leave the global loss at ln(batch size), i.e. nothing is learned):
    learning rate 1e-3 with a short warm-up, batch 32 without accumulation, and no image
    augmentation (the ConVIRT flips swap the report's left and right; crops and blur
    hide the small synthetic findings). Text augmentation (sentence shuffling) stays.
    """

    num_train: int = 1600
    num_validation: int = 96
    num_test: int = 300
    image_size: int = 224
    depth: int = 18
    width: int = 16
    text_layers: int = 2
    text_hidden: int = 128
    projection_dim: int = 128
    hidden_dim: int = 512
    pooling_heads: int = 4
    batch_size: int = 32
    epochs: int = 12
    steps_per_epoch: int = 50  # = 1600 // 32: whole epochs, 600 steps in all
    learning_rate: float = 1e-3
    warmup_epochs: float = 0.1
    image_augmentation: bool = False
    probe_train: int = 300
    probe_test: int = 300
    probe_seeds: int = 3
    probe_epochs: int = 30
    probe_learning_rates: tuple[float, ...] = (3e-2, 3e-1)
    seed: int = 0
    variants: tuple[str, ...] = ("lovt", "ablation_no_l")


VARIANT_LABELS = {"lovt": "LoVT", "ablation_no_l": "Global only", "convirt": "ConVIRT"}


def _build_model(config: QuickstartConfig, tokenizer, variant: str) -> LoVTPretrainer:
    image_encoder = ResNetImageEncoder(depth=config.depth, image_size=config.image_size,
                                       width=config.width)
    bert = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size,
        num_layers=config.text_layers,
        num_heads=max(1, config.text_hidden // 64),
        hidden_dim=config.text_hidden,
        intermediate_dim=4 * config.text_hidden,
        max_sequence_length=tokenizer.max_tokens,
    )
    report_encoder = BertReportEncoder(bert, max_sentences=tokenizer.max_sentences)
    return LoVTPretrainer(
        image_encoder,
        report_encoder,
        projection_dim=config.projection_dim,
        hidden_dim=config.hidden_dim,
        num_pooling_heads=config.pooling_heads,
        **VARIANTS[variant],
    )


class _FirstSteps(keras.utils.PyDataset):
    """The first ``steps`` batches of each epoch of a ``PretrainingBatches``."""

    def __init__(self, batches: PretrainingBatches, steps: int):
        super().__init__(workers=batches.workers, use_multiprocessing=False,
                         max_queue_size=batches.max_queue_size)
        self.batches = batches
        self.steps = min(steps, len(batches))

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        return self.batches[index]

    def set_epoch(self, epoch):
        self.batches.set_epoch(epoch)


def run_quickstart(output_dir: str | os.PathLike, config: QuickstartConfig | None = None,
                   stream: TextIO | None = None) -> dict:
    """Runs the quickstart and returns its results (also written to ``output_dir``).

    Writes ``results.csv``/``results.md`` (methods as rows, tasks as columns, pooled
    Dice in % with the 95 % interval over the probe seeds), ``loss_curves.png``,
    ``quickstart.json`` (config, timings, per-method numbers) and one pretraining run
    directory per variant (checkpoints, ``metrics.jsonl``, exported encoders).
    """
    config = config or QuickstartConfig()
    stream = stream or sys.stdout
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    def log(message):
        print(message, file=stream, flush=True)

    start = time.time()
    data = load_synthcxr(num_train=config.num_train, num_validation=config.num_validation,
                         num_test=config.num_test, image_size=config.image_size,
                         seed=config.seed)
    stats = load_stats(data)
    tokenizer = synthcxr_tokenizer(data)
    timings["data"] = time.time() - start
    log(f"SynthCXR: {len(data['train'])} train images ({timings['data']:.0f} s); "
        f"vocabulary {tokenizer.vocabulary_size}")

    histories = {}
    encoders = {"Random init": random_init(config.depth, width=config.width)}
    for variant in config.variants:
        label = VARIANT_LABELS.get(variant, variant)
        augmentation = None if config.image_augmentation else EvalTransform(config.image_size)
        train = PretrainingBatches(data["train"], tokenizer, stats, batch_size=config.batch_size,
                                   image_size=config.image_size, seed=config.seed,
                                   augmentation=augmentation)
        val = PretrainingBatches(data["validation"], tokenizer, stats,
                                 batch_size=config.batch_size, training=False,
                                 image_size=config.image_size, seed=config.seed)
        log(f"pretraining {label}: {config.epochs} x {config.steps_per_epoch} steps of "
            f"{config.batch_size}")
        t = time.time()
        result = pretrain(
            lambda variant=variant: _build_model(config, tokenizer, variant),
            _FirstSteps(train, config.steps_per_epoch),
            val,
            out / variant,
            epochs=config.epochs,
            learning_rate=config.learning_rate,
            gradient_accumulation_steps=1,
            schedule="cosine_warmup",
            warmup_epochs=config.warmup_epochs,
            early_stopping_patience=None,
            checkpoint_every_steps=50,
            seed=config.seed,
            tensorboard=False,
            stream=stream,
        )
        timings[f"pretrain_{variant}"] = time.time() - t
        histories[label] = result.history
        encoders[label] = from_checkpoint(result.image_encoder_path)

    probe_data = dict(num_train=config.probe_train, num_validation=100,
                      num_test=config.probe_test, seed=config.seed + 1)
    tasks = [
        synth_task(name, lr_grid=tuple(float(lr) for lr in config.probe_learning_rates),
                   max_epochs=config.probe_epochs, dataset_options=probe_data,
                   image_size=config.image_size)
        for name in ("synth_opacity_linear_100", "synth_foreign_object_linear")
    ]
    t = time.time()
    results = evaluate_encoders(encoders, tasks, seeds=config.probe_seeds,
                                output_dir=out / "evaluation", log=log)
    timings["evaluation"] = time.time() - t
    table = results_table(results)
    write_table(table, out / "results")
    plot_loss_curves(histories, out / "loss_curves.png")
    timings["total"] = time.time() - start
    summary = {
        "config": dataclasses.asdict(config),
        "backend": keras.backend.backend(),
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
        # Per method and task: the mean and 95 % interval over the probe seeds, the
        # per-seed test values and the probe learning rate chosen on validation.
        "results": [
            {"method": r["method"], "task": r["task"], "mean": r["mean"], "ci95": r["ci95"],
             "values": list(r["test"]), "learning_rate": r["learning_rate"]}
            for r in results
        ],
    }
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2, default=str))
    log("")
    log(to_markdown(table))
    log(f"\nwritten to {out} in {timings['total'] / 60:.1f} min")
    return summary
