"""The quickstart end to end at toy size (large: two pretrainings and six probes)."""

import json

import numpy as np
import pytest

from lovt_keras.training.quickstart import QuickstartConfig, run_quickstart


@pytest.mark.large
def test_quickstart_writes_table_plots_and_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("LOVT_KERAS_CACHE", str(tmp_path / "cache"))
    config = QuickstartConfig(
        num_train=32, num_validation=16, num_test=16, image_size=64, batch_size=8,
        epochs=1, steps_per_epoch=2, hidden_dim=64, projection_dim=32, probe_train=16,
        probe_test=16, probe_seeds=2, probe_epochs=1,
    )
    summary = run_quickstart(tmp_path / "run", config)
    methods = {r["method"] for r in summary["results"]}
    assert methods == {"Random init", "LoVT", "Global only"}
    assert len(summary["results"]) == 6
    for r in summary["results"]:
        assert 0.0 <= r["mean"] <= 1.0 and np.isfinite(r["ci95"])
        assert len(r["values"]) == 2
        assert r["mean"] == pytest.approx(np.mean(r["values"]), abs=1e-6)
        assert r["learning_rate"] in config.probe_learning_rates
    for name in ("results.csv", "results.md", "loss_curves.png", "quickstart.json",
                 "lovt/image_encoder.keras", "ablation_no_l/image_encoder.keras"):
        assert (tmp_path / "run" / name).is_file(), name
    table = (tmp_path / "run" / "results.md").read_text().splitlines()
    assert len(table) == 5  # header, rule, three methods
    assert json.loads((tmp_path / "run" / "quickstart.json").read_text())["backend"]
