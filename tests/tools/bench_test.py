import json
import mmap

import numpy as np
import pytest
from keras import ops

from lovt_keras.losses import contrastive
from lovt_keras.testing.fixtures import random_batch
from lovt_keras.training.flops import count_forward_flops
from tools import bench, bench_train_step, run

torch = pytest.importorskip("torch")
from tools import bench_torch  # noqa: E402  (needs torch)


def _losses_inputs():
    rng = np.random.default_rng(0)
    batch, regions, sentences, dim = 3, 16, 4, 8
    sentence_mask = np.array([[True, True, True, False], [True, False, False, False],
                              [False, False, False, False]])
    return dict(
        image_global=rng.normal(size=(batch, dim)).astype("float32"),
        report_global=rng.normal(size=(batch, dim)).astype("float32"),
        region_embeddings=rng.normal(size=(batch, regions, dim)).astype("float32"),
        report_to_image=rng.normal(size=(batch, regions, dim)).astype("float32"),
        region_weights=rng.uniform(size=(batch, regions)).astype("float32"),
        sentence_embeddings=rng.normal(size=(batch, sentences, dim)).astype("float32"),
        image_to_report=rng.normal(size=(batch, sentences, dim)).astype("float32"),
        sentence_weights=rng.uniform(size=(batch, sentences)).astype("float32"),
        sentence_mask=sentence_mask,
    )


def _numpy(components):
    return {k: float(ops.convert_to_numpy(v)) for k, v in components.items()}


def _torch_numpy(components):
    return {k: float(v.detach().numpy()) for k, v in components.items()}


def test_plain_pytorch_losses_equal_lovt_keras_losses():
    x = _losses_inputs()
    t = {k: torch.from_numpy(v) for k, v in x.items()}
    expected = _numpy(contrastive.global_contrastive_loss(
        x["image_global"], x["report_global"], temperature=0.1))
    got = _torch_numpy(bench_torch.global_contrastive_loss(
        t["image_global"], t["report_global"], 0.1))
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-5)

    for smooth, threshold in ((True, 0.5), (False, 0.3)):
        np.testing.assert_allclose(
            bench_torch.spatial_positive_weights(4, 4, threshold, 1.0, smooth),
            contrastive.spatial_positive_weights(4, 4, threshold, 1.0, smooth), rtol=1e-6)
    targets = torch.from_numpy(bench_torch.spatial_positive_weights(4, 4))
    for weights in (None, "region_weights"):
        expected = _numpy(contrastive.local_image_loss(
            x["region_embeddings"], x["report_to_image"],
            region_weights=x[weights] if weights else None, grid_shape=(4, 4)))
        got = _torch_numpy(bench_torch.local_image_loss(
            t["region_embeddings"], t["report_to_image"], t[weights] if weights else None,
            targets))
        np.testing.assert_allclose([got[k] for k in expected], list(expected.values()),
                                   rtol=1e-5)
    for weights in (None, "sentence_weights"):
        expected = _numpy(contrastive.local_report_loss(
            x["sentence_embeddings"], x["image_to_report"], x["sentence_mask"],
            sentence_weights=x[weights] if weights else None))
        got = _torch_numpy(bench_torch.local_report_loss(
            t["sentence_embeddings"], t["image_to_report"], t["sentence_mask"],
            t[weights] if weights else None))
        np.testing.assert_allclose([got[k] for k in expected], list(expected.values()),
                                   rtol=1e-5, atol=1e-6)


def test_plain_pytorch_sentence_pooling_equals_lovt_keras():
    from lovt_keras.models.report_encoder import sentence_max_pool

    batch = random_batch(3, max_tokens=16, max_sentences=4, seed=1)
    features = np.random.default_rng(0).normal(size=(3, 16, 5)).astype("float32")
    expected = ops.convert_to_numpy(sentence_max_pool(features, batch["sentence_ids"], 4))
    got = bench_torch.sentence_max_pool(torch.from_numpy(features),
                                        torch.from_numpy(batch["sentence_ids"]).long(), 4)
    np.testing.assert_allclose(got.numpy(), expected)


