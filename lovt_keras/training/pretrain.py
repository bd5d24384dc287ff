"""``pretrain``: image-report pretraining with the official recipe, resumable at any step.

The official recipe (``configs/experiment/LoVT_100.yaml``, ``configs/base_config.yaml``,
``configs/callback/early_stopping.yaml``) is the default: AdamW (lr 1e-4, weight decay
1e-6), mini-batches of 32 with 16-step gradient accumulation, the ``cosine per epoch``
schedule, early stopping on the validation loss (patience 10, min_delta 1e-5), the best
checkpoint exported, seed 12345.

Resuming: ``pretrain`` writes ``output_dir/checkpoints/last.npz`` every
``checkpoint_every_steps`` mini-batches and at every epoch end (atomically, see
``checkpoints``). Called again with the same arguments after an interruption (``kill
-9`` included) it loads that checkpoint (model variables with the dropout seed states,
optimizer variables with the iteration counter and gradient accumulators, the metric
means of the interrupted epoch, the best value and early-stopping counter) and
continues: first the rest of the interrupted epoch (the batches after the checkpoint,
as the data's batches are a pure function of ``(seed, epoch, index)``), then the
remaining epochs. The result equals the uninterrupted run up to floating-point
non-determinism of the backend; only the mini-batches trained after the last
checkpoint are computed twice.

What stays on disk: while training, ``last.npz`` (with the optimizer state, about 4x
the model's weights with Adam and gradient accumulation) and, with
``export_checkpoint="best"``, ``best.npz`` (weights only). When the run finishes,
``last.npz`` is rewritten as the weights the run keeps (the best epoch's or the final
ones) without the optimizer state, marked finished, and ``best.npz`` is deleted: a
finished run is not trained further, so one copy of its weights is all a rerun needs.

Deviations from the official training loop, all documented where they apply:

- Keras carries a partial gradient-accumulation cycle over into the next epoch, while
  Lightning applies it at the epoch end (divided by 16 anyway). To keep weight updates
  aligned with epochs (and the cosine period exact), each epoch uses the largest
  multiple of ``gradient_accumulation_steps`` mini-batches; the few left-over
  mini-batches (fewer than 16 per epoch, different studies each epoch) are skipped.
- Keras' Adam/AdamW put epsilon outside the bias correction of the second moment
  (``m / (sqrt(v) + eps)`` with a corrected step size); torch uses ``sqrt(v_hat) +
  eps``. Epsilon is set to torch's 1e-8; the difference is of the order of epsilon.
- ``optimizer="adam"`` with a weight decay decays the weights directly (decoupled),
  where torch's Adam adds ``weight_decay * w`` to the gradient (ConVIRT's 1e-6 makes
  this immaterial).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import keras
import numpy as np

from lovt_keras import keys
from lovt_keras.files import write_json, writing_atomically
from lovt_keras.training.callbacks import (
    BestAndEarlyStopping,
    MetricsLogger,
    NormLogger,
    ReduceLROnPlateau,
    SetDataEpoch,
    StopOnNonFiniteLoss,
    read_metrics,
    track_gradient_norm,
    truncate_metrics,
)
from lovt_keras.training.checkpoints import (
    BEST,
    LAST,
    Checkpointer,
    TrainingState,
    load_checkpoint,
    read_checkpoint_state,
    read_rng_states,
    save_checkpoint,
)
from lovt_keras.training.data import EpochView
from lovt_keras.training.distribution import setup_distribution
from lovt_keras.training.schedules import CosinePerEpoch, CosineWithWarmup
from lovt_keras.training.tensorboard import TensorBoardLogger

SCHEDULES = ("cosine_per_epoch", "cosine_warmup", "plateau", "constant")
OPTIMIZERS = ("adamw", "adam")
EXPORT_CHECKPOINTS = ("best", "last")
MIXED_PRECISION_POLICIES = ("mixed_bfloat16", "mixed_float16")

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
IMAGE_ENCODER_FILE = "image_encoder.keras"
REPORT_ENCODER_FILE = "report_encoder.keras"
VOCABULARY_FILE = "vocab.txt"
DATA_INFO_FILE = "data_info.json"


@dataclasses.dataclass
class PretrainResult:
    """What ``pretrain`` returns.

    Attributes:
        output_dir: the run directory.
        model: the trained model, holding the weights of the best checkpoint (or the
            last, see ``export_checkpoint``).
        state: the final ``TrainingState`` (epochs, best epoch and value, ...).
        history: the per-epoch records of ``metrics.jsonl`` (all epochs of the run,
            also those trained before a restart).
        resumed_from: ``(epoch, step_in_epoch)`` of the checkpoint this call continued
            from, or None for a fresh start.
        image_encoder_path, report_encoder_path: the exported ``.keras`` files (None if
            not exported).
    """

    output_dir: Path
    model: keras.Model
    state: TrainingState
    history: list[dict[str, Any]]
    resumed_from: tuple[int, int] | None = None
    image_encoder_path: Path | None = None
    report_encoder_path: Path | None = None


def pretrain(
    model: keras.Model | Callable[[], keras.Model],
    train_data: keras.utils.PyDataset,
    val_data: keras.utils.PyDataset | None,
    output_dir: str | os.PathLike,
    epochs: int = 100,
    learning_rate: float = 1e-4,
    weight_decay: float = 1e-6,
    optimizer: str = "adamw",
    gradient_accumulation_steps: int = 16,
    schedule: str = "cosine_per_epoch",
    warmup_epochs: float = 1.0,
    plateau_patience: int = 12,
    plateau_factor: float = 0.5,
    early_stopping_patience: int | None = 10,
    early_stopping_min_delta: float = 1e-5,
    checkpoint_every_steps: int | None = 500,
    mixed_precision: bool | str = False,
    seed: int = 12345,
    jit_compile: bool | str = "auto",
    distribution: str = "none",
    negatives: str = "global",
    sync_batch_norm: bool = False,
    job_addresses: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    tensorboard: bool = True,
    export: bool = True,
    export_checkpoint: str = "best",
    verbose: int = 1,
    stream: TextIO | None = None,
) -> PretrainResult:
    """Pretrains an image-report model (e.g. ``LoVTPretrainer``) and exports its encoders.

    Args:
        model: a zero-argument callable building the model (called after the seed and
            the dtype policy are set, so the initialization is reproducible), or a built
            ``keras.Model`` (then ``mixed_precision`` must match its policy). The model
            computes its own loss (``compute_loss``) from the batches (dicts of arrays).
        train_data: a ``keras.utils.PyDataset`` of batch dicts (e.g.
            ``PretrainingBatches``); its ``set_epoch(epoch)`` is called at every epoch
            start when it has one. Batch ``i`` of epoch ``e`` must be a pure function of
            the data's seed, ``e`` and ``i`` for an exact resume.
        val_data: a ``PyDataset`` for the validation loss (early stopping and the best
            checkpoint monitor ``val_loss``), or None (then the training loss).
        output_dir: the run directory (checkpoints, ``metrics.jsonl``, TensorBoard logs,
            exported encoders). If it holds ``checkpoints/last.npz`` the run continues
            from it (a finished run only loads its kept weights and exports again).
        epochs: maximum number of epochs (100).
        learning_rate: peak learning rate (1e-4).
        weight_decay: decoupled weight decay (1e-6).
        optimizer: ``"adamw"`` (LoVT, CLIP*) or ``"adam"`` (ConVIRT).
        gradient_accumulation_steps: mini-batches per weight update (16; 1 = none).
        schedule: ``"cosine_per_epoch"`` (official, ``CosinePerEpoch``),
            ``"cosine_warmup"`` (``CosineWithWarmup`` over all epochs with
            ``warmup_epochs`` of linear warmup), ``"plateau"`` (PyTorch's
            ``ReduceLROnPlateau`` on the monitored loss, ConVIRT) or ``"constant"``.
        warmup_epochs: warmup length of ``"cosine_warmup"``, in epochs.
        plateau_patience, plateau_factor: of ``"plateau"`` (12 and 0.5 as ConVIRT).
        early_stopping_patience: epochs without improvement before stopping (None =
            never).
        early_stopping_min_delta: minimum improvement for early stopping (1e-5).
        checkpoint_every_steps: mini-batches between mid-epoch checkpoints (None = only
            at epoch ends). Bounds the work lost by an interruption.
        mixed_precision: False, True (= ``"mixed_bfloat16"``) or a policy name.
        seed: seeds Python, NumPy and the backend before the model is built.
        jit_compile: passed to ``compile``.
        distribution: ``"none"`` (one device) or ``"data_parallel"``: every device, with
            the backend's engine (``lovt_keras.training.distribution``); the data's
            batch size is the global batch, split over the devices.
        negatives: data parallel: the global loss's negatives ``"global"`` (gathered
            from every device: the single-device result on the same global batch) or
            ``"per_device"`` (each device's share, as several independent mini-batches).
        sync_batch_norm: data parallel on TensorFlow: BatchNorm statistics over the
            global batch (JAX always; not available on PyTorch).
        job_addresses, num_processes, process_id: JAX on several machines, passed to
            ``keras.distribution.initialize`` (or its ``KERAS_DISTRIBUTION_*``
            environment variables).
        tensorboard: write TensorBoard logs to ``output_dir/tensorboard``.
        export: write ``image_encoder.keras`` and ``report_encoder.keras`` at the end
            (models with ``image_encoder`` and ``report_encoder`` attributes, such as
            ``LoVTPretrainer``; their batches are also checked against the encoders
            with ``check_batch_fits_model``); only ``image_encoder.keras`` for an
            image-only model (an ``image_encoder`` and no ``report_encoder``, such as
            ``SimCLRPretrainer``).
        export_checkpoint: which weights the returned model holds and the exported
            encoders get: ``"best"`` (the epoch with the best monitored loss, the
            official recipe with early stopping) or ``"last"`` (the final weights: for a
            fixed step budget, where a noisy or small validation split could pick an
            undertrained early epoch).
        verbose: 0 silent, 1 one summary line per epoch, 2 also a progress bar.
        stream: where summary lines go (default ``sys.stdout``).

    Returns:
        A ``PretrainResult``.

    Raises:
        ValueError: unknown ``optimizer``/``schedule``/policy, data with fewer
            mini-batches than one accumulation cycle, data that does not fit the model
            (image size, vocabulary, token or sentence budget), a checkpoint of another
            seed or configuration.
    """
    accumulation = _check_arguments(optimizer, export_checkpoint, schedule, epochs,
                                    gradient_accumulation_steps)
    policy = _policy_name(mixed_precision)
    stream = sys.stdout if stream is None else stream
    output_dir = Path(output_dir)
    # The engine runs inside the block (JAX: the previous Keras distribution comes back
    # after it); only process 0 writes files.
    with setup_distribution(distribution, negatives, sync_batch_norm, job_addresses,
                            num_processes, process_id) as setup:
        chief = setup.is_chief
        if chief:
            output_dir.mkdir(parents=True, exist_ok=True)
        setup.shard_data(train_data, val_data)
        batches_per_epoch = _batches_per_epoch(train_data, accumulation)
        if setup.active and verbose and chief:
            print(f"training {setup.describe()}", file=stream, flush=True)

        keras.utils.set_random_seed(seed)
        with setup.scope():
            model = _build_model(model, policy)
            sample = train_data[0]
            if _is_image_report_model(model) or _is_image_only_model(model):
                check_batch_fits_model(model, sample)
            model(_head(sample, 2), training=False)  # creates the variables

            lr = _learning_rate(schedule, learning_rate, batches_per_epoch // accumulation,
                                epochs, warmup_epochs, accumulation)
            model.compile(optimizer=_make_optimizer(optimizer, lr, weight_decay, accumulation),
                          jit_compile=jit_compile)
            model.optimizer.build(model.trainable_variables)
        if chief:
            _write_data_info(output_dir, train_data, batches_per_epoch, accumulation)

        state, resume_metrics, resume_rng, resumed_from = _resume(
            output_dir, model, seed, batches_per_epoch,
            stream=stream if verbose and chief else None)
        setup.prepare_model(model)
        monitor = "val_loss" if val_data is not None else "loss"
        callbacks = setup.callbacks() + _callbacks(
            output_dir, state, train_data, monitor, resume_metrics=resume_metrics,
            resume_rng=resume_rng, epochs=epochs, batches_per_epoch=batches_per_epoch,
            checkpoint_every_steps=checkpoint_every_steps, schedule=schedule,
            plateau_factor=plateau_factor, plateau_patience=plateau_patience,
            early_stopping_patience=early_stopping_patience,
            early_stopping_min_delta=early_stopping_min_delta,
            tensorboard=tensorboard and chief, export_checkpoint=export_checkpoint,
            stream=stream if verbose and chief else None, writes=chief,
        )
        _fit(model, train_data, val_data, state, epochs, batches_per_epoch, callbacks,
             verbose if chief else 0, wrap=setup.wrap_data)
        if not chief:  # process 0 keeps and exports the weights
            return PretrainResult(output_dir=output_dir, model=model, state=state, history=[],
                                  resumed_from=resumed_from)
        _finish(model, state, output_dir, export_checkpoint)

        result = PretrainResult(output_dir=output_dir, model=model, state=state,
                                history=read_metrics(output_dir / METRICS_FILE),
                                resumed_from=resumed_from)
        if export and _is_image_report_model(model):
            result.image_encoder_path, result.report_encoder_path = export_encoders(
                model, output_dir, sequence_length=sample[keys.TOKEN_IDS].shape[1]
            )
        elif export and _is_image_only_model(model):  # SimCLR, BYOL, PixelPro
            result.image_encoder_path, _ = export_encoders(model, output_dir, sequence_length=0)
        if verbose:
            _report(state, monitor, export_checkpoint, output_dir, stream)
            warning = chance_warning(result.history[-1] if result.history else {},
                                     getattr(train_data, "batch_size", None))
            if warning:
                print(warning, file=stream, flush=True)
        return result


def _check_arguments(optimizer: str, export_checkpoint: str, schedule: str, epochs: int,
                     gradient_accumulation_steps: int | None) -> int:
    """Raises a ValueError naming the first invalid argument; returns the number of
    mini-batches per weight update (``gradient_accumulation_steps``, None or 0 = 1)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not one of {OPTIMIZERS}")
    if export_checkpoint not in EXPORT_CHECKPOINTS:
        raise ValueError(
            f"export_checkpoint={export_checkpoint!r} is not one of {EXPORT_CHECKPOINTS}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    accumulation = int(gradient_accumulation_steps or 1)
    if accumulation < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, got {accumulation}")
    return accumulation


def _batches_per_epoch(train_data, accumulation: int) -> int:
    """The largest multiple of ``accumulation`` that ``train_data`` holds (see the module
    docstring: the left-over mini-batches of every epoch are skipped)."""
    batches_per_epoch = len(train_data) - len(train_data) % accumulation
    if batches_per_epoch < 1:
        raise ValueError(
            f"the training data has {len(train_data)} batches per epoch, fewer than one "
            f"gradient-accumulation cycle ({accumulation} batches)"
        )
    return batches_per_epoch


def _make_optimizer(name: str, learning_rate, weight_decay: float,
                    accumulation: int) -> keras.optimizers.Optimizer:
    """AdamW or Adam with torch's epsilon and ``accumulation`` mini-batches per update,
    with its gradient norm tracked (see the module docstring for the deviations)."""
    kwargs = dict(
        learning_rate=learning_rate,
        epsilon=1e-8,
        gradient_accumulation_steps=accumulation if accumulation > 1 else None,
    )
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=weight_decay, **kwargs)
    else:
        optimizer = keras.optimizers.Adam(weight_decay=weight_decay or None, **kwargs)
    # Before compile and resume: its two variables are part of the optimizer state that
    # checkpoints save (logged as gradient_norm per epoch, see callbacks.NormLogger).
    track_gradient_norm(optimizer)
    return optimizer


def _resume(output_dir: Path, model: keras.Model, seed: int, batches_per_epoch: int,
            stream: TextIO | None):
    """Loads ``checkpoints/last.npz`` of ``output_dir`` (if there is one) into the
    compiled and built ``model`` and its optimizer, and cuts ``metrics.jsonl`` back to
    the epochs it completed.

    At an epoch boundary the checkpoint's RNG states are restored at once; in the middle
    of an epoch they are returned, for the ``Checkpointer`` to restore when training
    reaches that batch again.

    Args:
        stream: where the "resuming ..." line goes (None: silent).

    Returns:
        ``(state, resume_metrics, resume_rng, resumed_from)``: the ``TrainingState`` (a
        fresh one without a checkpoint), the metric means and the RNG states saved with
        the checkpoint (None without one; ``resume_rng`` also None at an epoch boundary)
        and ``(epoch, step_in_epoch)`` of the checkpoint (None without one).

    Raises:
        ValueError: the checkpoint was written with another seed, or after more
            mini-batches of an epoch than this run's epochs have.
    """
    state = TrainingState(seed=int(seed))
    last_path = output_dir / CHECKPOINT_DIR / LAST
    if not last_path.is_file():
        return state, None, None, None
    stored = read_checkpoint_state(last_path)
    mid_epoch = stored.step_in_epoch > 0
    # A finished run's checkpoint holds its kept weights only (see ``_finish``).
    state, resume_metrics = load_checkpoint(last_path, model, optimizer=not stored.finished,
                                            metrics=True, restore_rng=not mid_epoch)
    resume_rng = read_rng_states(last_path) if mid_epoch else None
    if state.seed is not None and state.seed != int(seed):
        raise ValueError(
            f"{last_path}: written by a run with seed {state.seed}, this run has seed "
            f"{seed}; use another output directory or the same seed"
        )
    if state.step_in_epoch >= batches_per_epoch:
        raise ValueError(
            f"{last_path}: stopped after batch {state.step_in_epoch} of epoch "
            f"{state.epoch + 1}, but an epoch now has {batches_per_epoch} batches "
            "(different data or batch size?)"
        )
    truncate_metrics(output_dir / METRICS_FILE, completed_epochs=state.epoch)
    if stream is not None and not state.finished:
        print(
            f"resuming {output_dir} at epoch {state.epoch + 1}, batch "
            f"{state.step_in_epoch} of {batches_per_epoch} (mini-batch "
            f"{state.global_step} of the run)",
            file=stream, flush=True,
        )
    return state, resume_metrics, resume_rng, (state.epoch, state.step_in_epoch)


def _callbacks(output_dir: Path, state: TrainingState, train_data, monitor: str, *,
               resume_metrics, resume_rng, epochs: int, batches_per_epoch: int,
               checkpoint_every_steps: int | None, schedule: str, plateau_factor: float,
               plateau_patience: int, early_stopping_patience: int | None,
               early_stopping_min_delta: float, tensorboard: bool, export_checkpoint: str,
               stream: TextIO | None, writes: bool = True) -> list[keras.callbacks.Callback]:
    """The callbacks of ``fit``, in the order they must run (each comment says why).

    ``stream``: where ``MetricsLogger`` prints one line per epoch (None: silent).
    ``writes``: False on the processes of a data-parallel run other than process 0
    (no metrics file, no checkpoint).
    """
    checkpointer = Checkpointer(
        output_dir / CHECKPOINT_DIR, state, checkpoint_every_steps, batches_per_epoch,
        resume_offset=state.step_in_epoch,
        resume_metrics=resume_metrics if state.step_in_epoch else None,
        resume_rng=resume_rng, keep_best=export_checkpoint == "best", writes=writes,
    )
    callbacks: list[keras.callbacks.Callback] = [
        StopOnNonFiniteLoss(resume_offset=state.step_in_epoch),  # first: before any saving
        NormLogger(),  # before the loggers, which write the norms it adds
        SetDataEpoch(train_data),
    ]
    if schedule == "plateau":
        callbacks.append(ReduceLROnPlateau(state, monitor, plateau_factor, plateau_patience))
    callbacks.append(BestAndEarlyStopping(state, monitor, early_stopping_patience,
                                          early_stopping_min_delta))
    if writes:
        callbacks.append(MetricsLogger(output_dir / METRICS_FILE, state, epochs, stream=stream))
    if tensorboard:
        callbacks.append(TensorBoardLogger(output_dir / TENSORBOARD_DIR))
    callbacks.append(checkpointer)  # last: saves what the others updated
    return callbacks


def _fit(model: keras.Model, train_data, val_data, state: TrainingState, epochs: int,
         batches_per_epoch: int, callbacks: list, verbose: int, wrap=lambda data: data
         ) -> None:
    """Trains the epochs that remain after ``state``: first the rest of an interrupted
    epoch, then the following epochs (nothing once the run finished or stopped early).
    ``wrap``: what ``fit`` gets for a ``PyDataset`` (``DataParallelSetup.wrap_data``)."""
    fit_kwargs = dict(validation_data=wrap(val_data), callbacks=callbacks, shuffle=False,
                      verbose=1 if verbose >= 2 else 0)
    done = state.finished or state.stopped_early or state.epoch >= epochs
    if not done and state.step_in_epoch > 0:
        # The rest of the interrupted epoch, then the following epochs.
        model.fit(wrap(EpochView(train_data, state.step_in_epoch, batches_per_epoch)),
                  epochs=state.epoch + 1, initial_epoch=state.epoch, **fit_kwargs)
        done = state.stopped_early or state.epoch >= epochs
    if not done:
        model.fit(wrap(EpochView(train_data, 0, batches_per_epoch)), epochs=epochs,
                  initial_epoch=state.epoch, **fit_kwargs)


def _finish(model: keras.Model, state: TrainingState, output_dir: Path,
            export_checkpoint: str) -> None:
    """Loads the best checkpoint's weights into ``model`` when
    ``export_checkpoint="best"``, then (once) replaces ``last.npz`` by these weights
    marked finished, without the optimizer state (a later call trains nothing), and
    deletes ``best.npz``.

    Every step can be interrupted: before the new ``last.npz`` is in place a rerun
    finishes again; after it, a left-over ``best.npz`` holds the same weights."""
    checkpoint_dir = output_dir / CHECKPOINT_DIR
    best_path = checkpoint_dir / BEST
    if export_checkpoint == "best" and best_path.is_file():
        load_checkpoint(best_path, model, optimizer=False, restore_rng=False)
    if not state.finished:
        state.finished = True
        save_checkpoint(checkpoint_dir / LAST, model, state, optimizer=False, metrics=False)
        best_path.unlink(missing_ok=True)


def chance_warning(record: dict, batch_size: int | None, margin: float = 0.05) -> str | None:
    """A warning when every global contrastive term of the last epoch's ``record``
    (training logs: ``global_*`` components) ended within ``margin`` (relative) of
    chance, ln(batch size): an InfoNCE over B candidates that has learned nothing stays
    there, and its encoder is no better than its initialization. None otherwise, or
    when the record holds no global term or the batch size is unknown."""
    terms = {k: float(v) for k, v in record.items() if k.startswith("global_")}
    if not terms or not batch_size or batch_size < 2:
        return None
    chance = math.log(batch_size)
    if min(terms.values()) < (1.0 - margin) * chance:
        return None
    shown = ", ".join(f"{k} {v:.4f}" for k, v in terms.items())
    return (f"warning: the global loss ended at chance ({shown}; ln {batch_size} = "
            f"{chance:.4f}): this encoder may have learned nothing. Try other learning "
            "rates (a study's lr_sweep) before comparing it.")


def _report(state: TrainingState, monitor: str, export_checkpoint: str, output_dir: Path,
            stream: TextIO) -> None:
    """Prints the run's closing line: why it ended, the best epoch, the weights kept."""
    best = (
        f"best {monitor} {state.best_value:.4f} at epoch {state.best_epoch + 1}"
        if state.best_epoch is not None else "no best epoch"
    )
    end = "stopped early" if state.stopped_early else f"{state.epoch} epochs"
    weights = "final" if export_checkpoint == "last" else "best"
    print(f"done: {end}, {best}; {weights} weights kept; outputs in {output_dir}",
          file=stream, flush=True)


def _policy_name(mixed_precision: bool | str) -> str | None:
    if mixed_precision is False or mixed_precision is None:
        return None
    if mixed_precision is True:
        return "mixed_bfloat16"
    if mixed_precision not in MIXED_PRECISION_POLICIES:
        raise ValueError(
            f"mixed_precision={mixed_precision!r}: use True, False or one of "
            f"{MIXED_PRECISION_POLICIES}"
        )
    return mixed_precision


def _build_model(model, policy: str | None) -> keras.Model:
    if isinstance(model, keras.Model):
        name = model.dtype_policy.name
        if (policy or "float32") != name:
            raise ValueError(
                f"the model was built with dtype policy {name!r} but mixed_precision asks "
                f"for {policy or 'float32'!r}; pass a model factory so pretrain builds it"
            )
        return model
    previous = keras.config.dtype_policy()
    if policy is not None:
        keras.config.set_dtype_policy(policy)
    try:
        built = model()
    finally:
        keras.config.set_dtype_policy(previous)
    if not isinstance(built, keras.Model):
        raise TypeError(f"the model factory returned {type(built).__name__}, not a keras.Model")
    return built


def _is_image_report_model(model) -> bool:
    return hasattr(model, "image_encoder") and hasattr(model, "report_encoder")


def _is_image_only_model(model) -> bool:
    """An image-only pretrainer (``SimCLRPretrainer``, ``BYOLPretrainer``,
    ``PixelProPretrainer``): its batches hold images only, it exports its image encoder."""
    return hasattr(model, "image_encoder") and not hasattr(model, "report_encoder")


def _head(batch: dict, count: int) -> dict:
    return {k: v[:count] for k, v in batch.items()}


def _learning_rate(schedule, learning_rate, updates_per_epoch, epochs, warmup_epochs,
                   accumulation):
    if schedule == "cosine_per_epoch":
        return CosinePerEpoch(learning_rate, updates_per_epoch, accumulation)
    if schedule == "cosine_warmup":
        total = updates_per_epoch * epochs
        warmup = min(int(round(warmup_epochs * updates_per_epoch)), total - 1)
        return CosineWithWarmup(learning_rate, total, warmup,
                                gradient_accumulation_steps=accumulation)
    return float(learning_rate)  # "constant", "plateau": a variable the callback may change


def check_batch_fits_model(model: keras.Model, batch: dict) -> None:
    """Raises a ValueError naming the mismatch when a batch cannot feed the model.

    An image-only model (no ``report_encoder``) needs ``images`` and ``second_images``
    and gets the image size check only.

    Checks (where the model exposes them) the image size against
    ``model.image_encoder.image_size``, the token ids against the BERT vocabulary, the
    token budget T against its ``max_sequence_length`` and the sentence budget S
    against ``model.report_encoder.max_sentences``.
    """
    image_only = _is_image_only_model(model)
    required = (keys.IMAGES, keys.SECOND_IMAGES) if image_only else keys.INPUT_KEYS
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"the batches lack the keys {missing} (have {sorted(batch)})")
    image_encoder = getattr(model, "image_encoder", None)
    image_size = getattr(image_encoder, "image_size", None)
    height, width = batch[keys.IMAGES].shape[1:3]
    if image_size is not None and (height, width) != (image_size, image_size):
        raise ValueError(
            f"the data's images are {height}x{width} but the image encoder expects "
            f"{image_size}x{image_size}; set the same image size for both"
        )
    if image_only:
        return
    report_encoder = getattr(model, "report_encoder", None)
    backbone = getattr(report_encoder, "backbone", None)
    vocabulary_size = getattr(backbone, "vocabulary_size", None)
    max_id = int(np.max(batch[keys.TOKEN_IDS]))
    if vocabulary_size is not None and max_id >= vocabulary_size:
        raise ValueError(
            f"the data has token id {max_id} but the report encoder's vocabulary has "
            f"{vocabulary_size} tokens; use the tokenizer of the report encoder"
        )
    max_length = getattr(backbone, "max_sequence_length", None)
    tokens = batch[keys.TOKEN_IDS].shape[1]
    if max_length is not None and tokens > max_length:
        raise ValueError(
            f"the data has {tokens} tokens per report but the report encoder takes at most "
            f"{max_length}; lower the tokenizer's max_tokens"
        )
    max_sentences = getattr(report_encoder, "max_sentences", None)
    sentences = batch[keys.SENTENCE_MASK].shape[1]
    if max_sentences is not None and sentences != max_sentences:
        raise ValueError(
            f"the data has {sentences} sentence slots but the report encoder has "
            f"max_sentences={max_sentences}; set the same value for both"
        )


