import keras
import numpy as np
import pytest

from lovt_keras.models import yolov3
from lovt_keras.models.yolov3 import (
    LOSS_COMPONENTS,
    LOVT_ANCHORS,
    YOLOv3Head,
    decode_predictions,
    non_max_suppression,
    output_key,
    yolo_loss,
    yolo_loss_components,
    yolo_targets,
)
from lovt_keras.testing.nms_reference import reference_nms
from lovt_keras.testing.test_case import to_numpy

IMAGE = 224
GRIDS = ((7, 7), (14, 14), (28, 28))
LAYERS = ("conv5", "conv4", "conv3")
ANCHORS = np.asarray(LOVT_ANCHORS, dtype=np.float64)


# --------------------------------------------------------------------------------------
# Independent numpy reference: the official loops (LoVT YOLOv3Loss.get_targets + forward)
# --------------------------------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _torch_bce(p, t):
    """torch.nn.BCELoss elementwise (log clamped at -100)."""
    with np.errstate(divide="ignore"):
        return -(t * np.maximum(np.log(p), -100) + (1 - t) * np.maximum(np.log(1 - p), -100))


def _plus_one_iou(w1, h1, w2, h2):
    inter = (min(w1, w2) + 1) * (min(h1, h2) + 1)
    return inter / ((w1 + 1) * (h1 + 1) + (w2 + 1) * (h2 + 1) - inter + 1e-16)


def _plain_iou_xyxy(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def reference_targets(boxes, classes, mask, scale, num_classes, matching="lovt", pred=None):
    height, width = GRIDS[scale]
    sx, sy = IMAGE / width, IMAGE / height
    batch = boxes.shape[0]
    shape = (batch, height, width, 3)
    obj, noobj = np.zeros(shape), np.ones(shape)
    tx, ty, tw, th = (np.zeros(shape) for _ in range(4))
    tcls = np.zeros(shape + (num_classes,))
    for b in range(batch):
        for m in range(boxes.shape[1]):
            if not mask[b, m]:
                continue
            x, y, w, h = boxes[b, m]
            gw, gh = w / sx, h / sy
            gx, gy = x / sx + gw / 2, y / sy + gh / 2
            gi, gj = min(int(gx), width - 1), min(int(gy), height - 1)
            if matching == "lovt":
                anchors = ANCHORS[scale] / [sx, sy]
                ious = np.array([_plus_one_iou(gw, gh, aw, ah) for aw, ah in anchors])
                noobj[b, gj, gi, ious > 0.5] = 0
                a = int(np.argmax(ious))
            else:
                flat = ANCHORS.reshape(-1, 2)
                ious = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah))
                        for aw, ah in flat]
                best = int(np.argmax(ious))
                if best // 3 != scale:
                    continue
                a = best % 3
                anchors = ANCHORS[scale] / [sx, sy]
                noobj[b, gj, gi, a] = 0
            obj[b, gj, gi, a] = 1
            tx[b, gj, gi, a], ty[b, gj, gi, a] = gx - gi, gy - gj
            tw[b, gj, gi, a] = np.log(gw / anchors[a][0] + 1e-16)
            th[b, gj, gi, a] = np.log(gh / anchors[a][1] + 1e-16)
            tcls[b, gj, gi, a, classes[b, m]] = 1
    if matching == "yolov3":  # ignore predictions overlapping any GT by IoU > 0.5
        for b, i, j, a in np.ndindex(*shape):
            cx = (_sigmoid(pred[b, i, j, a, 0]) + j) * sx
            cy = (_sigmoid(pred[b, i, j, a, 1]) + i) * sy
            w = np.exp(pred[b, i, j, a, 2]) * ANCHORS[scale][a][0]
            h = np.exp(pred[b, i, j, a, 3]) * ANCHORS[scale][a][1]
            p = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            for m in np.where(mask[b])[0]:
                x, y, gw_, gh_ = boxes[b, m]
                if _plain_iou_xyxy(p, (x, y, x + gw_, y + gh_)) > 0.5:
                    noobj[b, i, j, a] = 0
    return dict(object_mask=obj, noobject_mask=noobj, tx=tx, ty=ty, tw=tw, th=th,
                class_targets=tcls)