# About 30 s on a quiet 2-core CPU (the first step compiles; the plain-PyTorch step starts
# a second Python): over the fast suite's budget.
@pytest.mark.large
def test_tiny_runs_against_plain_pytorch_with_consistent_figures(tmp_path, capsys):
    result = bench.main(["--config", "tiny", "--steps", "3", "--warmup", "1",
                         "--matmul_size", "128", "--output_dir", str(tmp_path)])
    printed = capsys.readouterr().out
    written = json.loads((tmp_path / f"tiny-{result['backend']}.json").read_text())
    assert written == json.loads(json.dumps(result))

    # The model tools.run builds from the same files (tiny.gin: batch 4 at 64 px, a
    # ResNet-18 of width 8, a 2-layer BERT with 512 tokens).
    files = list(bench.CONFIGS["tiny"].files)
    model = run.configure(files, []).model()
    batch = random_batch(4, 64, 64, 8, 512)
    forward = count_forward_flops(model, batch).total
    assert result["model"] == "ResNet-18 (width 8) + 2-layer BERT (vocabulary 512)"
    assert result["weights"] == sum(int(np.prod(w.shape)) for w in model.weights)
    assert result["trainable_weights"] == sum(
        int(np.prod(w.shape)) for w in model.trainable_weights)
    # The plain-PyTorch model has exactly these weights, frozen ones included, and
    # imported no Keras.
    reference = result["reference"]
    assert (reference["weights"], reference["trainable_weights"]) == (
        result["weights"], result["trainable_weights"])
    assert reference["keras_imported"] is False
    assert np.isfinite(reference["loss"]) and np.isfinite(result["keras"]["loss"])

    step, batch_size = result["keras"]["step"], result["batch_size"]
    assert batch_size == 4 and step["steps"] == 3 == len(step["times_s"])
    assert step["images_per_s"] == pytest.approx(batch_size / step["median_s"])
    assert step["min_s"] <= step["median_s"] and step["iqr_s"] >= 0
    assert reference["step"]["images_per_s"] == pytest.approx(
        batch_size / reference["step"]["median_s"])
    assert result["speed_vs_plain_pytorch"] == pytest.approx(
        reference["step"]["median_s"] / step["median_s"])
    flops = result["flops"]
    assert flops["forward_per_step"] == forward  # batch-1 count x 4 = the batch's count
    assert flops["training_per_step"] == 3 * forward
    assert result["keras"]["achieved_flops_per_s"] == pytest.approx(
        flops["training_per_step"] / step["median_s"])
    assert result["matmul"]["ceiling_flops_per_s"] >= result["matmul"]["keras_flops_per_s"]
    assert result["keras"]["peak_rss_bytes"] > 100e6 and reference["peak_rss_bytes"] > 100e6
    # Memory at each stage: resident <= the peak so far, the peaks never fall, and the
    # last peak is the run's. Tolerance 8 MB: the kernel folds each thread's page
    # counters into the process's lazily (up to 64 pages per thread late).
    for figures in (result["keras"], reference):
        memory = figures["memory"]
        assert list(memory) == list(bench.MEMORY_STAGES)
        peaks = [memory[stage]["peak"] for stage in bench.MEMORY_STAGES]
        peaks.append(figures["peak_rss_bytes"])
        assert all(later >= earlier - 8e6 for earlier, later in zip(peaks, peaks[1:]))
        assert all(0 < memory[stage]["rss"] <= memory[stage]["peak"]
                   for stage in bench.MEMORY_STAGES)
    assert "| tiny | plain PyTorch | " in printed.split(bench.MEMORY_HEADER)[1]

    assert "| tiny | Keras (" in printed and "| tiny | plain PyTorch |" in printed
    assert f"{result['weights']:,} weights" in printed
    table = (tmp_path / f"tiny-{result['backend']}.md").read_text()
    assert table in printed
    # --table rebuilds the same table from the JSON.
    bench.main(["--table", str(tmp_path / f"tiny-{result['backend']}.json")])
    assert capsys.readouterr().out == table


def test_memory_bytes_sees_an_allocation():
    # A fresh anonymous mapping, not malloc: in a worker where tools.run's
    # keep_freed_memory has run, malloc hands back pages an earlier test freed, and
    # resident memory would not move.
    before = bench.memory_bytes()
    block = mmap.mmap(-1, 64 * 2**20)
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1  # 64 MiB, every page written
    during = bench.memory_bytes()
    assert during["rss"] - before["rss"] >= 60 * 2**20
    assert before["rss"] <= before["peak"] <= during["peak"] and during["rss"] <= during["peak"]
    assert during["peak"] <= bench.peak_rss_bytes()
    block.close()


def test_memory_table_gives_each_stage_and_the_peak_above_the_imports():
    gb = 10**9

    def marks(*rss):
        return {stage: {"rss": int(value * gb), "peak": int(value * gb)}
                for stage, value in zip(bench.MEMORY_STAGES, rss, strict=True)}

    result = {"config": "full", "backend": "jax",
              "keras": {"memory": marks(0.9, 1.25, 3.0, 2.5), "peak_rss_bytes": 3.5 * gb},
              "reference": {"memory": marks(0.4, 0.5, 1.9, 1.8), "peak_rss_bytes": 2.0 * gb}}
    assert bench.memory_rows(result) == [
        "| full | Keras (jax) | 0.90 | 1.25 | 3.00 | 2.50 | 3.50 | 2.60 |",
        "| full | plain PyTorch | 0.40 | 0.50 | 1.90 | 1.80 | 2.00 | 1.60 |",
    ]
    # Runs from before the memory figures (older JSON) give no rows.
    del result["keras"]["memory"], result["reference"]["memory"]
    assert bench.memory_rows(result) == []


def test_bench_train_step_is_bench_with_the_mimic_config(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "main", lambda argv: calls.append(argv) or {})
    bench_train_step.main(["--steps", "2"])
    assert calls == [["--config", "mimic", "--steps", "2"]]


@pytest.mark.large
@pytest.mark.parametrize("config", ["full", "mimic"])
def test_plain_pytorch_model_has_the_keras_models_weights(config):
    spec = run.configure(list(bench.CONFIGS[config].files), list(bench.CONFIGS[config].bindings))
    model = spec.model()
    model(random_batch(1, 224, 64, 6 if config == "full" else 32,
                       model.report_encoder.backbone.vocabulary_size))
    reference = bench_torch.LoVT(bench.model_spec(model))
    assert bench_torch.weight_counts(reference) == (
        sum(int(np.prod(w.shape)) for w in model.weights),
        sum(int(np.prod(w.shape)) for w in model.trainable_weights))


def test_require_gpu_stops_before_building_on_a_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "device_description", lambda: "cpu: x86_64, 2 cores")
    with pytest.raises(SystemExit, match="sees no accelerator .cpu: x86_64, 2 cores.*venv-gpu"):
        bench.main(["--require_gpu", "--config", "tiny", "--output_dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written
