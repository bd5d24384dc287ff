import dataclasses
import json

import keras
import numpy as np
import pytest

from lovt_keras.training import evaluation as ev
from lovt_keras.training.compiled_models import CompiledModels
from lovt_keras.training.tasks import synth_task

SIZES = dict(num_train=12, num_validation=6, num_test=6, seed=1)


def _results_equal(a: dict, b: dict) -> None:
    """Bitwise: a reused model must train exactly as the run's own model would."""
    assert a["history"] == b["history"]
    assert a["val"] == b["val"] and a["test"] == b["test"]
    assert (a["epochs"], a["best_epoch"]) == (b["epochs"], b["best_epoch"])


def _runs(task, factories, models, folder, use_feature_cache=None):
    """The first factory at seed 0, lr 1e-2, then the second at seed 1, lr 1e-3, with
    ``models`` (None: a new model per run); each result with its history."""
    results = []
    for i, (factory, seed, lr) in enumerate(((factories[0], 0, 1e-2), (factories[1], 1, 1e-3))):
        result = ev.run_task(task, factory, lr, seed, folder / str(i), compiled_models=models,
                             use_feature_cache=use_feature_cache)
        results.append(dict(result, history=json.loads((folder / str(i) / "history.json")
                                                       .read_text())))
    return results


@pytest.mark.parametrize("name,cache", [
    ("synth_opacity_linear_100", None),
    pytest.param("synth_opacity_linear_100", False, marks=pytest.mark.large),
    pytest.param("synth_opacity_yolov3_frozen_100", None, marks=pytest.mark.large),
    pytest.param("synth_pneumothorax_unet_frozen", None, marks=pytest.mark.large),
])
def test_a_reused_model_gives_the_results_of_a_new_one(tmp_path, name, cache):
    """Two runs (another seed, learning rate and, on cached features, encoder): the same
    results, to the bit, with the first run's compiled model reused by the second as
    with a new model per run."""
    task = synth_task(name, image_size=64, batch_size=4, max_epochs=2, lr_grid=(1e-2, 1e-3),
                      dataset_options=dict(SIZES, cache_dir=str(tmp_path / "c")))
    # Two factories of one architecture (each run's random encoder follows its seed).
    # A model that runs its encoder is kept per encoder: there, one factory twice.
    first = ev.random_init(18, width=8)
    factories = [first, first] if cache is False else [first, ev.random_init(18, width=8)]
    fresh = _runs(task, factories, None, tmp_path / "fresh", cache)
    models = CompiledModels()
    reused = _runs(task, factories, models, tmp_path / "reused", cache)
    for a, b in zip(fresh, reused):
        _results_equal(a, b)
    assert (models.built, models.reused, len(models)) == (1, 1, 1)
    # The runs differ from each other (the state really was replaced).
    assert fresh[0]["history"] != fresh[1]["history"]
    assert fresh[0]["learning_rate"] != fresh[1]["learning_rate"]
    models.release_encoder(id(first))
    assert len(models) == (0 if cache is False else 1)


def test_keys_separate_different_computations(tmp_path):
    task = synth_task("synth_opacity_linear_100", image_size=64, batch_size=4, max_epochs=1,
                      lr_grid=(1e-2,), dataset_options=dict(SIZES, cache_dir=str(tmp_path / "c")))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3, weight_decay=1e-6))
    key = CompiledModels.key(task.to_dict(), model)
    model.compile(optimizer=keras.optimizers.Adam(3e-3, weight_decay=1e-6))
    assert CompiledModels.key(task.to_dict(), model) == key  # the rate is a variable
    model.compile(optimizer=keras.optimizers.Adam(1e-3, weight_decay=1e-5))
    assert CompiledModels.key(task.to_dict(), model) != key
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    other.compile(optimizer=keras.optimizers.Adam(1e-3, weight_decay=1e-6))
    assert CompiledModels.key(task.to_dict(), other) != key
    assert CompiledModels.key(task.to_dict(), model, 7) != CompiledModels.key(task.to_dict(),
                                                                             model)
    longer = dataclasses.replace(task, max_epochs=2)
    assert CompiledModels.key(longer.to_dict(), model) != CompiledModels.key(task.to_dict(),
                                                                            model)


def test_the_least_recently_used_model_goes_first():
    models = CompiledModels(capacity=2)
    built = [keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]) for _ in range(3)]
    batch = (np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32"))
    for m in built:  # as after a run: compiled and trained
        m.compile(optimizer="adam", loss="mse")
        m.fit(*batch, verbose=0)
    assert models.take("a", built[0], batch) is built[0]
    assert models.take("b", built[1], batch) is built[1]
    again = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    again.compile(optimizer="adam", loss="mse")
    assert models.take("a", again, batch) is built[0]  # "a" is now the most recent
    # ... now holding the new model's weights.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(built[0].layers[0].kernel),
                                  keras.ops.convert_to_numpy(again.layers[0].kernel))
    assert models.take("c", built[2], batch) is built[2]
    assert len(models) == 2 and models.take("b", built[1], batch) is built[1]  # b was dropped
    assert (models.built, models.reused) == (4, 1)
    with pytest.raises(ValueError, match="capacity"):
        CompiledModels(capacity=0)
