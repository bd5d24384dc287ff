"""SynthCXR: a synthetic chest-X-ray-like dataset of images, reports and labels.

Each sample is a grayscale PA-view image with anatomy (body, lungs, mediastinum and
heart, diaphragm domes, ribs, clavicles, spine) that varies per image, zero or more
localized findings, the radiology report that describes them, and evaluation labels
(one box and one class per finding, a pixel mask per class). Everything is
deterministic from a seed: sample ``index`` of split ``split`` uses the generator
``numpy.random.default_rng(SeedSequence(seed, spawn_key=(split_code, index)))``, so it
does not depend on how many samples were generated before it.

Conventions (see ``synthcxr_render`` for the geometry):

- ``side`` is the PATIENT's side, as in reports. PA view: the patient's right lung is
  on the IMAGE's left. A "left lower lobe" finding lies in the lower right of the image.
- ``zone`` is the upper, middle or lower third of that lung (apex to costophrenic
  angle); cardiomegaly has no side or zone (``None``).
- Class ids index ``FINDING_CLASSES``.
- Boxes are ``(x, y, w, h)`` in pixels, tight around the finding's mask.
- Sizes in cm assume ``FIELD_OF_VIEW_CM`` (38 cm) across the image width.

Dataset storage (``generate_split`` / ``load_synthcxr``): the ``masks`` column is a
single ``uint8`` ``(H, W)`` array where bit ``c`` is set inside class ``c`` (C = 6
classes fit one byte; storing ``(C, H, W)`` would make the dataset 6 times larger);
``decode_masks`` unpacks it to ``(C, H, W)``. ``findings`` is a JSON list of dicts.

Typical use::

    ds = load_synthcxr()                        # DatasetDict train/validation/test
    stats = load_stats(ds)                      # {"mean": ..., "std": ...}, train pixels in [0, 1]
    row = ds["train"].with_format("numpy")[0]   # note: datasets returns integers as int64
    masks = decode_masks(row)                   # (6, 224, 224) uint8 (DEFAULT_IMAGE_SIZE)
    findings = json.loads(ds["train"][0]["findings"])

Each finding dict holds ``kind``, ``side``, ``zone``, ``severity`` (mild / moderate /
severe for opacity, pneumothorax, effusion, cardiomegaly; else None), ``subtype``
(nodule / mass; coin / button / wire / tube), ``size_px`` and ``size_cm`` (larger box
side), ``box``, ``medial`` (left lower lesion behind the heart), ``sentence_ids``
(indices into ``sentences`` of its FINDINGS and IMPRESSION sentences) and, by kind,
``collapse`` (pneumothorax) or ``cardiothoracic_ratio`` (cardiomegaly).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np

from lovt_keras.data.dataset_writer import imap_ordered
from lovt_keras.data.synthcxr_render import (
    CLASS_INDEX,
    FIELD_OF_VIEW_CM,
    FINDING_CLASSES,
    FOREIGN_SUBTYPES,
    SIDES,
    ZONES,
    Finding,
    render,
    sample_anatomy,
)
from lovt_keras.data.synthcxr_reports import ZONE_WORDS, format_report, write_report
from lovt_keras.files import replace_folder

__all__ = [
    "SYNTHCXR_VOCAB_SIZE",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NUM_TEST",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VALIDATION",
    "DEFAULT_SEED",
    "FIELD_OF_VIEW_CM",
    "FINDING_CLASSES",
    "GENERATOR_VERSION",
    "SPLITS",
    "ZONE_WORDS",
    "decode_masks",
    "features",
    "generate_sample",
    "generate_split",
    "load_stats",
    "load_synthcxr",
    "sample_rng",
    "synthcxr_dir",
]

# Bump when the output for a given seed changes, so old caches are not reused.
GENERATOR_VERSION = 1
SPLITS = ("train", "validation", "test")
NORMAL_FRACTION = 0.35
STATS_FILE = "stats.json"

# The default dataset: split sizes, image side and generator seed of ``load_synthcxr``
# and ``synthcxr_dir`` (also ``tools.prepare synthcxr``'s flag defaults).
DEFAULT_NUM_TRAIN = 2000
DEFAULT_NUM_VALIDATION = 200
DEFAULT_NUM_TEST = 500
DEFAULT_IMAGE_SIZE = 224
DEFAULT_SEED = 0
# Vocabulary bound of the report tokenizer trained on a SynthCXR train split
# (``pretraining_dataset.synthcxr_tokenizer``).
SYNTHCXR_VOCAB_SIZE = 2000

# ------------------------------------------------------------ finding sampling

_KIND_WEIGHTS = {
    "opacity": 0.3,
    "nodule": 0.17,
    "effusion": 0.18,
    "pneumothorax": 0.12,
    "cardiomegaly": 0.1,
    "foreign_object": 0.13,
}
_SCENARIOS = {  # abnormal images: which story the findings tell
    "single": 0.4,
    "pneumonia": 0.17,
    "heart_failure": 0.1,
    "pneumothorax": 0.08,
    "metastases": 0.08,
    "bilateral": 0.07,
    "mixed": 0.1,
}
_PARENCHYMA = ("opacity", "nodule")


class _Specs:
    """Collects finding specs and enforces the co-occurrence rules."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.items: list[Finding] = []

    def severity(self) -> str:
        return ("mild", "moderate", "severe")[int(self.rng.choice(3, p=(0.4, 0.4, 0.2)))]

    def side(self) -> str:
        return SIDES[int(self.rng.integers(2))]

    def zone(self, kind: str) -> str:
        if kind == "effusion":
            return "lower"
        if kind == "pneumothorax":
            return "upper" if self.rng.random() < 0.8 else "lower"
        p = (0.3, 0.3, 0.4) if kind == "opacity" else (1 / 3, 1 / 3, 1 / 3)
        return ZONES[int(self.rng.choice(3, p=p))]

    def allowed(self, kind: str, side: str | None, zone: str | None) -> bool:
        for f in self.items:
            if kind == "cardiomegaly" and f.kind == "cardiomegaly":
                return False
            if f.side != side or side is None:
                continue
            if kind in ("effusion", "pneumothorax") and f.kind == kind:
                return False  # one per side
            # A pneumothorax side carries no other lung finding (no hydropneumothorax).
            lung_kinds = ("pneumothorax", "effusion", *_PARENCHYMA)
            if (kind == "pneumothorax" and f.kind in lung_kinds) or (
                f.kind == "pneumothorax" and kind in lung_kinds
            ):
                return False
            if kind in _PARENCHYMA and f.kind in _PARENCHYMA and f.zone == zone:
                return False  # one lung lesion per zone
            if kind == f.kind and kind in _PARENCHYMA and {zone, f.zone} == {"upper", "middle"}:
                return False  # same kind in adjacent zones would merge
            if kind == f.kind and kind in _PARENCHYMA and {zone, f.zone} == {"middle", "lower"}:
                return False
        return True

    def add(self, kind: str, side: str | None = None, zone: str | None = None) -> bool:
        if kind != "cardiomegaly":
            side = side or self.side()
            zone = zone or self.zone(kind)
        else:
            side = zone = None
        if not self.allowed(kind, side, zone):
            return False
        f = Finding(kind=kind, side=side, zone=zone)
        if kind in ("opacity", "effusion", "pneumothorax", "cardiomegaly"):
            f.severity = self.severity()
        elif kind == "nodule":
            f.subtype = "mass" if self.rng.random() < 0.6 else "nodule"
        else:
            f.subtype = FOREIGN_SUBTYPES[int(self.rng.choice(4, p=(0.3, 0.15, 0.25, 0.3)))]
        self.items.append(f)
        return True

    def kind(self) -> str:
        kinds = list(_KIND_WEIGHTS)
        return kinds[int(self.rng.choice(len(kinds), p=list(_KIND_WEIGHTS.values())))]

    def other_place(self, side: str, zone: str) -> tuple[str, str]:
        """Same zone on the other side, or another non-adjacent zone on the same side."""
        other = "left" if side == "right" else "right"
        if zone == "middle" or self.rng.random() < 0.6:
            return other, zone
        return side, ("lower" if zone == "upper" else "upper")


