"""Image-only pretraining batches: two augmented views per image (SimCLR, BYOL, PixelPro).

The official baselines (``src/baselines/baseline_utils.py``: ``TwoImageTransformsWrapper``,
``DatasetImageOnlyWrapper``) draw two independent augmentations of each image of the
training set. ``ImageOnlyBatches`` does this on a prepared pretraining dataset through a
``PretrainingBatches`` (its ``source``): the same studies, the same study order and the
same choice of image per study as LoVT's batches of that seed and epoch (so the
baselines and LoVT see the same images), each augmented twice with the image pipeline
(``ConvirtAugmentation``) instead of once with the report. Yielded dicts (keys of
``lovt_keras.keys``):

- ``images`` and ``second_images`` float32 ``(B, H, W, 1)``: the two views, normalized
  with the train split's pixel mean and std;
- ``view_to_source`` float32 ``(B, 2, 2, 3)``: per view, the affine map from the view's
  pixel coordinates ``(x, y, 1)`` (x right, y down, pixel centres at +0.5) to the source
  image's coordinates divided by the source image's diagonal. It composes the
  augmentation's crop, flip and affine step exactly (the intensity steps move no pixel),
  so PixelPro finds the cells of the two views that show the same place.

Determinism: view ``k`` (0, 1) of the sample at position ``p`` of epoch ``e`` is drawn
from ``default_rng([seed, e, p, 3 + k])`` (tags 1 and 2 are the source's streams);
validation batches use ``e = 0`` in every epoch, so the validation loss of different
epochs compares the same views.

Departures from the official baselines: the official ones iterate over images
(``mimic-cxr-img_*`` datasets), here over studies with one image chosen per epoch, as
LoVT; their SimCLR/BYOL views are torchvision's ``RandomResizedCrop`` (scale 0.08-1),
``ColorJitter(0.8, 0.8)`` with p 0.8, a flip and a blur with p 0.5, and PixelPro's are
``PixelCL``'s cut-outs (50-70 % of the side) with a flip (p 0.25), jitter and blur; here
every method gets the ConVIRT augmentation of LoVT's image pipeline (crop 60-100 % of the
area, flip, rotation, translation, zoom, jitter, blur), as the issue asks.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from lovt_keras import keys
from lovt_keras.data.epochs import EpochTracking
from lovt_keras.data.image_augment import (
    AugmentationParameters,
    ConvirtAugmentation,
    _inverse_affine_matrix,
)
from lovt_keras.data.pretraining_dataset import PretrainingBatches

__all__ = ["ImageOnlyBatches", "view_to_source_matrix"]

# Stream tags of the two views' generators (the source uses 1 and 2).
_VIEW_STREAMS = (3, 4)


def view_to_source_matrix(params: AugmentationParameters, output_size: int,
                          source_shape: tuple[int, int]) -> np.ndarray:
    """The affine map of one ``ConvirtAugmentation`` draw from output to source pixels.

    ``apply`` crops ``(top, left, h, w)``, resizes the crop to ``output_size``, flips it,
    then (Pillow's ``Image.transform``) reads output pixel ``(x, y)`` from position
    ``M (x, y, 1)`` of the flipped crop. So the source position of output point
    ``(x, y)`` is ``D C F M (x, y, 1)``: ``F`` the flip ``x -> output_size - x``, ``C``
    the crop scaling and offset, ``D`` the division by the source diagonal.

    Args:
        params: the augmentation's parameters.
        output_size: side of the view.
        source_shape: ``(H, W)`` of the source image.

    Returns:
        float32 ``(2, 3)``, from ``(x, y, 1)`` in view pixels to source coordinates in
        units of ``sqrt(H^2 + W^2)``.
    """
    size = float(output_size)
    top, left, h, w = params.crop
    affine = np.eye(3)
    if params.angle != 0.0 or params.translate != (0, 0) or params.scale != 1.0:
        m = _inverse_affine_matrix((size * 0.5, size * 0.5), params.angle,
                                   params.translate, params.scale)
        affine[:2] = np.asarray(m).reshape(2, 3)
    flip = np.eye(3)
    if params.flip:
        flip[0, 0], flip[0, 2] = -1.0, size
    crop = np.array([[w / size, 0.0, left], [0.0, h / size, top], [0.0, 0.0, 1.0]])
    diagonal = math.hypot(float(source_shape[0]), float(source_shape[1]))
    matrix = (crop @ flip @ affine) / diagonal
    return matrix[:2].astype(np.float32)


class ImageOnlyBatches(EpochTracking, keras.utils.PyDataset):
    """Two augmented views of every image of a batch, for ``model.fit`` of
    ``SimCLRPretrainer``, ``BYOLPretrainer`` and ``PixelProPretrainer``.

    Args:
        source: the ``PretrainingBatches`` whose studies, order, image choice, batch
            size, image size, seed and pixel statistics the views use (its tokenizer may
            be None: no report is read). Its ``training`` selects shuffled studies with
            a random image each (True) or the fixed evaluation order (False); both
            views are augmented in either case.
        augmentation: a ``ConvirtAugmentation`` (with ``sample_parameters`` and
            ``apply``) of output side ``source.image_size``; default
            ``ConvirtAugmentation(source.image_size)``.
        workers, use_multiprocessing, max_queue_size: Keras' ``PyDataset`` options;
            None copies the source's.

    See the module docstring for the keys and the determinism.
    """

    def __init__(self, source: PretrainingBatches, augmentation: ConvirtAugmentation | None = None,
                 workers: int | None = None, use_multiprocessing: bool | None = None,
                 max_queue_size: int | None = None):
        if not isinstance(source, PretrainingBatches):
            raise TypeError(f"source must be a PretrainingBatches, got {type(source).__name__}")
        super().__init__(
            workers=source.workers if workers is None else workers,
            use_multiprocessing=(source.use_multiprocessing if use_multiprocessing is None
                                 else use_multiprocessing),
            max_queue_size=source.max_queue_size if max_queue_size is None else max_queue_size,
        )
        self.source = source
        self.augmentation = augmentation or ConvirtAugmentation(source.image_size)
        if getattr(self.augmentation, "image_size", source.image_size) != source.image_size:
            raise ValueError(
                f"the augmentation's image_size {self.augmentation.image_size} differs "
                f"from the source's {source.image_size}")
        for method in ("sample_parameters", "apply"):
            if not callable(getattr(self.augmentation, method, None)):
                raise TypeError(f"augmentation must have a {method}() method "
                                "(a ConvirtAugmentation)")
        self.batch_size = source.batch_size
        self.image_size = source.image_size
        self.mean = source.mean
        self.std = source.std
        self.seed = source.seed
        self.training = source.training
        self.num_studies = source.num_studies
        self._init_epochs()

    def __len__(self) -> int:
        return len(self.source)

    def set_shard(self, index: int, count: int) -> None:
        """This process's share of every batch (``PretrainingBatches.set_shard``)."""
        self.source.set_shard(index, count)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Batch ``index`` of the current epoch (see the module docstring for the keys)."""
        epoch = self._epoch
        data_epoch = epoch if self.training else 0
        _, rows = self.source.batch_rows(index, epoch)
        raw = self.source._images[rows.tolist()]["image"]  # uint8 (B, H, W)
        size = self.image_size
        views = np.empty((2, len(rows), size, size, 1), np.float32)
        transforms = np.empty((len(rows), 2, 2, 3), np.float32)
        first_position = (index * self.batch_size
                          + self.source.shard_index * self.source.local_batch_size)
        for k in range(len(rows)):
            pixels = raw[k].astype(np.float32) / np.float32(255.0)
            for view, stream in enumerate(_VIEW_STREAMS):
                rng = np.random.default_rng([self.seed, data_epoch, first_position + k, stream])
                params = self.augmentation.sample_parameters(pixels.shape, rng)
                views[view, k, :, :, 0] = self.augmentation.apply(pixels, params)
                transforms[k, view] = view_to_source_matrix(params, size, pixels.shape)
        views -= np.float32(self.mean)
        views /= np.float32(self.std)
        self._mark_served(index, epoch)
        return {keys.IMAGES: views[0], keys.SECOND_IMAGES: views[1],
                keys.VIEW_TO_SOURCE: transforms}

    def __repr__(self) -> str:
        return (
            f"ImageOnlyBatches(studies={self.num_studies}, batches={len(self)}, "
            f"batch_size={self.batch_size}, training={self.training}, views=2, "
            f"image_size={self.image_size}, epoch={self._epoch})"
        )
