"""Data-parallel training on Keras' distribution engines (the library's one module with
per-backend code, because each engine is reached differently).

``pretrain(distribution="data_parallel")`` runs the same experiment on every device:

- **JAX**: ``keras.distribution.DataParallel`` over all devices (of every process once
  ``keras.distribution.initialize`` has joined them). The model's variables are
  replicated, each batch is sharded along its first axis and the step is compiled once
  for the global batch: the loss is the loss of the whole global batch, so the global
  contrastive loss sees every device's negatives and BatchNorm normalizes with the
  statistics of the global batch (synchronized). ``negatives="per_device"`` splits the
  global loss into the devices' blocks (``global_contrastive_loss(negative_groups=N)``).
- **TensorFlow**: ``tf.distribute.MirroredStrategy`` over the local GPUs (or CPUs when
  there is no GPU). Each replica runs the step on its share; its loss is divided by the
  number of replicas and the optimizer sums the gradients. ``negatives="global"``
  gathers the global embeddings of every replica (``ReplicaContext.all_gather``, whose
  gradient flows back to each replica's rows); BatchNorm statistics are per replica
  unless ``sync_batch_norm`` (Keras' ``BatchNormalization(synchronized=True)``, which
  covers unmasked inputs only: Keras computes masked statistics, e.g. those of the
  sentence projections, per replica). The batches reach the strategy through a
  ``tf.data`` pipeline of global batches (``wrap_data``).
- **PyTorch**: ``torch.nn.parallel.DistributedDataParallel``, one process per device
  started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).
  Keras' torch trainer calls the model directly, so ``train_step`` is replaced by the
  same step with its forward pass through the DDP wrapper (DDP averages the gradients
  in ``backward``). ``negatives="global"`` gathers with a differentiable all-gather.
  BatchNorm statistics are per process (Keras' BatchNormalization has no synchronized
  mode on PyTorch; ``sync_batch_norm`` is refused); the moving statistics are averaged
  over the processes at every epoch end so that every process keeps the same model.

In every engine the batch size of the data is the **global** batch, split evenly over
the devices (it must divide); with several processes (JAX multi-host, PyTorch DDP) each
process reads its own share (``PretrainingBatches.set_shard``), and only process 0
writes files. The local losses of LoVT compare regions and sentences of the same
sample and need nothing from other devices. Dropout masks are drawn per device on
TensorFlow and PyTorch (JAX draws those of the global batch), so with dropout a
data-parallel run is not bit-identical to a single-device run.

References: Keras' guides "Distributed training with Keras 3" (JAX),
"Multi-GPU distributed training with TensorFlow" and "... with PyTorch".
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import types
import warnings
from typing import Any

import keras

DISTRIBUTIONS = ("none", "data_parallel")
NEGATIVES = ("global", "per_device")


class DistributionError(ValueError):
    """A data-parallel setting this engine cannot run (the message says why)."""


@dataclasses.dataclass
class DataParallelSetup:
    """Where a run trains: the engine, the devices and this process's place.

    Attributes:
        distribution: ``"none"`` or ``"data_parallel"``.
        backend: Keras' backend.
        num_replicas: devices the global batch is split over (all processes).
        process_index, process_count: this process among the training processes.
        negatives: ``"global"`` (gathered from every device) or ``"per_device"``.
        sync_batch_norm: BatchNorm statistics over the global batch (JAX: always;
            TensorFlow: ``synchronized=True``; PyTorch: not available).
        strategy: the ``tf.distribute`` strategy (TensorFlow), else None.
        previous: the Keras distribution active before (JAX), restored by ``close``.
    """

    distribution: str = "none"
    backend: str = dataclasses.field(default_factory=keras.backend.backend)
    num_replicas: int = 1
    process_index: int = 0
    process_count: int = 1
    negatives: str = "global"
    sync_batch_norm: bool = False
    strategy: Any = None
    previous: Any = None

    @property
    def active(self) -> bool:
        return self.distribution != "none" and self.num_replicas > 1

    @property
    def is_chief(self) -> bool:
        """True for the process that writes the run's files (process 0)."""
        return self.process_index == 0

    def scope(self):
        """The context to build and compile the model in (TensorFlow's strategy scope)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self) -> str:
        if not self.active:
            return "one device"
        where = (f"{self.num_replicas} devices" if self.process_count == 1 else
                 f"{self.num_replicas} devices in {self.process_count} processes "
                 f"(this is process {self.process_index})")
        engine = {"jax": "keras.distribution.DataParallel",
                  "tensorflow": "tf.distribute.MirroredStrategy",
                  "torch": "torch DistributedDataParallel"}[self.backend]
        return (f"data parallel on {where} with {engine}; global-loss negatives "
                f"{'from all devices' if self.negatives == 'global' else 'per device'}")

    def shard_data(self, *datasets) -> None:
        """Makes every process read its own share of each batch (several processes)."""
        for data in datasets:
            if data is None:
                continue
            if self.process_count > 1:
                if not hasattr(data, "set_shard"):
                    raise DistributionError(
                        f"{type(data).__name__} cannot be sharded over processes (it has no "
                        "set_shard); use PretrainingBatches or ImageOnlyBatches")
                data.set_shard(self.process_index, self.process_count)
            _check_divisible(data, self.num_replicas // self.process_count)

    def wrap_data(self, data):
        """What ``fit`` gets for ``data`` (a ``PyDataset`` of global batches): the data
        itself, except on TensorFlow, where a ``tf.data`` pipeline re-batched to the
        global batch lets the strategy split every batch into the replicas' shares
        (given a ``PyDataset``, Keras' TensorFlow trainer does not split its batches)."""
        if data is None or not self.active or self.backend != "tensorflow":
            return data
        return _tf_global_batches(data)

    def prepare_model(self, model: keras.Model) -> None:
        """After the model is built and compiled: where its global loss takes its
        negatives and how its loss is scaled; on PyTorch, the DDP wrapper."""
        if not self.active:
            return
        _check_negatives_supported(model, self)
        object.__setattr__(model, "cross_replica", CrossReplicaLoss(self))
        if self.backend == "tensorflow":
            _skip_symbolic_build(model, self)
            if self.sync_batch_norm:
                synchronize_batch_norm(model)
        if self.backend == "torch":
            _enable_ddp(model)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """Callbacks that must run first in ``fit`` (PyTorch: the epoch logs and the
        moving statistics averaged over the processes)."""
        if self.active and self.backend == "torch" and self.process_count > 1:
            return [_AverageOverProcesses()]
        return []

    def close(self) -> None:
        """Restores the Keras distribution that was active before (JAX)."""
        if self.backend == "jax" and self.distribution != "none":
            keras.distribution.set_distribution(self.previous)

    def __enter__(self) -> DataParallelSetup:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class CrossReplicaLoss:
    """What a pretrainer's loss needs to know of data parallelism (set as its
    ``cross_replica`` attribute by ``DataParallelSetup.prepare_model``)."""

    def __init__(self, setup: DataParallelSetup):
        self.setup = setup

    def global_negatives(self, image_global, report_global) -> dict:
        """Keyword arguments of ``global_contrastive_loss`` choosing the negatives."""
        setup = self.setup
        if setup.backend == "jax":  # the loss sees the global batch
            return {} if setup.negatives == "global" else {"negative_groups": setup.num_replicas}
        if setup.negatives == "per_device":  # each replica sees its own share
            return {}
        return {"image_candidates": _all_gather(image_global, setup),
                "report_candidates": _all_gather(report_global, setup)}

    def scale_loss(self, total):
        """TensorFlow sums the replicas' gradients: each replica's loss is divided by
        their number (as Keras' own losses do); JAX and DDP need nothing."""
        if self.setup.backend == "tensorflow":
            return total / float(self.setup.num_replicas)
        return total


def setup_distribution(distribution: str = "none", negatives: str = "global",
                       sync_batch_norm: bool = False, job_addresses: str | None = None,
                       num_processes: int | None = None, process_id: int | None = None,
                       devices: list | None = None) -> DataParallelSetup:
    """Starts the engine of Keras' backend for ``distribution`` (see the module docstring).

    Call it before building the model (JAX's layout and TensorFlow's scope apply to the
    variables created afterwards).

    Args:
        distribution: ``"none"`` (one device) or ``"data_parallel"`` (every device).
        negatives: ``"global"`` or ``"per_device"`` (see ``CrossReplicaLoss``).
        sync_batch_norm: BatchNorm statistics over the global batch (TensorFlow only;
            JAX always does; refused on PyTorch).
        job_addresses, num_processes, process_id: JAX multi-host, passed to
            ``keras.distribution.initialize`` (or from its environment variables
            ``KERAS_DISTRIBUTION_JOB_ADDRESSES``, ``..._NUM_PROCESSES``,
            ``..._PROCESS_ID``; on a Cloud TPU VM slice only the number of processes:
            JAX finds the rest). Without any of them the run stays on this host.
        devices: JAX/TensorFlow: the devices to use (default: all).

    Raises:
        DistributionError: an unknown value, or a setting the engine cannot run.
    """
    if distribution not in DISTRIBUTIONS:
        raise DistributionError(f"distribution={distribution!r} is not one of {DISTRIBUTIONS}")
    if negatives not in NEGATIVES:
        raise DistributionError(f"negatives={negatives!r} is not one of {NEGATIVES}")
    backend = keras.backend.backend()
    if distribution == "none":
        return DataParallelSetup(backend=backend)
    if backend == "jax":
        return _setup_jax(negatives, job_addresses, num_processes, process_id, devices)
    if backend == "tensorflow":
        if job_addresses or (num_processes or 1) > 1:
            raise DistributionError(
                "TensorFlow runs data parallel on the devices of one machine "
                "(MirroredStrategy); for several machines use the JAX backend")
        return _setup_tensorflow(negatives, sync_batch_norm, devices)
    if backend == "torch":
        if sync_batch_norm:
            raise DistributionError(
                "sync_batch_norm: Keras' BatchNormalization has no synchronized mode on "
                "PyTorch; use JAX (always synchronized) or TensorFlow")
        return _setup_torch(negatives)
    raise DistributionError(f"data parallelism is not available on the {backend} backend")


# ----------------------------------------------------------------------------- JAX


def _multi_host_requested(job_addresses, num_processes) -> bool:
    return bool(job_addresses or (num_processes or 1) > 1
                or os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES")
                or int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")) > 1)


def _setup_jax(negatives, job_addresses, num_processes, process_id, devices):
    import jax

    if _multi_host_requested(job_addresses, num_processes):
        keras.distribution.initialize(job_addresses, num_processes, process_id)
    devices = list(devices or keras.distribution.list_devices())
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    return DataParallelSetup(
        distribution="data_parallel", backend="jax", num_replicas=len(devices),
        process_index=jax.process_index(), process_count=jax.process_count(),
        negatives=negatives, sync_batch_norm=True, previous=previous)


# ----------------------------------------------------------------------- TensorFlow


def _setup_tensorflow(negatives, sync_batch_norm, devices):
    import tensorflow as tf

    if devices is None:
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    # The default all-reduce (NCCL) needs GPUs; on CPUs the replicas reduce on one device.
    cross_device_ops = (None if any("GPU" in str(d).upper() for d in devices)
                        else tf.distribute.ReductionToOneDevice())
    strategy = tf.distribute.MirroredStrategy(devices=devices,
                                              cross_device_ops=cross_device_ops)
    return DataParallelSetup(
        distribution="data_parallel", backend="tensorflow",
        num_replicas=strategy.num_replicas_in_sync, negatives=negatives,
        sync_batch_norm=bool(sync_batch_norm), strategy=strategy)


def _tf_global_batches(data):
    """``data``'s batches as a ``tf.data.Dataset`` of global batches, each split by the
    strategy into contiguous replica shares (``unbatch().batch(B)`` tells it B)."""
    import tensorflow as tf

    first = data[0]
    size = int(next(iter(first.values())).shape[0])
    signature = {name: tf.TensorSpec((None, *value.shape[1:]), tf.as_dtype(value.dtype))
                 for name, value in first.items()}

    def batches():
        for index in range(len(data)):
            yield data[index]

    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    dataset = dataset.unbatch().batch(size, drop_remainder=True)
    # A known length: without it Keras runs one more (empty) step per epoch to find the
    # end, which counts in the epoch's metric means.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(data)))
    return dataset.prefetch(2)


def _skip_symbolic_build(model: keras.Model, setup: DataParallelSetup) -> None:
    """Under a strategy, Keras' TensorFlow trainer first averages a distributed batch
    over the replicas to build the model symbolically, which fails on the batches'
    boolean masks (``AddN`` of bool). The pretrainer is built before ``fit`` (its
    variables, and here its optimizer's), so that build has nothing to do: skip it."""
    if not model.built:
        raise DistributionError("build the model (call it on a batch) before training it")
    if model.optimizer is not None and not model.optimizer.built:
        with setup.scope():
            model.optimizer.build(model.trainable_variables)
    object.__setattr__(model, "_maybe_symbolic_build",
                       lambda iterator=None, data_batch=None: None)


def synchronize_batch_norm(model: keras.Model) -> int:
    """TensorFlow: every BatchNormalization of ``model`` normalizes with the statistics
    of the global batch (Keras' ``synchronized=True``). Returns how many layers."""
    count = 0
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count


# -------------------------------------------------------------------------- PyTorch


def _setup_torch(negatives):
    import torch
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        raise DistributionError(
            "PyTorch runs data parallel with one process per device: start the run "
            "with torchrun, e.g. torchrun --nproc_per_node 2 -m tools.run --gin ...")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, init_method="env://",
                                timeout=datetime.timedelta(minutes=30))
    return DataParallelSetup(
        distribution="data_parallel", backend="torch", num_replicas=dist.get_world_size(),
        process_index=dist.get_rank(), process_count=dist.get_world_size(),
        negatives=negatives)


def _enable_ddp(model: keras.Model) -> None:
    """Wraps the built model in DDP (rank 0's variables are copied to every process)
    and routes the forward pass of ``train_step`` through the wrapper."""
    import torch

    if getattr(model, "jit_compile", False):
        model.jit_compile = False  # torch.compile with DDP is not supported here
    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    # Layers that no active loss reaches (e.g. a head switched off) get no gradient;
    # DDP must know, or its second step fails.
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                    find_unused_parameters=True)
    _decorrelate_dropout(model)
    object.__setattr__(model, "train_step", types.MethodType(_ddp_train_step, model))
    object.__setattr__(model, "_ddp_module", ddp)
    model.train_function = None