def sample_findings(rng: np.random.Generator) -> list[Finding]:
    """Draws the finding specs (kind, side, zone, severity/subtype) of one image.

    About ``NORMAL_FRACTION`` of images are normal. Abnormal images follow one of a
    few clinical stories (pneumonia with effusion, heart failure, pneumothorax with a
    chest tube, metastases, bilateral disease, mixed) so that about half carry two or
    more findings in different places, often the same kind on both sides or in two
    zones.
    """
    if rng.random() < NORMAL_FRACTION:
        return []
    s = _Specs(rng)
    names = list(_SCENARIOS)
    scenario = names[int(rng.choice(len(names), p=list(_SCENARIOS.values())))]
    if scenario == "single":
        s.add(s.kind())
    elif scenario == "pneumonia":
        side, zone = s.side(), s.zone("opacity")
        s.add("opacity", side, zone)
        if rng.random() < 0.55:
            s.add("opacity", *s.other_place(side, zone))
        if rng.random() < 0.4:
            s.add("effusion", side)
    elif scenario == "heart_failure":
        s.add("cardiomegaly")
        s.add("effusion", "right")
        if rng.random() < 0.6:
            s.add("effusion", "left")
        if rng.random() < 0.3:
            s.add("opacity", "right", "lower")
            s.add("opacity", "left", "lower")
    elif scenario == "pneumothorax":
        side = s.side()
        s.add("pneumothorax", side)
        if rng.random() < 0.5 and s.add("foreign_object", side, "middle"):
            s.items[-1].subtype = "tube"
        if rng.random() < 0.3:
            s.add(s.kind(), "left" if side == "right" else "right")
    elif scenario == "metastases":
        for _ in range(int(rng.integers(2, 4))):
            for _ in range(4):  # retry until a free place is found
                if s.add("nodule"):
                    break
        if rng.random() < 0.3:
            s.add("effusion")
    elif scenario == "bilateral":
        kind = ("opacity", "nodule", "effusion", "foreign_object", "pneumothorax")[
            int(rng.choice(5, p=(0.35, 0.2, 0.25, 0.1, 0.1)))
        ]
        zone = s.zone(kind)
        s.add(kind, "right", zone)
        s.add(kind, "left", zone)
    else:  # mixed: two or three kinds in different places
        for _ in range(int(rng.integers(2, 4))):
            for _ in range(4):
                if s.add(s.kind()):
                    break
    return s.items


