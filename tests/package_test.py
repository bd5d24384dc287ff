"""``import lovt_keras``: cheap, and enough for Keras to load the models it saves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

from lovt_keras.models import ResNetImageEncoder

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import json, sys, time
start = time.perf_counter()
import lovt_keras
seconds = time.perf_counter() - start
keras_before = "keras" in sys.modules
import keras
model = keras.saving.load_model(sys.argv[1], compile=False)
features = model(keras.ops.ones((1, 32, 32, 1)))
print(json.dumps({
    "keras_before": keras_before, "seconds": seconds, "class": type(model).__name__,
    "conv5": list(features["conv5"].shape),
    "conv5_sum": float(keras.ops.convert_to_numpy(keras.ops.sum(features["conv5"]))),
    "modules": sorted(m for m in sys.modules if m.startswith("lovt_keras")),
}))
"""


def _decorated_modules():
    """The modules that register a class with Keras."""
    for path in sorted((ROOT / "lovt_keras").rglob("*.py")):
        if "@keras.saving.register_keras_serializable" in path.read_text():
            yield ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_import_lovt_keras_alone_lets_keras_load_its_models(tmp_path):
    encoder = ResNetImageEncoder(depth=18, width=8, image_size=32)
    expected = encoder(np.ones((1, 32, 32, 1), "float32"))["conv5"]
    encoder.save(tmp_path / "image_encoder.keras")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "image_encoder.keras")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    # The package import does not import Keras (it registers once Keras is imported).
    assert report["keras_before"] is False and report["seconds"] < 1.0
    assert report["class"] == "ResNetImageEncoder" and report["conv5"] == [1, 1, 1, 64]
    np.testing.assert_allclose(report["conv5_sum"],
                               float(keras.ops.convert_to_numpy(keras.ops.sum(expected))),
                               rtol=1e-4)
    assert set(_decorated_modules()) <= set(report["modules"])