def reference_components(preds, boxes, classes, mask, num_classes, matching="lovt"):
    out = dict.fromkeys(LOSS_COMPONENTS, 0.0)
    for s in range(3):
        p = preds[output_key(LAYERS[s])].astype(np.float64)
        t = reference_targets(boxes, classes, mask, s, num_classes, matching, pred=p)
        obj, noobj = t["object_mask"], t["noobject_mask"]
        out["yolo_x_loss"] += _torch_bce(_sigmoid(p[..., 0]) * obj, t["tx"] * obj).mean()
        out["yolo_y_loss"] += _torch_bce(_sigmoid(p[..., 1]) * obj, t["ty"] * obj).mean()
        out["yolo_w_loss"] += ((p[..., 2] * obj - t["tw"] * obj) ** 2).mean()
        out["yolo_h_loss"] += ((p[..., 3] * obj - t["th"] * obj) ** 2).mean()
        conf = _sigmoid(p[..., 4])
        out["yolo_confidence_loss"] += (_torch_bce(conf * obj, obj).mean()
                                        + 0.5 * _torch_bce(conf * noobj, 0 * noobj).mean())
        if num_classes > 1:
            out["yolo_class_loss"] += _torch_bce(_sigmoid(p[..., 5:]) * obj[..., None],
                                                 t["class_targets"] * obj[..., None]).mean()
    return out


def _random_predictions(batch, num_classes, seed):
    rng = np.random.default_rng(seed)
    return {output_key(layer): rng.normal(size=(batch, h, w, 3, 5 + num_classes)).astype("float32")
            for layer, (h, w) in zip(LAYERS, GRIDS)}


def _ground_truth():
    # Image 0: two boxes and a padded row; image 1: three boxes incl. one at the border.
    boxes = np.array([
        [[30.0, 40.0, 60.0, 45.0], [120.0, 100.0, 10.0, 14.0], [0, 0, 0, 0]],
        [[5.0, 150.0, 200.0, 70.0], [210.0, 210.0, 14.0, 14.0], [80.0, 60.0, 33.0, 64.0]],
    ], dtype="float32")
    classes = np.array([[1, 0, 0], [2, 1, 0]], dtype="int32")
    mask = np.array([[True, True, False], [True, True, True]])
    return boxes, classes, mask


# --------------------------------------------------------------------------------------
# Head
# --------------------------------------------------------------------------------------


def _features(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv3": rng.normal(size=(batch, 8, 8, 6)).astype("float32"),
        "conv4": rng.normal(size=(batch, 4, 4, 10)).astype("float32"),
        "conv5": rng.normal(size=(batch, 2, 2, 12)).astype("float32"),
    }


def test_head_shapes_widths_and_config():
    head = YOLOv3Head(num_classes=2, filters=(16, 8, 4))
    out = to_numpy(head(_features()))
    assert {k: v.shape for k, v in out.items()} == {
        "yolo_conv5": (2, 2, 2, 3, 7), "yolo_conv4": (2, 4, 4, 3, 7), "yolo_conv3": (2, 8, 8, 3, 7)}
    kernels = {w.path.split("/")[-2]: tuple(w.shape) for w in head.weights if "kernel" in w.path}
    # Embedding widths f, 2f, f, 2f, f, 2f; lateral 1x1 to the next f; skip concatenated.
    assert kernels["scale0_0_conv"] == (1, 1, 12, 16)
    assert kernels["scale0_1_conv"] == (3, 3, 16, 32)
    assert kernels["scale0_output"] == (1, 1, 32, 21)
    assert kernels["scale1_lateral_conv"] == (1, 1, 16, 8)
    assert kernels["scale1_0_conv"] == (1, 1, 8 + 10, 8)
    assert kernels["scale2_lateral_conv"] == (1, 1, 8, 4)
    assert kernels["scale2_0_conv"] == (1, 1, 4 + 6, 4)
    # 6 conv-BN blocks per scale + 2 laterals, BN everywhere but the output convs.
    assert sum(isinstance(layer, keras.layers.BatchNormalization)
               for layer in head._flatten_layers()) == 20
    clone = YOLOv3Head.from_config(head.get_config())
    clone(_features())
    clone.set_weights(head.get_weights())
    for key, value in to_numpy(clone(_features())).items():
        np.testing.assert_allclose(value, out[key], atol=1e-5)
    with pytest.raises(KeyError, match="conv4"):
        head({"conv3": _features()["conv3"], "conv5": _features()["conv5"]})


# --------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------


