"""Time of YOLOv3 non-maximum suppression per image, before and after the blocked version.

    python -m tools.bench_nms [--images 10] [--num_classes 1] [--image_size 224] [--seed 0]

Decodes random raw head outputs (standard-normal logits, as an untrained head gives) for
``--image_size`` px images (3087 boxes at 224 px) and times, in ms per image,
``non_max_suppression`` (the library's version) against ``reference_nms``, the earlier
per-kept-box loop kept here as the "before" figure, at two objectness levels: ~all boxes
above the 0.2 threshold, and ~10 % above. Both must return identical boxes, scores and
classes; the program exits 1 if they do not.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

# The library (and so Keras) is imported by the functions that use it, after the
# arguments are parsed: `--help` stays fast and prints no framework logs.

# Objectness logit offsets: sigmoid(z + offset) >= 0.2 for ~all z ~ N(0, 1) (offset 2:
# P(z >= -3.39) = 99.96 %) and for ~10 % (offset -2.67: P(z >= 1.28) = 10 %).
LEVELS = {"~all above threshold": 2.0, "~10 % above threshold": -2.67}


def random_detections(
    images: int, num_classes: int, image_size: int, objectness_offset: float, seed: int
) -> np.ndarray:
    """Decoded ``(images, N, 5 + C)`` of standard-normal raw outputs of all scales."""
    from lovt_keras.models.yolov3 import (
        LOVT_ANCHORS,
        YOLO_FEATURE_LAYERS,
        decode_predictions,
        output_key,
    )

    rng = np.random.default_rng(seed)
    predictions = {}
    for stride, layer in zip((32, 16, 8), YOLO_FEATURE_LAYERS):
        grid = image_size // stride
        raw = rng.standard_normal((images, grid, grid, len(LOVT_ANCHORS[0]), 5 + num_classes))
        raw[..., 4] += objectness_offset
        predictions[output_key(layer)] = raw.astype(np.float32)
    return decode_predictions(predictions, image_size=image_size)


def _ms_per_image(function, detections: np.ndarray) -> tuple[float, list]:
    start = time.perf_counter()
    result = function(detections)
    return 1e3 * (time.perf_counter() - start) / len(detections), result


def _identical(a: list, b: list) -> bool:
    return all(
        np.array_equal(x, y) and x.dtype == y.dtype
        for image_a, image_b in zip(a, b, strict=True)
        for x, y in zip(image_a, image_b, strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--num_classes", type=int, default=1)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from lovt_keras.models.yolov3 import non_max_suppression
    from lovt_keras.testing.nms_reference import reference_nms

    status = 0
    for level, offset in LEVELS.items():
        detections = random_detections(
            args.images, args.num_classes, args.image_size, offset, args.seed
        )
        above = float(np.mean(detections[..., 4] >= 0.2))
        before, expected = _ms_per_image(reference_nms, detections)
        after, result = _ms_per_image(non_max_suppression, detections)
        kept = np.mean([len(scores) for _, scores, _ in result])
        same = _identical(result, expected)
        status |= not same
        print(
            f"{level}: {detections.shape[1]} boxes, {above:.1%} above 0.2, {kept:.0f} kept, "
            f"C={args.num_classes}: before {before:.1f} ms/image, after {after:.1f} ms/image "
            f"(x{before / max(after, 1e-9):.1f}), identical: {same}"
        )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
