"""Tests of the Object-CXR FROC (challenge froc.py / LoVT FrocMetric semantics)."""

from collections import namedtuple

import numpy as np
import pytest

from lovt_keras.metrics import FROC, OBJECT_CXR_FPS, froc

_Prediction = namedtuple("_Prediction", ["image", "probability", "x", "y"])


def _reference_froc(predictions_per_image, gt_boxes_per_image, fps=OBJECT_CXR_FPS):
    """The challenge loop with Python objects: a list of namedtuple predictions sorted by
    probability, a set of hit (image, box) ids, and the fps operating points consumed one
    per prediction."""
    preds = []
    for image, (boxes, scores) in enumerate(predictions_per_image):
        for (x, y, w, h), p in zip(np.asarray(boxes).reshape(-1, 4).tolist(), list(scores)):
            preds.append(_Prediction(image, float(p), x + w / 2, y + h / 2))
    preds = sorted(preds, key=lambda pred: pred.probability, reverse=True)
    objects = {
        image: [(x, y, x + w, y + h) for x, y, w, h in np.asarray(b).reshape(-1, 4).tolist()]
        for image, b in enumerate(gt_boxes_per_image)
    }
    num_objects = sum(len(v) for v in objects.values())
    num_images = len(gt_boxes_per_image)
    hits, false_positives, hit_ids, curve = 0, 0, set(), []
    for pred in preds:
        is_inside = False
        for index, (x1, y1, x2, y2) in enumerate(objects[pred.image]):
            if x1 <= pred.x <= x2 and y1 <= pred.y <= y2:
                is_inside = True
                if (pred.image, index) not in hit_ids:
                    hits += 1
                    hit_ids.add((pred.image, index))
        if not is_inside:
            false_positives += 1
        if false_positives / num_images >= fps[len(curve)]:
            curve.append(hits / num_objects)
            if len(curve) == len(fps):
                break
    if not curve:
        curve = [hits / num_objects] * len(fps)
    curve += [curve[-1]] * (len(fps) - len(curve))
    return float(np.mean(curve)), np.array(curve)


def _xywh_at(cx, cy, size=2.0):
    return [cx - size / 2, cy - size / 2, size, size]


def test_hand_case_overlapping_gt_repeat_hit_and_lagged_operating_points():
    # Image 0: GT A (0,0,10,10) and B (5,5,10,10), overlapping on [5,10]^2. Image 1: GT C
    # (20,20,4,4). Predictions by score (centres):
    #   0.9 img0 (7,7): inside A and B -> hits 2
    #   0.8 img0 (2,2): inside A, already hit -> ignored (no hit, no FP)
    #   0.7 img1 (0,0): FP 1 -> 1/2 >= 0.125 -> record 2/3
    #   0.6 img1 (22,22): hit C -> 3; FP rate still 1/2 >= 0.25 -> record 3/3 (lag quirk)
    #   0.5 img0 (100,100): FP 2 -> 1 >= 0.5 -> record 1
    # Unreached 1, 2, 4, 8 take the last value: [2/3, 1, 1, 1, 1, 1, 1].
    predictions = [
        ([_xywh_at(7, 7), _xywh_at(2, 2), _xywh_at(100, 100)], [0.9, 0.8, 0.5]),
        ([_xywh_at(0, 0), _xywh_at(22, 22)], [0.7, 0.6]),
    ]
    gt = [[[0, 0, 10, 10], [5, 5, 10, 10]], [[20, 20, 4, 4]]]
    mean, sensitivities = froc(predictions, gt)
    np.testing.assert_allclose(sensitivities, [2 / 3, 1, 1, 1, 1, 1, 1])
    assert mean == pytest.approx((2 / 3 + 6) / 7)


def test_hand_case_many_images_low_sensitivity():
    # 8 images, 4 GT boxes (images 0-3). FP rate step = 1/8 per FP.
    gt = [[[0, 0, 10, 10]]] * 4 + [np.zeros((0, 4))] * 4
    predictions = [([], [])] * 8
    predictions[0] = ([_xywh_at(5, 5)], [0.95])  # hit (1/4)
    predictions[4] = ([_xywh_at(50, 50)], [0.9])  # FP 1: 1/8 >= 0.125 -> 1/4
    predictions[1] = ([_xywh_at(5, 5)], [0.85])  # hit (2/4); 1/8 < 0.25
    predictions[5] = ([_xywh_at(50, 50)], [0.8])  # FP 2: 2/8 >= 0.25 -> 2/4
    predictions[2] = ([_xywh_at(10, 10)], [0.1])  # hit on the corner (inclusive) -> 3/4
    mean, sensitivities = froc(predictions, gt)
    # The scan ends before FP rate 0.5: the last recorded 2/4 fills the rest, the late hit
    # (only reached after the last recorded operating point) does not count.
    np.testing.assert_allclose(sensitivities, [0.25] + [0.5] * 6)
    assert mean == pytest.approx((0.25 + 6 * 0.5) / 7)