def _padded(*images):
    """Ground truth padded to the (2, 3) boxes of _ground_truth (one set of shapes keeps
    JAX's per-shape eager compilation to a minimum): images as lists of (box, class)."""
    boxes, classes, mask = np.zeros((2, 3, 4), "float32"), np.zeros((2, 3), "int32"), np.zeros(
        (2, 3), bool)
    for b, image in enumerate(images):
        for m, (box, cls) in enumerate(image):
            boxes[b, m], classes[b, m], mask[b, m] = box, cls, True
    return boxes, classes, mask


def _targets(boxes, classes, mask, scale, num_classes=3, matching="lovt"):
    return to_numpy(yolo_targets(boxes, classes, mask, GRIDS[scale], scale,
                                 image_size=IMAGE, num_classes=num_classes, matching=matching))


def test_box_of_anchor_size_lands_on_that_anchor_and_cell():
    # The anchor (84.24, 106.92) of the conv5 scale, centred at (100, 150).
    w, h = 84.24, 106.92
    boxes, classes, mask = _padded([((100 - w / 2, 150 - h / 2, w, h), 0)])
    t = _targets(boxes, classes, mask, 0)
    assert np.argwhere(t["object_mask"]).tolist() == [[0, 4, 3, 1]]  # row 150/32, col 100/32
    np.testing.assert_allclose(t["tx"][0, 4, 3, 1], 100 / 32 - 3, atol=1e-5)
    np.testing.assert_allclose(t["ty"][0, 4, 3, 1], 150 / 32 - 4, atol=1e-5)
    np.testing.assert_allclose(t["tw"][0, 4, 3, 1], 0.0, atol=1e-5)
    np.testing.assert_allclose(t["th"][0, 4, 3, 1], 0.0, atol=1e-5)
    # "+1" IoUs 0.48 / 1.0 / 0.33: only the matching anchor leaves the no-object mask.
    assert np.argwhere(t["noobject_mask"] == 0).tolist() == [[0, 4, 3, 1]]
    assert t["class_targets"][0, 4, 3, 1].tolist() == [1.0, 0.0, 0.0]
    # Official matching: the box is also a positive at the two finer scales ...
    for scale, (cell, anchor) in ((1, ((9, 6), 2)), (2, ((18, 12), 2))):
        t = _targets(boxes, classes, mask, scale)
        assert np.argwhere(t["object_mask"]).tolist() == [[0, *cell, anchor]]
        stride = IMAGE / GRIDS[scale][0]
        np.testing.assert_allclose(t["tw"][0, cell[0], cell[1], anchor],
                                   np.log(w / ANCHORS[scale][anchor][0]), rtol=1e-5)
        # ... where its best anchor has IoU <= 0.5 and so stays in the no-object mask.
        assert t["noobject_mask"].min() == 1.0
        np.testing.assert_allclose(t["tx"][0, cell[0], cell[1], anchor],
                                   100 / stride - cell[1], atol=1e-5)
    # The YOLOv3 matching keeps only the best of the nine anchors (conv5 scale here).
    counts = [_targets(boxes, classes, mask, s, matching="yolov3")["object_mask"].sum()
              for s in range(3)]
    assert counts == [1, 0, 0]
    t = _targets(boxes, classes, mask, 0, matching="yolov3")
    np.testing.assert_allclose(t["tw"][0, 4, 3, 1], 0.0, atol=1e-5)


def test_padding_collisions_and_border_boxes():
    # Two boxes on the same cell and anchor: the later one's offsets, both classes.
    boxes, classes, mask = _padded([((10.0, 10.0, 8.0, 8.0), 0), ((11.0, 11.0, 8.0, 8.0), 2)],
                                   [((222.0, 222.0, 4.0, 4.0), 1)])
    boxes[0, 2] = (7.0, 7.0, 9.0, 9.0)  # a padded row with values: ignored
    t = _targets(boxes, classes, mask, 2)
    ref = reference_targets(boxes, classes, mask, 2, 3)
    for key, value in ref.items():
        np.testing.assert_allclose(t[key], value, atol=1e-5, err_msg=key)
    assert t["object_mask"].sum() == 2  # padded row ignored, two boxes collide
    cell = tuple(np.argwhere(t["object_mask"][0, :2, :2])[0])
    np.testing.assert_allclose(t["tx"][0][cell], (11 + 4) / 8 - 1, atol=1e-5)
    assert t["class_targets"][0][cell].tolist() == [1.0, 0.0, 1.0]
    # A box centred on the image border (x = 224) is clamped into the last cell.
    assert t["object_mask"][1, 27, 27].sum() == 1
    np.testing.assert_allclose(t["tx"][1, 27, 27].max(), 1.0, atol=1e-5)


