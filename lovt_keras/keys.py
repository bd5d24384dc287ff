"""Names of the entries of a pretraining batch dict.

These strings are the keys of the dicts that the data pipeline yields, the names
of the pretrainer's inputs and the keys of its outputs, so one grep finds every
producer and consumer of a tensor.

Shapes (B = batch, H/W = image size, T = token budget, S = sentence budget):
- ``images``: float32 ``(B, H, W, C)``, normalized pixels, C = 1 (grayscale) or 3.
- ``token_ids``: int32 ``(B, T)``, WordPiece ids with [CLS] first and [SEP] last.
- ``padding_mask``: bool ``(B, T)``, True for real tokens (including [CLS]/[SEP]).
- ``sentence_ids``: int32 ``(B, T)``, index of the sentence a token belongs to,
  -1 for [CLS], [SEP] and padding.
- ``sentence_mask``: bool ``(B, S)``, True for sentences present in the report.
"""

IMAGES = "images"
TOKEN_IDS = "token_ids"
PADDING_MASK = "padding_mask"
SENTENCE_IDS = "sentence_ids"
SENTENCE_MASK = "sentence_mask"

# Outputs of the pretrainer (keys of y_pred).
IMAGE_GLOBAL = "image_global"  # (B, d_global) projected global image embedding z̄^I
REPORT_GLOBAL = "report_global"  # (B, d_global) projected global report embedding z̄^R
REGION_EMBEDDINGS = "region_embeddings"  # (B, N, d) projected region embeddings z^I
SENTENCE_EMBEDDINGS = "sentence_embeddings"  # (B, S, d) projected sentence embeddings z^R
REPORT_TO_IMAGE = "report_to_image"  # (B, N, d) report-derived vector per region z^{R→I}
IMAGE_TO_REPORT = "image_to_report"  # (B, S, d) image-derived vector per sentence z^{I→R}
REGION_WEIGHTS = "region_weights"  # (B, N) attention-pooling weights over regions w^I
SENTENCE_WEIGHTS = "sentence_weights"  # (B, S) attention-pooling weights over sentences w^R

INPUT_KEYS = (IMAGES, TOKEN_IDS, PADDING_MASK, SENTENCE_IDS, SENTENCE_MASK)

# Downstream batches (segmentation and detection tasks).
MASKS = "masks"  # float32 (B, H, W, C) binary masks, one channel per class
BOXES = "boxes"  # float32 (B, max_boxes, 4) x, y, w, h in pixels, zero-padded
BOX_CLASSES = "box_classes"  # int32 (B, max_boxes) class ids, 0 where padded
BOX_MASK = "box_mask"  # bool (B, max_boxes), True for real boxes

# Image-only pretraining batches (SimCLR, BYOL, PixelPro; ``ImageOnlyBatches``): the
# first view is ``images``.
SECOND_IMAGES = "second_images"  # float32 (B, H, W, C) the second augmented view
# float32 (B, 2, 2, 3): per view, the affine map from its pixel coordinates (x, y, 1)
# to the source image's coordinates in units of the source diagonal.
VIEW_TO_SOURCE = "view_to_source"
