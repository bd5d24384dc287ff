"""Atomic, resumable checkpoints: model variables, optimizer variables and the position.

A checkpoint is one ``.npz`` file holding

- every model variable (``model.variables``: weights, BatchNorm statistics and the
  ``SeedGenerator`` states of the dropout layers, so the random stream continues),
- optionally the optimizer variables (iteration counter, Adam moments, gradient
  accumulators, a learning-rate variable) and the metric variables (the running means
  of the epoch in progress),
- the ``TrainingState`` (epoch, step in the epoch, best validation loss, early-stopping
  counter, ...) as JSON,
- the backend's global random state where layers draw from it (PyTorch: Keras'
  unseeded dropout calls ``torch.nn.functional.dropout``, which uses torch's global
  generator instead of the layer's ``SeedGenerator``; see ``rng``).

It is written to a temporary file in the same folder, flushed to disk and renamed over
the old one with ``os.replace``, so a process killed at any moment (``kill -9``
included) leaves either the previous or the new checkpoint, never a partial one.
Variables are matched by position and checked by shape, so a checkpoint only loads
into the model built by the same configuration (the error names the first mismatch).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from lovt_keras.training import rng

FORMAT_VERSION = 1
LAST = "last.npz"
BEST = "best.npz"
_META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the given model."""


@dataclasses.dataclass
class TrainingState:
    """Where a run stands; saved with every checkpoint.

    Attributes:
        epoch: the epoch in progress (0-based); with ``step_in_epoch == 0`` it is also
            the number of completed epochs.
        step_in_epoch: mini-batches of ``epoch`` already trained.
        global_step: mini-batches trained in the whole run.
        best_value: best monitored value so far (strict improvement); its weights are
            the best checkpoint.
        best_epoch: epoch (0-based) of ``best_value``.
        early_stopping_best: reference value of early stopping (improves only by more
            than ``min_delta``).
        epochs_without_improvement: early-stopping counter.
        stopped_early: early stopping ended the run.
        finished: training ended (all epochs or early stopping) and was exported.
        seed: the run's seed.
        callbacks: state of resumable callbacks by name (e.g. the plateau scheduler).
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    early_stopping_best: float | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    finished: bool = False
    seed: int | None = None
    callbacks: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _to_numpy(variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable))


def _variable_groups(model: keras.Model, optimizer: bool, metrics: bool) -> dict[str, list]:
    groups = {"model": list(model.variables)}
    if optimizer:
        if model.optimizer is None or not model.optimizer.built:
            raise ValueError("the model's optimizer is not built; build it before checkpointing")
        groups["optimizer"] = list(model.optimizer.variables)
    if metrics:
        groups["metrics"] = list(model.metrics_variables)
    return groups


def save_checkpoint(path: str | os.PathLike, model: keras.Model, state: TrainingState,
                    optimizer: bool = True, metrics: bool = True) -> Path:
    """Writes a checkpoint atomically (temporary file + ``os.replace``).

    Args:
        path: the ``.npz`` file to (over)write.
        model: a built model (compiled, with a built optimizer if ``optimizer``).
        state: the training position to store with it.
        optimizer: include the optimizer variables (needed to resume).
        metrics: include the metric variables (restores the running epoch means).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    groups = _variable_groups(model, optimizer, metrics)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "backend": keras.backend.backend(),
        "state": state.to_dict(),
        "groups": {},
    }
    for group, variables in groups.items():
        meta["groups"][group] = [
            {"path": v.path, "shape": list(v.shape), "dtype": str(v.dtype)} for v in variables
        ]
        for index, variable in enumerate(variables):
            arrays[f"{group}.{index:06d}"] = _to_numpy(variable)
    for name, value in rng.get_global_state().items():
        arrays[f"rng.{name}"] = value
    arrays[_META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable (POSIX); not possible on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint_state(path: str | os.PathLike) -> TrainingState:
    """The ``TrainingState`` stored in a checkpoint, without loading any variable."""
    with np.load(path) as data:
        meta = _read_meta(data, path)
    return TrainingState.from_dict(meta["state"])


def _read_meta(data, path) -> dict:
    if _META_KEY not in data.files:
        raise CheckpointError(f"{path}: not a lovt_keras checkpoint (no {_META_KEY} entry)")
    meta = json.loads(bytes(data[_META_KEY]).decode("utf-8"))
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('format')} is not {FORMAT_VERSION}"
        )
    return meta


def _rng_states(data) -> dict[str, np.ndarray]:
    return {name[len("rng."):]: data[name] for name in data.files if name.startswith("rng.")}