@pytest.mark.parametrize("matching", ["lovt", "yolov3"])
def test_targets_match_reference(matching):
    boxes, classes, mask = _ground_truth()
    for scale in range(3):
        t = _targets(boxes, classes, mask, scale, num_classes=3, matching=matching)
        ref = reference_targets(boxes, classes, mask, scale, 3, matching,
                                pred=np.zeros((2, *GRIDS[scale], 3, 8)))
        for key in ("object_mask", "tx", "ty", "tw", "th", "class_targets"):
            np.testing.assert_allclose(t[key], ref[key], atol=1e-5, err_msg=f"{scale} {key}")
        if matching == "lovt":
            np.testing.assert_array_equal(t["noobject_mask"], ref["noobject_mask"])


# --------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("matching", ["lovt", "yolov3"])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_loss_matches_official_numpy_reference(matching, num_classes):
    boxes, classes, mask = _ground_truth()
    classes = np.minimum(classes, num_classes - 1)
    preds = _random_predictions(2, num_classes, seed=num_classes)
    # Some predictions overlapping the GT so that the prediction-based ignore acts.
    preds["yolo_conv5"][1, 5, 3, 2, :4] = [0.0, 0.0, 0.0, -0.9]
    got = to_numpy(yolo_loss_components(preds, boxes, classes, mask, image_size=IMAGE,
                                        matching=matching))
    ref = reference_components(preds, boxes, classes, mask, num_classes, matching)
    for name in LOSS_COMPONENTS:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-6, err_msg=name)
    if num_classes == 1:
        assert got["yolo_class_loss"] == 0.0
    total = float(to_numpy(yolo_loss(preds, boxes, classes, mask, image_size=IMAGE,
                                     matching=matching)))
    expected = (2.5 * (ref["yolo_x_loss"] + ref["yolo_y_loss"] + ref["yolo_w_loss"]
                       + ref["yolo_h_loss"]) + ref["yolo_confidence_loss"] + ref["yolo_class_loss"])
    np.testing.assert_allclose(total, expected, rtol=1e-4)


def _perfect_logits(boxes, classes, mask, num_classes, matching, big=30.0):
    preds = {}
    for s, layer in enumerate(LAYERS):
        t = _targets(boxes, classes, mask, s, num_classes, matching)
        obj = t["object_mask"]
        p = np.full(obj.shape + (5 + num_classes,), -big, "float32")
        for i, name in ((0, "tx"), (1, "ty")):
            # logit of the offset; a hard target 0 gets -30 (sigmoid ~ 1e-13)
            offset = np.clip(t[name], 1e-7, 1 - 1e-7)
            p[..., i] = np.where(t[name] > 0, np.log(offset / (1 - offset)), -30.0)
        p[..., 2], p[..., 3] = t["tw"], t["th"]
        p[..., 4] = np.where(obj > 0, big, -big)
        p[..., 5:] = np.where(t["class_targets"] > 0, big, -big)
        preds[output_key(layer)] = p
    return preds


def test_loss_vanishes_for_perfect_hard_predictions():
    # Centres on the stride-32 grid lines: hard targets t_x = t_y = 0 at every scale.
    boxes, classes, mask = _padded(
        [((64.0 - 30, 96.0 - 20, 60.0, 40.0), 1), ((160.0 - 8, 32.0 - 16, 16.0, 32.0), 0)],
        [((96.0 - 40, 128.0 - 60, 80.0, 120.0), 2)])
    preds = _perfect_logits(boxes, classes, mask, 3, "yolov3")
    perfect = float(to_numpy(yolo_loss(preds, boxes, classes, mask, image_size=IMAGE,
                                       matching="yolov3")))
    assert perfect < 1e-9
    noisy = {k: v + np.random.default_rng(0).normal(size=v.shape).astype("float32")
             for k, v in preds.items()}
    assert float(to_numpy(yolo_loss(noisy, boxes, classes, mask, image_size=IMAGE,
                                    matching="yolov3"))) > 0.01
    rough = _random_predictions(2, 3, seed=5)
    assert float(to_numpy(yolo_loss(rough, boxes, classes, mask, image_size=IMAGE,
                                    matching="yolov3"))) > 0.3
    # Official matching: positions whose best anchor has IoU <= 0.5 get both the object
    # and the 0.5x no-object term, an unavoidable 0.5 * softplus(30) each.
    preds = _perfect_logits(boxes, classes, mask, 3, "lovt")
    got = to_numpy(yolo_loss_components(preds, boxes, classes, mask, image_size=IMAGE))
    expected = 0.0
    for s in range(3):
        t = _targets(boxes, classes, mask, s)
        conflicts = np.sum(t["object_mask"] * t["noobject_mask"])
        expected += 0.5 * conflicts * np.logaddexp(0, 30.0) / t["object_mask"].size
    assert expected > 0
    np.testing.assert_allclose(got["yolo_confidence_loss"], expected, rtol=1e-4)
    for name in ("yolo_x_loss", "yolo_y_loss", "yolo_w_loss", "yolo_h_loss", "yolo_class_loss"):
        assert got[name] < 1e-9, name