def _ddp_train_step(self, data):
    """Keras' PyTorch ``train_step`` (keras/src/backend/torch/trainer.py) with the
    forward pass through the DDP wrapper, which averages the gradients in backward."""
    import torch

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = self._ddp_module(x, training=True)
    self.zero_grad()
    loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                              training=True)
    first = next(i for i in keras.tree.flatten(x) if i is not None)
    self._loss_tracker.update_state(loss, sample_weight=first.shape[0])
    if self.optimizer is not None:
        loss = self.optimizer.scale_loss(loss)
    if self.trainable_weights:
        loss.backward()
        weights = self.trainable_weights[:]
        with torch.no_grad():
            self.optimizer.apply([v.value.grad for v in weights], weights)
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _decorrelate_dropout(model: keras.Model) -> None:
    """DDP copied process 0's dropout seed states everywhere: offset them per process
    so that the processes draw different dropout masks for their different samples."""
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    if rank == 0:
        return
    with torch.no_grad():
        for variable in model.non_trainable_variables:
            if "seed_generator" in variable.path and not torch.is_floating_point(variable.value):
                variable.value[0] += rank * 7919


class _AverageOverProcesses(keras.callbacks.Callback):
    """First callback of a DDP run: averages the epoch logs (loss, val_loss, every
    component) over the processes, so that early stopping and the best checkpoint decide
    alike everywhere, and the BatchNorm moving statistics, so that every process keeps
    the same model. After every batch it also sums the metric variables' increments
    (sums and counts of the running means) over the processes, so that every process
    holds the means of the global batches, and a mid-epoch checkpoint resumes on any
    number of processes."""

    def __init__(self):
        super().__init__()
        self._synced = None  # the metric variables after the last sum, flat

    def _metric_variables(self):
        import torch

        return [v for v in self.model.metrics_variables if torch.is_floating_point(v.value)]

    def _flat(self, variables):
        import torch

        return torch.cat([v.value.detach().reshape(-1).double().cpu() for v in variables])

    def on_epoch_begin(self, epoch, logs=None):
        self._synced = None

    def on_train_batch_begin(self, batch, logs=None):
        variables = self._metric_variables()
        if self._synced is None and variables:
            # after Keras' reset and a resumed checkpoint's metrics, before any update
            self._synced = self._flat(variables)

    def on_train_batch_end(self, batch, logs=None):
        import torch
        import torch.distributed as dist

        variables = self._metric_variables()
        if not variables or self._synced is None:
            return
        with torch.no_grad():
            increment = (self._flat(variables) - self._synced).to(_reduce_device())
            dist.all_reduce(increment)
            self._synced = self._synced + increment.cpu()
            offset = 0
            for variable in variables:
                size = variable.value.numel()
                variable.value.copy_(
                    self._synced[offset:offset + size].reshape(variable.value.shape))
                offset += size

    def on_epoch_end(self, epoch, logs=None):
        import torch
        import torch.distributed as dist

        world = dist.get_world_size()
        if logs:
            names = sorted(k for k, v in logs.items() if isinstance(v, (int, float)))
            values = torch.tensor([float(logs[k]) for k in names], dtype=torch.float64,
                                  device=_reduce_device())
            dist.all_reduce(values)
            logs.update({k: float(v) / world for k, v in zip(names, values.cpu().tolist())})
        with torch.no_grad():
            for variable in self.model.non_trainable_variables:
                value = variable.value
                if torch.is_floating_point(value):
                    summed = value.detach().clone()
                    dist.all_reduce(summed)
                    value.copy_(summed / world)


