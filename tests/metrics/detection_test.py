"""Tests of the LoVT/RSNA-style detection mAP (bes-dev mean_average_precision semantics)."""

import numpy as np
import pytest

from lovt_keras.metrics import (
    LOVT_IOU_THRESHOLDS,
    DetectionMAP,
    iou_xywh,
    lovt_recall_thresholds,
    mean_average_precision,
)

# ----------------------------------------------------------------- reference implementation


def _reference_map(predictions, ground_truths, num_classes, iou_thresholds):
    """Straight re-reading of bes-dev MeanAveragePrecision2d.value(mpolicy='soft').

    Plain Python lists and loops: a match table row per prediction with its IoU list
    against the GT of its image and class, a visiting order of the GT per row, and the
    'soft' check_box walk.
    """

    def iou_plus_one(p, g):
        px1, py1, px2, py2 = p[0], p[1], p[0] + p[2], p[1] + p[3]
        gx1, gy1, gx2, gy2 = g[0], g[1], g[0] + g[2], g[1] + g[3]
        iw = max(min(px2, gx2) - max(px1, gx1) + 1.0, 0.0)
        ih = max(min(py2, gy2) - max(py1, gy1) + 1.0, 0.0)
        inter = iw * ih
        union = (px2 - px1 + 1.0) * (py2 - py1 + 1.0) + (gx2 - gx1 + 1.0) * (gy2 - gy1 + 1.0)
        return inter / (union - inter)

    tables = [[] for _ in range(num_classes)]
    positives = [0] * num_classes
    for img_id, ((boxes, scores, classes), (gt_boxes, gt_classes)) in enumerate(
        zip(predictions, ground_truths)
    ):
        for c in range(num_classes):
            gts = [list(g) for g, k in zip(gt_boxes, gt_classes) if k == c]
            positives[c] += len(gts)
            for box, score, k in zip(boxes, scores, classes):
                if k == c:
                    ious = [iou_plus_one(list(box), g) for g in gts]
                    # descending IoU; equal IoU: higher index first (reversed stable sort)
                    order = sorted(range(len(ious)), key=lambda j: (ious[j], j), reverse=True)
                    tables[c].append((img_id, float(score), ious, order))

    recall_points = np.arange(0.0, 1.01, 0.01)
    aps = np.zeros((len(iou_thresholds), num_classes), dtype=np.float32)
    for ti, t in enumerate(iou_thresholds):
        for c in range(num_classes):
            # Python's sort is stable: equal scores keep insertion order.
            rows = sorted(tables[c], key=lambda row: row[1], reverse=True)
            matched = {}
            tp, fp = [], []
            for img_id, _, ious, order in rows:
                used = matched.setdefault(img_id, [])
                result = "fp"
                for j in order:
                    if ious[j] > t:
                        if j not in used:
                            result = "tp"
                            used.append(j)
                            break
                        continue
                    break
                tp.append(1 if result == "tp" else 0)
                fp.append(1 if result == "fp" else 0)
            precision, recall = [], []
            ctp = cfp = 0
            for a, b in zip(tp, fp):
                ctp, cfp = ctp + a, cfp + b
                recall.append(ctp / max(positives[c], 1))
                precision.append(ctp / max(ctp + cfp, np.finfo(np.float64).eps))
            ap = 0.0
            for r in recall_points:
                candidates = [p for p, q in zip(precision, recall) if q >= r]
                ap += (max(candidates) if candidates else 0.0) / recall_points.size
            aps[ti, c] = ap
    return aps


def _random_case(rng, num_images, num_classes, integer=True, max_copies=3, score_levels=None):
    """Images with 0-4 GT boxes (often overlapping), jittered and duplicated predictions of
    them (mostly with the right class) and clutter; integer coordinates give IoU ties,
    ``score_levels`` distinct scores give score ties within and across images."""
    predictions, ground_truths = [], []
    for _ in range(num_images):
        num_gt = int(rng.integers(0, 5))
        centres = rng.uniform(20, 60, size=(num_gt, 2))
        sizes = rng.uniform(5, 30, size=(num_gt, 2))
        gt = np.concatenate([centres - sizes / 2, sizes], 1)
        gt_classes = rng.integers(0, num_classes, size=num_gt)
        copies = rng.integers(0, max_copies, size=num_gt)
        jittered = np.repeat(gt, copies, axis=0)
        jittered = jittered + rng.normal(scale=2.0, size=jittered.shape)
        jittered[:, 2:] = np.abs(jittered[:, 2:])
        jittered_classes = np.repeat(gt_classes, copies)
        wrong = rng.random(len(jittered_classes)) < 0.2
        jittered_classes[wrong] = rng.integers(0, num_classes, size=int(wrong.sum()))
        num_clutter = int(rng.integers(0, 3))
        clutter = np.concatenate(
            [rng.uniform(0, 90, (num_clutter, 2)), rng.uniform(3, 30, (num_clutter, 2))], 1
        )
        boxes = np.concatenate([jittered, clutter], 0)
        pred_classes = np.concatenate(
            [jittered_classes, rng.integers(0, num_classes, size=num_clutter)]
        )
        if integer:
            gt, boxes = np.round(gt), np.round(boxes)
        scores = rng.random(len(boxes))
        if score_levels is not None:
            scores = np.floor(scores * score_levels) / score_levels
        predictions.append((boxes, scores, pred_classes))
        ground_truths.append((gt, gt_classes))
    return predictions, ground_truths