# --------------------------------------------------------------------------------------
# Decoding and NMS
# --------------------------------------------------------------------------------------


def test_decode_inverts_the_target_encoding():
    boxes, classes, mask = _ground_truth()
    preds = _perfect_logits(boxes, classes, mask, 3, "lovt", big=10.0)
    decoded = decode_predictions(preds, image_size=IMAGE)
    assert decoded.shape == (2, 3 * (49 + 196 + 784), 8)
    for b in range(2):
        found = decoded[b][decoded[b, :, 4] > 0.5]
        expected = boxes[b][mask[b]]
        centres = np.concatenate([expected[:, :2] + expected[:, 2:] / 2, expected[:, 2:]], 1)
        # Every GT box is decoded at each of the three scales (official matching).
        assert len(found) == 3 * len(expected)
        for row in found:
            distance = np.abs(centres - row[:4]).max(axis=1)
            assert distance.min() < 1e-3, (row[:4], centres)


def test_nms_keeps_the_expected_boxes():
    def det(cx, cy, w, h, conf, cls_probs):
        return [cx, cy, w, h, conf, *cls_probs]

    detections = np.array([[
        det(50, 50, 20, 20, 0.9, [0.9, 0.1]),   # A kept
        det(54, 50, 20, 20, 0.8, [0.8, 0.2]),   # IoU(A) = 0.68 >= 0.4: suppressed
        det(62, 50, 20, 20, 0.7, [0.7, 0.1]),   # IoU(A) = 0.27: kept
        det(50, 50, 20, 20, 0.6, [0.1, 0.7]),   # same place, class 1: kept
        det(150, 150, 10, 10, 0.19, [0.9, 0.1]),  # below confidence 0.2: dropped
        det(150, 150, 10, 10, 0.2, [0.9, 0.1]),   # exactly 0.2: kept
    ], [det(10, 10, 4, 4, 0.1, [1.0, 0.0])] * 6], dtype="float32")
    (boxes, scores, classes), (empty_boxes, empty_scores, _) = non_max_suppression(detections)
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.2, 0.6], atol=1e-6)
    assert classes.tolist() == [0, 0, 0, 1]
    np.testing.assert_allclose(boxes, [[40, 40, 20, 20], [52, 40, 20, 20], [145, 145, 10, 10],
                                       [40, 40, 20, 20]], atol=1e-5)
    assert empty_boxes.shape == (0, 4) and empty_scores.shape == (0,)
    # IoU exactly at the threshold is suppressed (official ``ious < nms_thres`` keeps).
    pair = np.array([[det(0, 0, 9, 9, 0.9, [1]), det(0, 0, 9, 9, 0.8, [1])]], "float32")
    assert len(non_max_suppression(pair, nms_iou=1.0)[0][1]) == 1