# ---------------------------------------------------------------------- samples


def _spec(item) -> Finding:
    if isinstance(item, Finding):
        return Finding(item.kind, item.side, item.zone, item.severity, item.subtype)
    item = dict(item)
    kind = item["kind"]
    if kind not in CLASS_INDEX:
        raise ValueError(f"unknown finding kind {kind!r}; expected one of {FINDING_CLASSES}")
    f = Finding(
        kind=kind,
        side=item.get("side"),
        zone=item.get("zone"),
        severity=item.get("severity"),
        subtype=item.get("subtype"),
    )
    if kind != "cardiomegaly":
        if f.side not in SIDES or f.zone not in ZONES:
            raise ValueError(f"finding {item!r}: side must be in {SIDES} and zone in {ZONES}")
    else:
        f.side = f.zone = None
    if kind in ("opacity", "effusion", "pneumothorax", "cardiomegaly"):
        f.severity = f.severity or "moderate"
    elif kind == "nodule":
        f.subtype = f.subtype or "nodule"
    else:
        f.subtype = f.subtype or "coin"
    if kind == "effusion":
        f.zone = "lower"
    return f


def generate_sample(
    rng: np.random.Generator,
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    findings: Sequence | None = None,
) -> dict:
    """Generates one image with its report and labels.

    Args:
        rng: the sample's random generator (see ``sample_rng``).
        image_size: side of the square image in pixels.
        findings: optional list of finding specs to draw instead of random ones: dicts
            with ``kind`` and (except cardiomegaly) ``side`` and ``zone``, optionally
            ``severity`` / ``subtype``; ``[]`` gives a normal image. The anatomy and
            noise depend only on ``rng``, so the same ``rng`` seed with and without
            findings gives the same patient.

    Returns:
        dict with ``image`` uint8 ``(H, W)``; ``report`` str with "FINDINGS:" and
        "IMPRESSION:" sections; ``sentences`` list[str] (findings sentences then
        impression sentences, in report order); ``boxes`` float32 ``(K, 4)`` as
        ``(x, y, w, h)`` pixels; ``box_classes`` int32 ``(K,)``; ``masks`` uint8
        ``(C, H, W)`` binary, one per class of ``FINDING_CLASSES``; ``findings``: K
        dicts (kind, side, zone, size_px, size_cm, severity, subtype, box, medial,
        sentence_ids, ...), in the order of ``boxes``.
    """
    image, specs, bits, findings_sentences, impression, ids = _generate(rng, image_size, findings)
    return {
        "image": image,
        "report": format_report(findings_sentences, impression),
        "sentences": findings_sentences + impression,
        "boxes": _boxes(specs),
        "box_classes": np.array([CLASS_INDEX[f.kind] for f in specs], np.int32),
        "masks": decode_masks({"masks": bits}),
        "findings": [dict(f.to_dict(), sentence_ids=i) for f, i in zip(specs, ids)],
    }


