import math

import numpy as np
import pytest

from tools import bench_train_step, run


def test_bench_times_the_experiments_model_and_reports_consistent_figures(capsys):
    files = ["experiments/pretrain/lovt_mimic_100.gin", "gin/debug/tiny.gin"]
    figures = bench_train_step.main(
        [*(a for f in files for a in ("--gin", f)), "--no_bert_base", "--steps", "2",
         "--warmup", "1"])
    printed = capsys.readouterr().out
    # The same model as tools.run builds from these files (tiny.gin: batch 4,
    # gradient accumulation 2, a 2-layer BERT in place of the BERT folder).
    model = run.configure(files, []).model()
    from lovt_keras.testing.fixtures import random_batch

    model(random_batch(4, 64, 64, 8, 512))
    assert figures["weights"] == sum(int(np.prod(w.shape)) for w in model.weights)
    assert figures["trainable_weights"] == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert figures["batch_size"] == 4 and math.isfinite(figures["loss"])
    assert figures["images_per_s"] * figures["ms_per_step"] / 1000 == pytest.approx(4)
    assert figures["update_s"] == pytest.approx(2 * figures["ms_per_step"] / 1000)
    assert f"{figures['weights']:,} weights" in printed and "backend " in printed
    assert "ResNet-18 + 2-layer BERT (vocabulary 512)" in printed