class FeatureDetector(keras.Model):
    """The head on given feature maps, trained with yolo_loss (64 px images)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.head = YOLOv3Head(num_classes=1, filters=(16, 8, 4))

    def call(self, x, training=None):
        return self.head({k: x[k] for k in LAYERS}, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return yolo_loss(y_pred, x["boxes"], x["box_classes"], x["box_mask"], image_size=64)


def test_tiny_yolo_fit_reduces_loss():
    keras.utils.set_random_seed(0)
    model = FeatureDetector()
    batch = dict(_features(4, seed=1))
    batch.update(
        boxes=np.tile(np.array([[[10, 12, 20, 14], [30, 30, 16, 30]]], "float32"), (4, 1, 1)),
        box_classes=np.zeros((4, 2), "int32"),
        box_mask=np.array([[1, 1], [1, 0]] * 2, bool),
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(batch, batch_size=4, epochs=15, verbose=0, shuffle=False).history["loss"]
    assert np.all(np.isfinite(history))
    assert history[-1] < 0.6 * history[0], history


# --------------------------------------------------------------------------------------
# NMS: equality with the straightforward greedy loop (the library's earlier version)
# --------------------------------------------------------------------------------------


def _random_nms_case(seed):
    """Detections ``(B, N, 5 + C)`` mixing the hard cases: tied scores, duplicate boxes,
    boxes on an integer grid (IoU exactly at a threshold), one-box classes, many classes,
    images with nothing above the threshold, a few non-finite or negative sizes."""
    rng = np.random.default_rng(seed)
    batch, n = int(rng.integers(1, 4)), int(rng.integers(1, 160))
    num_classes = int(rng.choice([1, 2, 5, 20]))
    centres = rng.uniform(0, 120, (batch, n, 2))
    sizes = rng.uniform(1, 60, (batch, n, 2))
    if seed % 3 == 0:  # integer grid: many exact IoU values such as 0.5 or 1/3
        centres, sizes = np.round(centres / 4) * 4, np.round(sizes / 4) * 4 + 1
    if seed % 2 == 0:  # tied scores
        objectness = rng.choice([0.1, 0.2, 0.5, 0.9], (batch, n))
    else:
        objectness = rng.uniform(0, 1, (batch, n))
    class_probs = rng.uniform(0, 1, (batch, n, num_classes))
    if seed % 4 == 1:  # ties in the class probabilities too (argmax takes the first)
        class_probs = np.round(class_probs)
    detections = np.concatenate([centres, sizes, objectness[..., None], class_probs], -1)
    duplicates = rng.integers(0, n, n // 3)
    detections[:, rng.integers(0, n, n // 3)] = detections[:, duplicates]
    detections[0, :, 4] = np.where(seed % 5 == 0, 0.05, detections[0, :, 4])  # empty image
    if seed % 7 == 0 and n > 3:  # exp overflow of the decoder (NaN IoU) and odd sizes
        detections[-1, 1, 2] = np.inf
        detections[-1, 2, 3] = -3.0
    return detections.astype(np.float32)


@pytest.mark.parametrize("block", [None, 1, 3, 32])
def test_nms_equals_reference_greedy_loop(block, monkeypatch):
    if block is not None:  # small blocks exercise the block boundaries on small cases
        monkeypatch.setattr(yolov3, "_NMS_BLOCK", block)
    kept_total = suppressed_total = 0
    for seed in range(60):
        detections = _random_nms_case(seed)
        for conf_threshold, nms_iou in ((0.2, 0.4), (0.5, 0.5), (0.0, 1 / 3), (0.2, 0.0)):
            with np.errstate(invalid="ignore"):  # inf - inf of the non-finite boxes
                expected = reference_nms(detections, conf_threshold, nms_iou)
                result = non_max_suppression(detections, conf_threshold, nms_iou)
            assert len(result) == len(expected)
            for got, want in zip(result, expected):
                for g, w in zip(got, want):
                    assert g.dtype == w.dtype and g.shape == w.shape, (seed, g.shape, w.shape)
                    np.testing.assert_array_equal(g, w, err_msg=f"seed {seed}")
                kept_total += len(want[1])
            above = int(np.sum(detections[..., 4] >= conf_threshold))
            suppressed_total += above - sum(len(w[1]) for w in expected)
    # The cases are not degenerate: both keeping and suppressing happen a lot.
    assert kept_total > 5000 and suppressed_total > 5000, (kept_total, suppressed_total)


def test_nms_many_boxes_of_one_class_and_empty_input():
    rng = np.random.default_rng(3)
    detections = np.concatenate(
        [rng.uniform(0, 224, (2, 1500, 2)), rng.uniform(2, 80, (2, 1500, 2)),
         rng.uniform(0.15, 1, (2, 1500, 1)), np.ones((2, 1500, 1))], -1
    ).astype(np.float32)
    for got, want in zip(non_max_suppression(detections), reference_nms(detections)):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    boxes, scores, classes = non_max_suppression(np.zeros((1, 0, 7), np.float32))[0]
    assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)
    assert boxes.dtype == np.float32 and classes.dtype == np.int64