def _generate(rng, image_size, findings):
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    seeds = rng.integers(0, 2**63, size=3)
    rng_scene, rng_findings, rng_text = (np.random.default_rng(int(s)) for s in seeds)
    anatomy = sample_anatomy(rng_scene)
    specs = sample_findings(rng_findings) if findings is None else [_spec(f) for f in findings]
    image, kept, bits = render(anatomy, specs, image_size, rng_scene, rng_findings)
    findings_sentences, impression, ids = write_report(kept, rng_text)
    return image, kept, bits, findings_sentences, impression, ids


def _boxes(specs: list[Finding]) -> np.ndarray:
    return np.array([f.box for f in specs], np.float32).reshape(-1, 4)


def decode_masks(row) -> np.ndarray:
    """Unpacks the bit-packed ``masks`` column into binary masks.

    Args:
        row: a dataset row (dict with ``masks``) or the packed array itself, uint8
            ``(..., H, W)`` where bit c marks class ``FINDING_CLASSES[c]``.

    Returns:
        uint8 ``(..., C, H, W)`` with values 0/1, C = ``len(FINDING_CLASSES)``.
    """
    packed = row["masks"] if isinstance(row, Mapping) else row
    packed = np.asarray(packed, dtype=np.uint8)
    shifts = np.arange(len(FINDING_CLASSES), dtype=np.uint8).reshape(-1, 1, 1)
    return (packed[..., None, :, :] >> shifts) & np.uint8(1)


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: a function of all three only."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(_split_code(split), index))
    )