def test_no_operating_point_reached_uses_final_sensitivity():
    # 2 images, no false positive at all: sensitivity at the end of the scan everywhere.
    predictions = [([_xywh_at(5, 5)], [0.3]), ([], [])]
    gt = [[[0, 0, 10, 10]], [[40, 40, 5, 5]]]
    mean, sensitivities = froc(predictions, gt)
    np.testing.assert_allclose(sensitivities, [0.5] * 7)
    assert mean == pytest.approx(0.5)
    # No predictions: 0; no GT and no FP: 1 (LoVT's convention).
    assert froc([([], [])], [[[0, 0, 1, 1]]])[0] == 0.0
    assert froc([([], [])], [np.zeros((0, 4))])[0] == 1.0
    # No GT but false positives: every sensitivity 1 (LoVT would divide by zero).
    assert froc([([[0, 0, 1, 1]] * 3, [0.1, 0.2, 0.3])], [np.zeros((0, 4))])[0] == 1.0


def test_streaming_class_equals_function_and_resets():
    predictions = [([_xywh_at(7, 7), _xywh_at(30, 30)], [0.9, 0.4]), ([_xywh_at(1, 1)], [0.6])]
    gt = [[[0, 0, 10, 10]], [[0, 0, 3, 3], [50, 50, 2, 2]]]
    metric = FROC()
    for (boxes, scores), g in zip(predictions, gt):
        metric.add(boxes, scores, g)
    mean, sensitivities = metric.result()
    expected_mean, expected = froc(predictions, gt)
    assert mean == expected_mean
    np.testing.assert_array_equal(sensitivities, expected)
    metric.reset()
    assert metric.num_images == 0
    with pytest.raises(ValueError, match="zero images"):
        metric.result()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_reference_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    for _ in range(10):
        num_images = int(rng.integers(1, 12))
        predictions, gt = [], []
        for _ in range(num_images):
            num_gt = int(rng.integers(0, 4))
            gt_boxes = np.concatenate(
                [rng.uniform(0, 80, (num_gt, 2)), rng.uniform(5, 30, (num_gt, 2))], 1
            )
            num_pred = int(rng.integers(0, 6))
            boxes = np.concatenate(
                [rng.uniform(0, 90, (num_pred, 2)), rng.uniform(2, 20, (num_pred, 2))], 1
            )
            if seed % 2:  # integer boxes put centres on GT borders
                boxes, gt_boxes = np.round(boxes), np.round(gt_boxes)
            scores = rng.random(num_pred)
            if seed == 3:
                scores = np.round(scores, 1)  # ties: both keep insertion order
            predictions.append((boxes, scores))
            gt.append(gt_boxes)
        if sum(len(g) for g in gt) == 0:
            gt[0] = np.array([[0.0, 0.0, 50.0, 50.0]])
        for fps in (OBJECT_CXR_FPS, (0.5, 1.0), (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)):
            expected_mean, expected = _reference_froc(predictions, gt, fps)
            mean, sensitivities = froc(predictions, gt, fps)
            np.testing.assert_allclose(sensitivities, expected, rtol=0, atol=1e-15)
            assert mean == pytest.approx(expected_mean, abs=1e-15)


def test_input_errors():
    with pytest.raises(ValueError, match="ascending"):
        FROC(fps=(1.0, 0.5))
    with pytest.raises(ValueError, match="2 prediction entries for 1"):
        froc([([], [])] * 2, [np.zeros((0, 4))])
    metric = FROC()
    with pytest.raises(ValueError, match=r"image 0: 1 pred_scores for 2 pred_boxes"):
        metric.add([[0, 0, 1, 1], [0, 0, 2, 2]], [0.5], np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"image 0: gt_boxes must have shape \(N, 4\)"):
        metric.add([[0, 0, 1, 1]], [0.5], [[0, 0, 1]])
    with pytest.raises(ValueError, match="negative width/height"):
        metric.add([[0, 0, -1, 1]], [0.5], np.zeros((0, 4)))