def _reduce_device():
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------------- shared


def _all_gather(x, setup: DataParallelSetup):
    """The rows of every replica, concatenated in replica order; differentiable (the
    gradient of each replica's rows is the sum over the replicas' losses)."""
    if setup.backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_replica_context().all_gather(x, axis=0)
    if setup.backend == "torch":
        import torch
        import torch.distributed.nn.functional as dist_fn

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated in torch 2.13
            return torch.cat(dist_fn.all_gather(x), dim=0)
    raise DistributionError(f"no all-gather on {setup.backend}")  # JAX needs none


def _check_negatives_supported(model: keras.Model, setup: DataParallelSetup) -> None:
    """Refuses a model whose batch-wide loss this engine would compute wrongly."""
    handled = hasattr(model, "global_temperature")  # LoVTPretrainer: CrossReplicaLoss
    batch_wide = getattr(model, "uses_batch_negatives", handled)
    if not batch_wide or handled:
        return
    if setup.backend == "jax" and setup.negatives == "global":
        return  # the loss sees the global batch
    raise DistributionError(
        f"{type(model).__name__} takes negatives from the whole batch and has no "
        f"cross-device mode on {setup.backend} with negatives={setup.negatives!r}; run it "
        "data parallel on JAX with negatives='global'")


def _check_divisible(data, local_replicas: int) -> None:
    size = getattr(data, "local_batch_size", getattr(data, "batch_size", None))
    if size is not None and local_replicas > 1 and size % local_replicas:
        raise DistributionError(
            f"a batch of {size} per process does not split into {local_replicas} equal "
            "device shares; use a batch size divisible by the number of devices")
