"""Tests of data-parallel training (``lovt_keras.training.distribution``).

The fast tests check the choices made for each engine in this process. The ``large``
ones run the engine with 2 devices in fresh processes (``data_parallel_worker.py``):
JAX with 2 virtual CPU devices, TensorFlow with 2 logical CPUs, PyTorch with 2 gloo
ranks on the loopback; each checks that one data-parallel step equals the
single-device step on the same global batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from lovt_keras.training.distribution import (
    CrossReplicaLoss,
    DataParallelSetup,
    DistributionError,
    setup_distribution,
)

WORKER = Path(__file__).with_name("data_parallel_worker.py")
BACKEND = keras.backend.backend()


def test_one_device_is_the_default_and_changes_nothing():
    setup = setup_distribution()
    assert not setup.active and setup.is_chief and setup.num_replicas == 1
    assert setup.describe() == "one device" and setup.callbacks() == []
    model = keras.Sequential([keras.layers.Dense(2)])
    setup.prepare_model(model)
    assert "cross_replica" not in model.__dict__


@pytest.mark.parametrize("kwargs, message", [
    ({"distribution": "model_parallel"}, "distribution='model_parallel' is not one of"),
    ({"distribution": "data_parallel", "negatives": "all"}, "negatives='all' is not one of"),
])
def test_unknown_settings_are_named(kwargs, message):
    with pytest.raises(DistributionError, match=message):
        setup_distribution(**kwargs)


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's launcher")
def test_pytorch_asks_for_torchrun():
    with pytest.raises(DistributionError, match="torchrun --nproc_per_node"):
        setup_distribution("data_parallel")
    with pytest.raises(DistributionError, match="no synchronized mode on PyTorch"):
        setup_distribution("data_parallel", sync_batch_norm=True)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's strategy")
def test_tensorflow_refuses_several_machines():
    with pytest.raises(DistributionError, match="one machine"):
        setup_distribution("data_parallel", num_processes=2)


@pytest.mark.parametrize("backend, negatives, expected", [
    ("jax", "global", {}),  # the loss sees the global batch
    ("jax", "per_device", {"negative_groups": 4}),
    ("tensorflow", "per_device", {}),  # each replica sees its share
    ("torch", "per_device", {}),
])
def test_where_the_global_negatives_come_from(backend, negatives, expected):
    setup = DataParallelSetup("data_parallel", backend, num_replicas=4, negatives=negatives)
    assert CrossReplicaLoss(setup).global_negatives(None, None) == expected


@pytest.mark.parametrize("backend, scale", [("tensorflow", 0.25), ("jax", 1.0), ("torch", 1.0)])
def test_the_loss_is_scaled_where_the_engine_sums_gradients(backend, scale):
    setup = DataParallelSetup("data_parallel", backend, num_replicas=4)
    assert CrossReplicaLoss(setup).scale_loss(2.0) == pytest.approx(2.0 * scale)


def test_a_batch_wide_loss_without_a_cross_device_mode_is_refused():
    from lovt_keras.models import ResNetImageEncoder, SimCLRPretrainer

    model = SimCLRPretrainer(ResNetImageEncoder(depth=18, image_size=32))
    for backend, negatives in (("tensorflow", "global"), ("torch", "global"),
                               ("jax", "per_device")):
        setup = DataParallelSetup("data_parallel", backend, num_replicas=2,
                                  negatives=negatives)
        with pytest.raises(DistributionError, match="SimCLRPretrainer takes negatives"):
            setup.prepare_model(model)
    # JAX computes the loss of the global batch: SimCLR's negatives are all there.
    setup = DataParallelSetup("data_parallel", "jax", num_replicas=2)
    setup.prepare_model(model)
    assert model.__dict__["cross_replica"].setup is setup


class _Batches:
    def __init__(self, batch_size):
        self.batch_size = batch_size
        self.shard = None

    def set_shard(self, index, count):
        self.shard = (index, count)
        self.local_batch_size = self.batch_size // count


def test_data_is_sharded_per_process_and_checked_per_device():
    data = _Batches(8)
    DataParallelSetup("data_parallel", "jax", num_replicas=4, process_index=1,
                      process_count=2).shard_data(data, None)
    assert data.shard == (1, 2) and data.local_batch_size == 4
    with pytest.raises(DistributionError, match="a batch of 6 per process does not split into 4"):
        DataParallelSetup("data_parallel", "jax", num_replicas=4).shard_data(_Batches(6))
    with pytest.raises(DistributionError, match="cannot be sharded over processes"):
        DataParallelSetup("data_parallel", "torch", num_replicas=2, process_count=2
                          ).shard_data(object())


# ----------------------------------------------------------------- the engines, 2 devices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_worker(tmp_path, *args, env=None, timeout=900):
    out = tmp_path / "step.json"
    command = [sys.executable, str(WORKER), "step", str(out), *args]
    completed = subprocess.run(command, env={**os.environ, **(env or {})}, timeout=timeout,
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out


def _assert_same_logs(parallel_logs, single_logs):
    for name, value in single_logs.items():
        assert parallel_logs[name] == pytest.approx(value, rel=2e-5, abs=2e-6), name


def _assert_same_update(result, relative):
    # The update differs from the single-device update by float rounding only (the
    # ResNet's BatchNorm over few values amplifies it to ~0.3 % on JAX).
    assert result["relative_update_error"] < relative, result
    assert result["replicas"] == 2


@pytest.mark.large
@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch runs one process per device (below)")
def test_one_data_parallel_step_equals_the_single_device_step(tmp_path):
    # JAX computes the step of the global batch, BatchNorm statistics included.
    # TensorFlow: BatchNorm in inference mode, as its masked BatchNorm statistics
    # (sentence projections) stay per replica even with sync_batch_norm.
    args = ["--frozen_batch_norm"] if BACKEND == "tensorflow" else []
    if BACKEND == "jax":
        # The single-device step in a process of its own: the first all-reduce of 2
        # virtual CPU devices hung (2 of 4 tries) in a process that had run a
        # single-device step first, never in a fresh one (6 of 6).
        reference = tmp_path / "single.npz"
        subprocess.run([sys.executable, str(WORKER), "step", str(reference), "--part",
                        "single"], check=True, timeout=900, capture_output=True)
        args = ["--part", "parallel", "--reference", str(reference)]
    result = json.loads(_run_worker(tmp_path, *args).read_text())
    # The data-parallel loss is the single-device loss of the same global batch.
    _assert_same_logs(result["parallel_logs"], result["single_logs"])
    _assert_same_update(result, relative=1e-2 if BACKEND == "jax" else 1e-4)


@pytest.mark.large
@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's DistributedDataParallel")
def test_one_ddp_step_on_two_ranks_equals_the_single_process_step(tmp_path):
    # BatchNorm in inference mode: DDP's BatchNorm statistics are per process.
    port = str(_free_port())
    processes = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        processes.append(subprocess.Popen(
            [sys.executable, str(WORKER), "step", str(tmp_path / "step.json"),
             "--frozen_batch_norm"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    results = [json.loads((tmp_path / f"step_rank{r}.json").read_text()) for r in range(2)]
    for result in results:
        _assert_same_update(result, relative=1e-4)
    # both ranks hold the same weights after the step
    assert results[0]["checksum"] == results[1]["checksum"]
    # each rank logs the loss of its half (against all gathered negatives); their mean
    # is the loss of the global batch
    mean_logs = {name: np.mean([r["parallel_logs"][name] for r in results])
                 for name in results[0]["parallel_logs"]}
    _assert_same_logs(mean_logs, results[0]["single_logs"])


def _pretrain(tmp_path, out, devices, *extra):
    command = [sys.executable, str(WORKER), "pretrain", str(out), "--devices", str(devices),
               "--cache", str(tmp_path / "synthcxr"), *extra]
    completed = subprocess.run(command, timeout=900, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    return completed.stdout


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.large
@pytest.mark.skipif(BACKEND == "torch", reason="the one-process engines")
def test_pretraining_on_two_devices_matches_one_and_resumes_on_one(tmp_path):
    # 2 epochs of 4 global batches of 8 from a tiny SynthCXR, AdamW, BatchNorm in
    # inference mode (TensorFlow's masked statistics are per replica, see above).
    frozen = ["--frozen_batch_norm"]
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    _pretrain(tmp_path, one, 1, *frozen)
    assert "data parallel on 2 devices" in _pretrain(tmp_path, two, 2, *frozen)
    # interrupted on 2 devices after 3 mini-batches, resumed on 1 device
    assert "interrupted after 3" in _pretrain(tmp_path, resumed, 2, "--stop_after", "3",
                                              *frozen)
    assert "resuming" in _pretrain(tmp_path, resumed, 1, *frozen)
    reference = _records(one)
    for out in (two, resumed):
        records = _records(out)
        assert len(records) == len(reference) == 2
        # Measured: epoch 1 equal to 1e-6 (JAX) and 3e-5 (TensorFlow), epoch 2 to 2e-4
        # (JAX): AdamW amplifies the float rounding of the sharded reductions (see the
        # weights below).
        for record, expected, rel in zip(records, reference, (1e-4, 1e-3)):
            for name in ("loss", "val_loss", "global_image_to_report_loss",
                         "local_image_l2att_loss"):
                assert record[name] == pytest.approx(expected[name], rel=rel), (out, name)
        weights = np.load(out / "final_weights.npz")
        reference_weights = np.load(one / "final_weights.npz")
        # AdamW divides by the gradient's size, so float rounding in nearly-zero
        # gradients moves some weights by up to a few learning rates (1e-3).
        assert max(float(np.max(np.abs(weights[k] - reference_weights[k])))
                   for k in reference_weights) < 1e-2


@pytest.mark.large
@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's DistributedDataParallel")
def test_ddp_pretraining_matches_one_process_and_resumes_on_one(tmp_path):
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    frozen = ["--frozen_batch_norm"]
    _pretrain(tmp_path, one, 1, *frozen)

    def two_ranks(out, *extra):
        port, processes = str(_free_port()), []
        for rank in range(2):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
                   "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            processes.append(subprocess.Popen(
                [sys.executable, str(WORKER), "pretrain", str(out), "--devices", "2",
                 "--cache", str(tmp_path / "synthcxr"), *frozen, *extra], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate(timeout=900)[0] for p in processes]
        assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:]
        return outputs

    outputs = two_ranks(two)
    assert "data parallel on 2 devices in 2 processes" in outputs[0]
    assert "epoch 1/2" not in outputs[1]  # rank 1 prints and writes nothing
    two_ranks(resumed, "--stop_after", "3")
    assert "resuming" in _pretrain(tmp_path, resumed, 1, *frozen)
    reference = _records(one)
    for out in (two, resumed):
        records = _records(out)
        assert len(records) == 2
        for record, expected, rel in zip(records, reference, (1e-4, 1e-3)):
            for name in ("loss", "val_loss", "global_image_to_report_loss"):
                assert record[name] == pytest.approx(expected[name], rel=rel), (out, name)