def _split_code(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else zlib.crc32(split.encode()) + len(SPLITS)


# ---------------------------------------------------------------------- datasets


def features(image_size: int = DEFAULT_IMAGE_SIZE) -> datasets.Features:
    """The ``datasets.Features`` of a SynthCXR split."""
    shape = (image_size, image_size)
    return datasets.Features(
        {
            "image": datasets.Array2D(shape, "uint8"),
            "study_id": datasets.Value("string"),
            "report": datasets.Value("string"),
            "sentences": datasets.Sequence(datasets.Value("string")),
            "boxes": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
            "box_classes": datasets.Sequence(datasets.Value("int32")),
            "masks": datasets.Array2D(shape, "uint8"),  # bit c = class c, see decode_masks
            "findings": datasets.Value("string"),  # JSON list of finding dicts
        }
    )


def _sample_row(args: tuple[str, int, int, int]) -> dict:
    """The dataset row of sample ``(split, index, seed, image_size)`` (picklable for
    worker processes)."""
    split, index, seed, image_size = args
    image, specs, bits, findings_sentences, impression, ids = _generate(
        sample_rng(seed, split, index), image_size, None
    )
    return {
        "image": image,
        "study_id": f"synthcxr-{seed}-{split}-{index:06d}",
        "report": format_report(findings_sentences, impression),
        "sentences": findings_sentences + impression,
        "boxes": _boxes(specs),
        "box_classes": np.array([CLASS_INDEX[f.kind] for f in specs], np.int32),
        "masks": bits,
        "findings": json.dumps([dict(f.to_dict(), sentence_ids=i) for f, i in zip(specs, ids)]),
    }


def _rows(split: str, num_samples: int, seed: int, image_size: int,
          num_proc: int) -> Iterator[dict]:
    # Spawned workers (imap_ordered), never datasets' forked ones: the parent may hold
    # the threads of a backend (JAX warns that a fork can deadlock).
    items = ((split, index, seed, image_size) for index in range(num_samples))
    yield from imap_ordered(_sample_row, items, num_proc=num_proc, chunksize=16)


def generate_split(
    num_samples: int,
    seed: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    split: str = "train",
    num_proc: int = 1,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """Generates samples ``0 .. num_samples - 1`` of ``split`` as a ``datasets.Dataset``.

    With ``cache_dir=None`` the result is kept in memory; otherwise its Arrow files are
    written under ``cache_dir`` (which must outlive the dataset). With ``num_proc`` > 1,
    that many spawned worker processes generate the samples (rows are written in index
    order by this process); the result does not depend on ``num_proc``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    num_proc = max(1, min(int(num_proc), num_samples))
    fingerprint = f"synthcxr-v{GENERATOR_VERSION}-{seed}-{split}-{num_samples}-{image_size}"
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="synthcxr-"))
            keep_in_memory = True
        else:
            keep_in_memory = False
        with _quiet_datasets():
            ds = datasets.Dataset.from_generator(
                _rows,
                features=features(image_size),
                cache_dir=str(cache_dir),
                keep_in_memory=keep_in_memory,
                gen_kwargs={
                    "split": split,
                    "num_samples": num_samples,
                    "seed": seed,
                    "image_size": image_size,
                    "num_proc": num_proc,
                },
                fingerprint=fingerprint,
                split=datasets.NamedSplit(split),
            )
    return ds


@contextlib.contextmanager
def _quiet_datasets():
    """Hides the datasets progress bars while building (they flood test logs)."""
    enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            datasets.utils.logging.enable_progress_bar()


def synthcxr_dir(
    cache_dir: str | os.PathLike | None = None,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_validation: int = DEFAULT_NUM_VALIDATION,
    num_test: int = DEFAULT_NUM_TEST,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
) -> Path:
    """Folder that ``load_synthcxr`` uses for these parameters.

    ``cache_dir`` defaults to ``$LOVT_KERAS_CACHE/synthcxr`` or
    ``~/.cache/lovt_keras/synthcxr``.
    """
    if cache_dir is None:
        root = os.environ.get("LOVT_KERAS_CACHE")
        cache_dir = (
            Path(root) / "synthcxr" if root else Path.home() / ".cache" / "lovt_keras" / "synthcxr"
        )
    name = (
        f"synthcxr-v{GENERATOR_VERSION}-seed{seed}-px{image_size}"
        f"-n{num_train}-{num_validation}-{num_test}"
    )
    return Path(cache_dir).expanduser() / name


def load_synthcxr(
    cache_dir: str | os.PathLike | None = None,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_validation: int = DEFAULT_NUM_VALIDATION,
    num_test: int = DEFAULT_NUM_TEST,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    num_proc: int = 1,
) -> datasets.DatasetDict:
    """Loads SynthCXR from the cache, generating and saving it the first time.

    The dataset is written to a temporary sibling folder and renamed into place only
    when complete (with ``stats.json``), so an interrupted run never leaves a folder
    that loads. ``stats.json`` holds the train split's pixel mean and std (pixels
    scaled to [0, 1]); read it with ``load_stats``.

    Returns:
        ``DatasetDict`` with splits "train", "validation", "test" (features:
        ``features(image_size)``).
    """
    final = synthcxr_dir(cache_dir, num_train, num_validation, num_test, image_size, seed)
    if final.exists() and not (final / STATS_FILE).is_file():
        raise FileExistsError(
            f"{final}: exists but has no {STATS_FILE}, so it was not written by a complete "
            "load_synthcxr run; delete it to regenerate"
        )
    if not final.exists():
        _build(
            final,
            {"train": num_train, "validation": num_validation, "test": num_test},
            image_size,
            seed,
            num_proc,
        )
    return datasets.load_from_disk(str(final))


def _build(final: Path, sizes: dict, image_size: int, seed: int, num_proc: int) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    build = tmp / "_build"
    try:
        splits = {
            name: generate_split(
                n, seed, image_size, split=name, num_proc=num_proc, cache_dir=build / name
            )
            for name, n in sizes.items()
        }
        with _quiet_datasets():
            datasets.DatasetDict(splits).save_to_disk(str(tmp / "dataset"))
        stats = _pixel_stats(splits["train"])
        stats.update(split="train", seed=seed, image_size=image_size, version=GENERATOR_VERSION)
        del splits
        shutil.rmtree(build)
        # Move the dataset files up so that the final folder is a DatasetDict folder.
        for item in (tmp / "dataset").iterdir():
            item.rename(tmp / item.name)
        (tmp / "dataset").rmdir()
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2))
        try:
            replace_folder(tmp, final, overwrite=False)
        except OSError:
            if not (final / STATS_FILE).is_file():  # not a concurrent build that won
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _pixel_stats(ds: datasets.Dataset) -> dict:
    """Mean and std (population) of all pixels / 255, exact via a histogram."""
    hist = np.zeros(256, np.int64)
    images = ds.with_format("numpy", columns=["image"])
    for start in range(0, len(ds), 64):
        batch = images[start : start + 64]["image"]
        hist += np.bincount(batch.reshape(-1), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    count = int(hist.sum())
    mean = float((hist * values).sum() / count)
    var = float((hist * (values - mean) ** 2).sum() / count)
    return {"mean": mean, "std": var**0.5, "num_pixels": count}


def load_stats(path) -> dict:
    """Reads ``stats.json`` of a SynthCXR folder.

    Args:
        path: the folder of ``load_synthcxr`` (see ``synthcxr_dir``), the
            ``stats.json`` file itself, or a ``Dataset``/``DatasetDict`` loaded by
            ``load_synthcxr``.

    Returns:
        dict with ``mean`` and ``std`` of the train pixels scaled to [0, 1] (and
        ``num_pixels``, ``seed``, ``image_size``, ``version``).
    """
    if isinstance(path, datasets.DatasetDict):
        path = next(iter(path.values()))
    if isinstance(path, datasets.Dataset):
        if not path.cache_files:
            raise ValueError("dataset is in memory; pass the SynthCXR folder instead")
        path = Path(path.cache_files[0]["filename"]).parent.parent
    path = Path(path)
    file = path if path.name == STATS_FILE else path / STATS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no SynthCXR stats file (generate with load_synthcxr)")
    return json.loads(file.read_text())