def read_rng_states(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The backend generator states stored in a checkpoint (see ``rng``)."""
    with np.load(path) as data:
        return _rng_states(data)


def load_checkpoint(path: str | os.PathLike, model: keras.Model, optimizer: bool = True,
                    metrics: bool = False, restore_rng: bool = True
                    ) -> tuple[TrainingState, list[np.ndarray] | None]:
    """Loads a checkpoint into a built model (and its built optimizer).

    Args:
        path: a file written by ``save_checkpoint``.
        model: the model built by the same configuration.
        optimizer: also restore the optimizer variables (the checkpoint must hold them).
        metrics: return the stored metric values (they are not assigned here: ``fit``
            resets the metrics at the start of every epoch, so the caller assigns them
            after that, see ``Checkpointer``).
        restore_rng: restore the backend's global generator state now. A mid-epoch
            resume restores it later instead (``Checkpointer(resume_rng=...)``): on
            PyTorch, ``fit`` draws from the global generator when it creates the
            epoch's data loader, which the interrupted run did before the checkpoint.

    Returns:
        ``(state, metric_values)``; ``metric_values`` is None unless ``metrics``.

    Raises:
        CheckpointError: the file is not a checkpoint, lacks a group, or the number or
            shapes of its variables differ from the model's (naming the variable).
    """
    path = Path(path)
    with np.load(path) as data:
        meta = _read_meta(data, path)
        groups = _variable_groups(model, optimizer, False)
        for group, variables in groups.items():
            stored = meta["groups"].get(group)
            if stored is None:
                raise CheckpointError(f"{path}: holds no {group} variables")
            if len(stored) != len(variables):
                raise CheckpointError(
                    f"{path}: holds {len(stored)} {group} variables, the model has "
                    f"{len(variables)} (was it written by a different configuration?)"
                )
            values = [data[f"{group}.{i:06d}"] for i in range(len(variables))]
            for info, variable, value in zip(stored, variables, values):
                if tuple(value.shape) != tuple(variable.shape):
                    raise CheckpointError(
                        f"{path}: {group} variable {info['path']!r} has shape "
                        f"{tuple(value.shape)}, the model's {variable.path!r} has "
                        f"{tuple(variable.shape)}"
                    )
            for variable, value in zip(variables, values):
                variable.assign(value)
        if restore_rng:
            rng.set_global_state(_rng_states(data))
        metric_values = None
        if metrics and "metrics" in meta["groups"]:
            count = len(meta["groups"]["metrics"])
            metric_values = [data[f"metrics.{i:06d}"] for i in range(count)]
    return TrainingState.from_dict(meta["state"]), metric_values


class Checkpointer(keras.callbacks.Callback):
    """Tracks the training position and writes ``last``/``best`` checkpoints.

    - every ``every_steps`` mini-batches (counted over the whole run) it writes
      ``directory/last.npz`` with the optimizer and metric variables, unless the batch
      is the last of its epoch (the end-of-epoch checkpoint follows right away);
    - at the end of every epoch it writes ``best.npz`` (model variables only) when
      ``keep_best`` and ``state.best_epoch`` is this epoch, then ``last.npz`` positioned
      at the start of the next epoch. Put it after the callbacks that update ``state``
      at the end of an epoch (best value, early stopping, learning-rate plateau, metrics
      log).

    Args:
        directory: the checkpoint folder.
        state: the shared ``TrainingState`` (updated in place).
        every_steps: mini-batches between mid-epoch checkpoints (None = only at epoch
            ends).
        batches_per_epoch: mini-batches of a full epoch.
        resume_offset: mini-batches of the first epoch of this ``fit`` already trained
            before an interruption (the data given to ``fit`` starts after them).
        resume_metrics: metric values to assign at the start of that first epoch, so the
            epoch's logged means cover the batches before the interruption too.
        resume_rng: backend generator states to restore just before the first batch of
            that epoch (after ``fit`` has created its data iterator; see ``rng``).
        keep_best: write ``best.npz`` (False when the run keeps its final weights, so
            the best epoch's copy would never be read).
        writes: False on the processes of a data-parallel run other than process 0:
            they track the position but write nothing.
    """

    def __init__(self, directory: str | os.PathLike, state: TrainingState,
                 every_steps: int | None, batches_per_epoch: int, resume_offset: int = 0,
                 resume_metrics: list[np.ndarray] | None = None,
                 resume_rng: dict[str, np.ndarray] | None = None, keep_best: bool = True,
                 writes: bool = True):
        super().__init__()
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"every_steps must be >= 1 or None, got {every_steps}")
        self.directory = Path(directory)
        self.state = state
        self.every_steps = every_steps
        self.batches_per_epoch = int(batches_per_epoch)
        self.resume_offset = int(resume_offset)
        self.resume_metrics = resume_metrics
        self.resume_rng = resume_rng
        self.keep_best = keep_best
        self.writes = bool(writes)
        self._offset = 0

    @property
    def last_path(self) -> Path:
        return self.directory / LAST

    @property
    def best_path(self) -> Path:
        return self.directory / BEST

    def on_epoch_begin(self, epoch, logs=None):
        self._offset, self.resume_offset = self.resume_offset, 0
        self.state.epoch = int(epoch)
        self.state.step_in_epoch = self._offset
        if self.resume_metrics is not None:
            variables = self.model.metrics_variables
            if len(variables) == len(self.resume_metrics):
                for variable, value in zip(variables, self.resume_metrics):
                    variable.assign(value)
            self.resume_metrics = None

    def on_train_batch_begin(self, batch, logs=None):
        if self.resume_rng is not None:
            rng.set_global_state(self.resume_rng)
            self.resume_rng = None

    def on_train_batch_end(self, batch, logs=None):
        self.state.step_in_epoch = self._offset + int(batch) + 1
        self.state.global_step += 1
        if (
            self.writes
            and self.every_steps
            and self.state.global_step % self.every_steps == 0
            and self.state.step_in_epoch < self.batches_per_epoch
        ):
            save_checkpoint(self.last_path, self.model, self.state)

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        if self.writes and self.keep_best and self.state.best_epoch == epoch:
            save_checkpoint(self.best_path, model, self.state, optimizer=False, metrics=False)
        self.state.epoch = int(epoch) + 1
        self.state.step_in_epoch = 0
        if self.writes:
            save_checkpoint(self.last_path, model, self.state, metrics=False)