def _write_data_info(output_dir: Path, train_data, batches_per_epoch: int,
                     accumulation: int) -> None:
    """Saves what downstream users of the encoders need: the tokenizer's vocabulary and
    settings and the pixel normalization."""
    tokenizer = getattr(train_data, "tokenizer", None)
    info: dict[str, Any] = {
        "batches_per_epoch": len(train_data),
        "batches_per_epoch_used": batches_per_epoch,
        "gradient_accumulation_steps": accumulation,
        "batch_size": getattr(train_data, "batch_size", None),
        "image_size": getattr(train_data, "image_size", None),
        "pixel_mean": getattr(train_data, "mean", None),
        "pixel_std": getattr(train_data, "std", None),
    }
    if tokenizer is not None and hasattr(tokenizer, "save_vocabulary"):
        with writing_atomically(output_dir / VOCABULARY_FILE) as tmp:
            tokenizer.save_vocabulary(tmp)
        info["tokenizer"] = {
            "max_tokens": tokenizer.max_tokens,
            "max_sentences": tokenizer.max_sentences,
            "lowercase": tokenizer.lowercase,
            "vocabulary": VOCABULARY_FILE,
        }
    write_json(output_dir / DATA_INFO_FILE, info)


def _save_atomically(model: keras.Model, path: Path) -> Path:
    with writing_atomically(path) as tmp:  # keeps the ".keras" suffix that save needs
        model.save(tmp)
    return path


