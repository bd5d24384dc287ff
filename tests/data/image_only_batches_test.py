"""Two augmented views per image, their view -> source maps, determinism."""

import math

import datasets
import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.data.image_augment import ConvirtAugmentation
from lovt_keras.data.image_only_batches import ImageOnlyBatches, view_to_source_matrix
from lovt_keras.data.pretraining_dataset import PretrainingBatches

SIZE = 48


def _dataset(num_studies=6):
    rng = np.random.default_rng(0)
    rows = {"image": [], "study_id": [], "sentences": []}
    for s in range(num_studies):
        for _ in range(1 + s % 2):  # studies with one and with two images
            rows["image"].append(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
            rows["study_id"].append(f"s{s}")
            rows["sentences"].append(["No finding."])
    features = datasets.Features({
        "image": datasets.Array2D((SIZE, SIZE), "uint8"),
        "study_id": datasets.Value("string"),
        "sentences": datasets.Sequence(datasets.Value("string")),
    })
    return datasets.Dataset.from_dict(rows, features=features)


STATS = {"mean": 0.5, "std": 0.25}


def _batches(training=True, **kwargs):
    source = PretrainingBatches(_dataset(), None, STATS, batch_size=2, training=training,
                                image_size=32, seed=3, workers=1)
    return ImageOnlyBatches(source, **kwargs)


def test_two_different_views_of_the_same_studies_as_the_source():
    data = _batches()
    batch = data[1]
    assert sorted(batch) == sorted([keys.IMAGES, keys.SECOND_IMAGES, keys.VIEW_TO_SOURCE])
    assert batch[keys.IMAGES].shape == batch[keys.SECOND_IMAGES].shape == (2, 32, 32, 1)
    assert batch[keys.VIEW_TO_SOURCE].shape == (2, 2, 2, 3)
    assert batch[keys.IMAGES].dtype == np.float32
    assert not np.allclose(batch[keys.IMAGES], batch[keys.SECOND_IMAGES])
    assert len(data) == 3 and data.num_studies == 6
    assert repr(data).startswith("ImageOnlyBatches(studies=6, batches=3, batch_size=2")
    # Normalized with the source's statistics: pixels in [0, 1] -> [-2, 2].
    assert batch[keys.IMAGES].min() >= -2 - 1e-6 and batch[keys.IMAGES].max() <= 2 + 1e-6


def test_views_are_pure_functions_of_seed_epoch_index():
    a, b = _batches(), _batches()
    np.testing.assert_array_equal(a[2][keys.IMAGES], b[2][keys.IMAGES])
    b.set_epoch(1)
    assert not np.allclose(a[0][keys.IMAGES], b[0][keys.IMAGES])
    # Validation: the same views in every epoch.
    v = _batches(training=False)
    first = v[0][keys.SECOND_IMAGES]
    v.set_epoch(4)
    np.testing.assert_array_equal(v[0][keys.SECOND_IMAGES], first)


def test_view_to_source_maps_the_drawn_pixels_back_to_their_source_position():
    # A source image with one bright square; the views are its crops, flips and affine
    # transforms without intensity changes. The square's centre in a view, mapped with
    # the view's matrix, is the square's centre in the source (within a pixel or two).
    source = np.zeros((96, 80), np.float32)
    source[40:46, 30:36] = 1.0  # centre (x, y) = (33, 43) in continuous coordinates
    augmentation = ConvirtAugmentation(64, crop_scale=(0.7, 1.0), brightness=None,
                                       contrast=None, blur_sigma=None)
    diagonal = math.hypot(96, 80)
    checked = flips = 0
    for seed in range(40):
        params = augmentation.sample_parameters(source.shape, np.random.default_rng(seed))
        view = augmentation.apply(source, params)
        if view.max() < 0.5 or view[[0, -1]].max() > 0 or view[:, [0, -1]].max() > 0:
            continue  # the square left the view or touches its border
        ys, xs = np.nonzero(view > 0.5)
        point = np.array([xs.mean() + 0.5, ys.mean() + 0.5, 1.0])
        matrix = view_to_source_matrix(params, 64, source.shape)
        np.testing.assert_allclose(matrix @ point * diagonal, [33, 43], atol=2.0,
                                   err_msg=str(params))
        checked += 1
        flips += params.flip
    assert checked >= 20 and 0 < flips < checked


def test_bad_arguments():
    source = PretrainingBatches(_dataset(), None, STATS, batch_size=2, image_size=32,
                                workers=1)
    with pytest.raises(TypeError, match="PretrainingBatches"):
        ImageOnlyBatches(_dataset())
    with pytest.raises(ValueError, match="image_size 64 differs"):
        ImageOnlyBatches(source, augmentation=ConvirtAugmentation(64))