# ----------------------------------------------------------------------------- hand cases


def test_iou_uses_plus_one_pixel_convention():
    boxes = [[0, 0, 1, 1], [1, 0, 1, 1], [5, 5, 0, 0], [0, 0, 9, 9]]
    iou = iou_xywh(boxes[:2], boxes)
    # (0,0,1,1) -> x1y1x2y2 (0,0,1,1): 2x2 = 4 px; (1,0,1,1) -> (1,0,2,1): shares one column.
    # A point box (5,5,0,0) is 1 px, outside both; both unit boxes lie inside the 10x10 box.
    np.testing.assert_allclose(iou[0], [1.0, 2 / 6, 0.0, 4 / 100])
    np.testing.assert_allclose(iou[1], [2 / 6, 1.0, 0.0, 4 / 100])


def test_hand_case_two_images():
    # Image A: GT (0,0,9,9) [100 px]; p1 0.9 exact hit; p2 0.8 duplicate -> FP (GT taken).
    # Image B: GT (20,20,9,9); p3 0.7 (20,20,9,4) covers half: IoU 50/100 = 0.5; p4 0.6 FP.
    predictions = [
        (np.array([[0, 0, 9, 9], [0, 0, 9, 9]]), np.array([0.9, 0.8]), np.array([0, 0])),
        (np.array([[20, 20, 9, 4], [100, 100, 5, 5]]), np.array([0.7, 0.6]), np.array([0, 0])),
    ]
    ground_truths = [(np.array([[0, 0, 9, 9]]), np.array([0])), (np.array([[20, 20, 9, 9]]), [0])]
    metric = DetectionMAP()
    for (boxes, scores, classes), (gt, gt_classes) in zip(predictions, ground_truths):
        metric.add(boxes, scores, classes, gt, gt_classes)
    table = metric.average_precisions()[:, 0]
    # t = 0.40, 0.45: TP FP TP FP; precision 1, 1/2, 2/3, 1/2; recall 1/2, 1/2, 1, 1.
    # 51 recall points r <= 0.5 see max precision 1; 50 points r > 0.5 see 2/3.
    ap_low = (51 * 1.0 + 50 * (2 / 3)) / 101
    # t >= 0.5: IoU 0.5 is not > t -> TP FP FP FP; only r <= 0.5 reached: 51/101.
    ap_high = 51 / 101
    np.testing.assert_allclose(table, [ap_low] * 2 + [ap_high] * 6, rtol=1e-6)
    result = metric.result()
    assert result["mAP"] == pytest.approx((2 * ap_low + 6 * ap_high) / 8, rel=1e-6)
    assert result["mAP@0.5"] == pytest.approx(ap_high, rel=1e-6)
    assert result["mAP@0.75"] == pytest.approx(ap_high, rel=1e-6)
    assert result["class_0_mAP"] == pytest.approx(result["mAP"], rel=1e-6)
    # One IoU threshold only.
    single = mean_average_precision(
        predictions, ground_truths, iou_thresholds=[0.4], reported_thresholds=[]
    )
    assert single["mAP"] == pytest.approx(ap_low, rel=1e-6)


def test_soft_policy_falls_through_to_next_free_gt():
    # GT a (0,0,9,9) and b (0,0,9,7) [80 px]; both predictions equal a: IoU 1 with a and
    # 0.8 with b. The second prediction finds a taken and matches b ('greedy' would not).
    preds = np.array([[0, 0, 9, 9], [0, 0, 9, 9]])
    gt = np.array([[0, 0, 9, 9], [0, 0, 9, 7]])
    result = mean_average_precision([(preds, [0.9, 0.8], None)], [(gt, None)])
    assert result["mAP"] == pytest.approx(1.0)
    # Above b's IoU (0.8) the second one becomes a FP: AP = 51/101 at t = 0.85.
    result = mean_average_precision(
        [(preds, [0.9, 0.8], None)], [(gt, None)], iou_thresholds=[0.85], reported_thresholds=[]
    )
    assert result["mAP"] == pytest.approx(51 / 101, rel=1e-6)