def export_encoders(model: keras.Model, output_dir: str | os.PathLike,
                    sequence_length: int) -> tuple[Path, Path | None]:
    """Saves the image encoder and the report encoder of a pretrainer as ``.keras`` files.

    ``image_encoder.keras`` is the ``ResNetImageEncoder`` (images ``(B, H, W, C)`` ->
    dict of feature maps ``conv1`` .. ``conv5``); ``report_encoder.keras`` is a
    functional model around the ``BertReportEncoder`` taking ``token_ids``,
    ``padding_mask`` and ``sentence_ids`` ``(B, T)`` with T = ``sequence_length`` (the
    tokenizer's ``max_tokens``; a fixed T keeps shape inference working on every
    backend) and returning ``token_features``
    ``(B, T, D)`` and ``sentence_features`` ``(B, S, D)``. The projection heads and the
    alignment model are not exported (they are discarded after pretraining).

    Returns:
        ``(image_encoder_path, report_encoder_path)`` (the latter None if the model has
        no report encoder).
    """
    output_dir = Path(output_dir)
    image_path = _save_atomically(model.image_encoder, output_dir / IMAGE_ENCODER_FILE)
    report_encoder = getattr(model, "report_encoder", None)
    if report_encoder is None:
        return image_path, None
    inputs = {
        name: keras.Input((int(sequence_length),), dtype="int32", name=name)
        for name in (keys.TOKEN_IDS, keys.PADDING_MASK, keys.SENTENCE_IDS)
    }
    wrapper = keras.Model(inputs, report_encoder(inputs), name="report_encoder")
    report_path = _save_atomically(wrapper, output_dir / REPORT_ENCODER_FILE)
    return image_path, report_path