def test_empty_images_classes_and_recall_thresholds():
    metric = DetectionMAP(num_classes=2, class_names=["a", "b"])
    # Image without GT and predictions: no effect.
    metric.add(np.zeros((0, 4)), [], [], np.zeros((0, 4)), [])
    # Class 0 perfectly found; class 1 has a GT but no prediction -> AP 0.
    metric.add([[0, 0, 9, 9]], [0.5], [0], [[0, 0, 9, 9], [50, 50, 5, 5]], [0, 1])
    result = metric.result()
    assert result["a_mAP"] == pytest.approx(1.0)
    assert result["b_mAP"] == 0.0
    assert result["mAP"] == pytest.approx(0.5)
    # A prediction on an image without GT is a FP, and a class with no GT gets AP 0.
    metric = DetectionMAP()
    metric.add([[0, 0, 3, 3]], [0.9], None, np.zeros((0, 4)), None)
    assert metric.result()["mAP"] == 0.0
    thresholds = lovt_recall_thresholds()
    assert thresholds.size == 101 and thresholds[0] == 0.0 and thresholds[-1] == 1.0


def test_equal_scores_keep_insertion_order():
    # Same score: the FP added first ranks first -> precision 0 then 1/2: AP = 0.5 * 101/101.
    first_fp = mean_average_precision(
        [([[50, 50, 5, 5]], [0.5], None), ([[0, 0, 9, 9]], [0.5], None)],
        [(np.zeros((0, 4)), None), ([[0, 0, 9, 9]], None)],
    )
    first_tp = mean_average_precision(
        [([[0, 0, 9, 9]], [0.5], None), ([[50, 50, 5, 5]], [0.5], None)],
        [([[0, 0, 9, 9]], None), (np.zeros((0, 4)), None)],
    )
    assert first_fp["mAP"] == pytest.approx(0.5)
    assert first_tp["mAP"] == pytest.approx(1.0)


# -------------------------------------------------------------- against the reference


@pytest.mark.parametrize(
    "seed,num_classes,integer,max_copies,score_levels",
    [(0, 1, True, 3, None), (1, 1, False, 3, None), (2, 3, True, 3, None),
     # many duplicates per GT with tied scores: every GT gets taken, ties ordered
     (3, 1, True, 12, 4), (4, 2, True, 12, 3)],
)
def test_matches_reference_on_random_cases(seed, num_classes, integer, max_copies,
                                           score_levels):
    rng = np.random.default_rng(seed)
    for _ in range(4):
        predictions, ground_truths = _random_case(
            rng, int(rng.integers(1, 8)), num_classes, integer, max_copies, score_levels
        )
        expected = _reference_map(predictions, ground_truths, num_classes, LOVT_IOU_THRESHOLDS)
        metric = DetectionMAP(num_classes)
        for (boxes, scores, classes), (gt, gt_classes) in zip(predictions, ground_truths):
            metric.add(boxes, scores, classes, gt, gt_classes)
        np.testing.assert_allclose(metric.average_precisions(), expected, rtol=1e-6, atol=1e-7)
        result = metric.result()
        assert result["mAP"] == pytest.approx(float(expected.mean(1).mean(0)), rel=1e-6, abs=1e-7)
        assert result["mAP@0.5"] == pytest.approx(float(expected[2].mean()), rel=1e-6, abs=1e-7)
        assert result["mAP@0.75"] == pytest.approx(float(expected[7].mean()), rel=1e-6, abs=1e-7)


def test_reset_and_input_errors():
    metric = DetectionMAP()
    metric.add([[0, 0, 9, 9]], [0.9], None, [[0, 0, 9, 9]], None)
    assert metric.result()["mAP"] == pytest.approx(1.0)
    metric.reset()
    assert metric.num_images == 0 and metric.result()["mAP"] == 0.0
    with pytest.raises(ValueError, match=r"image 0: pred_boxes must have shape \(N, 4\)"):
        metric.add([[0, 0, 9]], [0.9], None, np.zeros((0, 4)), None)
    with pytest.raises(ValueError, match="image 0: gt_boxes rows \\[1\\] have negative"):
        metric.add([[0, 0, 9, 9]], [0.9], None, [[0, 0, 1, 1], [0, 0, -1, 2]], None)
    with pytest.raises(ValueError, match="image 0: pred_scores has 2 entries for 1 boxes"):
        metric.add([[0, 0, 9, 9]], [0.9, 0.1], None, np.zeros((0, 4)), None)
    with pytest.raises(ValueError, match=r"gt_classes has ids \[3\] outside \[0, 1\)"):
        metric.add([[0, 0, 9, 9]], [0.9], None, [[0, 0, 1, 1]], [3])
    with pytest.raises(ValueError, match="not in iou_thresholds"):
        DetectionMAP(iou_thresholds=[0.4, 0.6])
    with pytest.raises(ValueError, match="2 prediction entries for 1"):
        mean_average_precision([(np.zeros((0, 4)), [], None)] * 2, [(np.zeros((0, 4)), None)])
