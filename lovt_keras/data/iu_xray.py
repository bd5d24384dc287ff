"""IU X-ray (Open-i, NLMCXR) report XMLs with their PNG images, converted for pretraining.

Input (the Open-i downloads ``NLMCXR_reports.tgz`` and ``NLMCXR_png.tgz``, extracted)::

    reports_dir/ecgen-radiology/1.xml ...   (or reports_dir/1.xml ...)
        <AbstractText Label="FINDINGS">...</AbstractText>, Label="IMPRESSION", ...
        <parentImage id="CXR1_1_IM-0001-3001"> ... </parentImage>   (0 or more)
    images_dir/CXR1_1_IM-0001-3001.png ...

The Kaggle re-release (``images_normalized/1_IM-0001-3001.dcm.png``, named after the
DICOM files) is found too: an image is looked up as ``<id>.png`` first, then as
``<kaggle_stem(id)>.dcm.png`` (``CXR1_1_IM-0001-3001`` -> ``1_IM-0001-3001``).

Output (see ``write_dataset``): one row per linked image, columns
``features(image_size)``, splits ``train`` / ``validation`` / ``test`` and
``stats.json``. ``study_id`` is the report's ``uId`` (``"CXR1"``); all images of a
report share it, its ``sentences`` (findings then impression, ``prepare_report``) and
its ``report`` text.

Split: IU X-ray has no official split. The reports that pass the text rules (and keep
at least one image) are split by report: a permutation drawn with
``numpy.random.default_rng(seed)`` over them in file order (XML files sorted by their
number) puts the first ``round(f_train * n)`` in train, the next ``round(f_val * n)``
in validation and the rest in test, fractions normalized to sum 1 (default
80/10/10). Each split then keeps file order. Reports are not grouped by patient (the
XML carries no patient id).

Views: the XML has no per-image view. The ``<caption>`` describes the whole study
("Xray Chest PA and Lateral", "PA and lateral views of the chest") and is the same
for every image of a report, so it cannot tell the frontal image from the lateral
one. Without more information every linked image is kept with ``view`` "unknown"
(about half of them are laterals, unlike the frontal-only MIMIC-CXR data). With the
Kaggle ``indiana_projections.csv`` (``uid,filename,projection`` with Frontal /
Lateral) passed as ``projections``, ``view`` is the projection and, by default,
only frontal images are kept.

Bad input: a missing reports folder or one without XML files, a projections CSV with
missing columns or a duplicate filename, and ``frontal_only=True`` without
``projections`` raise errors naming the file. Skipped and counted per reason with
examples: invalid XML files, duplicate report ids and duplicate image ids (the first
occurrence is kept), reports without linked images, reports failing the text rules,
reports whose images are all non-frontal, non-frontal images or images without a
projection row (frontal_only), missing and unreadable image files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd

from lovt_keras.data.dataset_writer import (
    NO_IMAGE_FILE,
    UNREADABLE_IMAGE,
    ConversionError,
    ConversionResult,
    EmptyTrainSplitError,
    check_output_dir,
    flatten_skips,
    format_report,
    load_images,
    write_dataset,
)
from lovt_keras.data.reports import (
    FINDINGS,
    IMPRESSION,
    SkipCounter,
    parse_iu_xray_xml,
    prepare_report,
)

__all__ = [
    "FRONTAL",
    "UNKNOWN_VIEW",
    "convert_iu_xray",
    "features",
    "find_report_files",
    "image_path",
    "kaggle_stem",
    "read_projections",
    "split_reports",
]

FRONTAL = "Frontal"
UNKNOWN_VIEW = "unknown"
SPLIT_NAMES = ("train", "validation", "test")
_PROJECTION_COLUMNS = ("uid", "filename", "projection")


def features(image_size: int = 256) -> datasets.Features:
    """The ``datasets.Features`` of a converted IU X-ray split."""
    return datasets.Features({
        "image": datasets.Array2D((image_size, image_size), "uint8"),
        "study_id": datasets.Value("string"),
        "image_id": datasets.Value("string"),
        "view": datasets.Value("string"),
        "report": datasets.Value("string"),
        "sentences": datasets.Sequence(datasets.Value("string")),
        "mesh_major": datasets.Sequence(datasets.Value("string")),
    })


def find_report_files(reports_dir: str | os.PathLike) -> list[Path]:
    """The report XMLs in ``reports_dir`` (or its ``ecgen-radiology/``), by number.

    Raises:
        FileNotFoundError: the folder does not exist or holds no ``.xml`` file.
    """
    folder = Path(reports_dir)
    if (folder / "ecgen-radiology").is_dir():
        folder = folder / "ecgen-radiology"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: IU X-ray reports folder not found")
    files = [p for p in folder.iterdir() if p.suffix.lower() == ".xml" and p.is_file()]
    if not files:
        raise FileNotFoundError(f"{folder}: no .xml report files (expected ecgen-radiology/<n>.xml)")
    return sorted(files, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name))


def kaggle_stem(image_id: str) -> str:
    """The Kaggle re-release's file stem of an Open-i image id.

    The Kaggle files are named after the DICOM files, ``<uid>_IM-<series>``: the image
    ``CXR1_1_IM-0001-3001`` of report 1 is ``1_IM-0001-3001.dcm.png`` and
    ``CXR3_IM-1384-1001`` is ``3_IM-1384-1001.dcm.png``.
    """
    name = image_id[3:] if image_id.startswith("CXR") else image_id
    head, sep, rest = name.partition("_IM-")
    if not sep:
        return name
    return f"{head.split('_')[0]}_IM-{rest}"


def image_path(images_dir: str | os.PathLike, image_id: str) -> Path:
    """The PNG of ``image_id``: ``<id>.png`` (NLMCXR_png), else Kaggle's ``<kaggle_stem>.dcm.png``.

    Returns the NLMCXR name when neither exists (the caller reports it as missing).
    """
    folder = Path(images_dir)
    path = folder / f"{image_id}.png"
    if not path.is_file():
        kaggle = folder / f"{kaggle_stem(image_id)}.dcm.png"
        if kaggle.is_file():
            return kaggle
    return path


def read_projections(path: str | os.PathLike) -> dict[str, str]:
    """Reads the Kaggle ``indiana_projections.csv``: file stem -> projection.

    Look an Open-i image id up with ``kaggle_stem(image_id)``: the row of
    ``1_IM-0001-4001.dcm.png`` belongs to ``CXR1_1_IM-0001-4001``.

    Raises:
        ValueError: missing columns or a duplicate filename, naming the file and lines.
    """
    path = Path(path)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in _PROJECTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the header has {list(frame.columns)}")
    projections: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for index, (filename, projection) in enumerate(zip(frame["filename"], frame["projection"])):
        stem = filename.strip()
        for suffix in (".dcm.png", ".png"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if stem in projections:
            raise ValueError(
                f"{path}: duplicate filename {filename!r} on lines {first_line[stem]} and "
                f"{index + 2}"
            )
        projections[stem] = projection.strip()
        first_line[stem] = index + 2
    return projections


def split_reports(
    n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> list[np.ndarray]:
    """Indices ``0..n-1`` assigned to train / validation / test (see the module docstring).

    Returns:
        Three sorted int arrays that partition ``range(n)``.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or np.any(fractions < 0) or fractions.sum() <= 0:
        raise ValueError(f"split must be 3 non-negative fractions with a positive sum, got {fractions}")
    fractions = fractions / fractions.sum()
    order = np.random.default_rng(seed).permutation(n)
    n_train = round(fractions[0] * n)
    n_val = min(round(fractions[1] * n), n - n_train)
    parts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    return [np.sort(p) for p in parts]


@dataclass
class _Report:
    study_id: str
    path: Path
    sentences: list[str]
    report: str
    mesh_major: list[str]
    images: list[tuple[str, str]] = field(default_factory=list)  # (image_id, view)


def convert_iu_xray(
    reports_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    image_size: int = 256,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    projections: str | os.PathLike | None = None,
    frontal_only: bool | None = None,
    overwrite: bool = False,
    num_proc: int = 1,
) -> ConversionResult:
    """Converts the IU X-ray XML reports and PNG images into a pretraining dataset folder.

    Args:
        reports_dir: folder of the report XMLs (or the folder holding ``ecgen-radiology/``).
        images_dir: folder of the PNG images (``NLMCXR_png`` or Kaggle ``images_normalized``).
        output_dir: the dataset folder to write (must not exist unless ``overwrite``).
        image_size: side of the stored square images.
        split: train / validation / test fractions of the reports.
        seed: seed of the report split.
        projections: optional Kaggle ``indiana_projections.csv`` giving each image's view.
        frontal_only: keep only frontal images; default True with ``projections`` and
            False without (the XML cannot tell views apart; True then raises).
        overwrite: replace an existing ``output_dir``.
        num_proc: worker processes decoding images.

    Returns:
        ``ConversionResult`` with rows per split, skip counters ``"reports"`` and
        ``"images"``, the ``stats.json`` content and notes.

    Raises:
        FileNotFoundError, ValueError: see the module docstring; OutputExistsError:
            ``output_dir`` exists.
        ConversionError: no train image could be written (``result`` says why).
    """
    output_dir = check_output_dir(output_dir, overwrite)
    if frontal_only is None:
        frontal_only = projections is not None
    if frontal_only and projections is None:
        raise ValueError(
            "frontal_only=True needs projections= (indiana_projections.csv): the Open-i XML "
            "does not say which image is frontal"
        )
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    files = find_report_files(reports_dir)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: images folder not found")
    views = read_projections(projections) if projections is not None else None

    reports_skipped = SkipCounter(noun="reports")
    images_skipped = SkipCounter(noun="images")
    result = ConversionResult(
        output_dir=output_dir, skipped={"reports": reports_skipped, "images": images_skipped}
    )
    kept = _read_reports(files, views, frontal_only, reports_skipped, images_skipped)

    parts = split_reports(len(kept), split, seed)
    by_split = {name: [kept[i] for i in part] for name, part in zip(SPLIT_NAMES, parts)}
    report_counts: dict[str, int] = {}

    def rows(split_name: str) -> Iterator[dict[str, Any]]:
        tasks = [(report, image_id, view) for report in by_split[split_name]
                 for image_id, view in report.images]
        paths = [image_path(images_dir, image_id) for _, image_id, _ in tasks]
        written: set[str] = set()
        for (report, image_id, view), path, (image, reason, missing) in zip(
            tasks, paths, load_images(paths, image_size, num_proc)
        ):
            if image is None:
                if missing:
                    images_skipped.add(NO_IMAGE_FILE, source=str(path))
                else:
                    images_skipped.add(UNREADABLE_IMAGE, source=f"{path} ({reason})")
                continue
            written.add(report.study_id)
            yield {
                "image": image,
                "study_id": report.study_id,
                "image_id": image_id,
                "view": view,
                "report": report.report,
                "sentences": report.sentences,
                "mesh_major": report.mesh_major,
            }
        report_counts[split_name] = len(written)

    def stats_extra() -> dict[str, Any]:
        return {
            "source": f"IU X-ray / Open-i NLMCXR ({Path(reports_dir)}, {images_dir})",
            "split": {"fractions": [float(f) for f in split], "seed": seed, "by": "report"},
            "frontal_only": frontal_only,
            "projections": str(projections) if projections is not None else None,
            "study_counts": dict(report_counts),
            "skipped": flatten_skips(result.skipped),
            "notes": dict(result.notes),
        }

    try:
        result.stats = write_dataset(
            output_dir, {name: rows(name) for name in SPLIT_NAMES}, features(image_size),
            stats_extra, overwrite=overwrite,
        )
    except EmptyTrainSplitError as error:
        raise ConversionError(f"{error}\n{result.summary()}", result) from error
    result.counts = dict(result.stats["counts"])
    return result


def _read_reports(
    files: list[Path],
    views: dict[str, str] | None,
    frontal_only: bool,
    reports_skipped: SkipCounter,
    images_skipped: SkipCounter,
) -> list[_Report]:
    kept: list[_Report] = []
    report_ids: dict[str, Path] = {}
    image_ids: dict[str, Path] = {}
    text_counter = SkipCounter(noun="reports")
    for path in files:
        try:
            parsed = parse_iu_xray_xml(path)
        except ValueError as error:
            reports_skipped.add("invalid report XML", source=str(error))
            continue
        study_id = str(parsed["report_id"]) or path.stem
        if study_id in report_ids:
            reports_skipped.add(
                "duplicate report id", source=f"{path} ({study_id}, first in {report_ids[study_id].name})"
            )
            continue
        report_ids[study_id] = path
        linked = list(parsed["image_ids"])
        images_skipped.seen += len(linked)
        if not linked:
            reports_skipped.add("no linked images", source=str(path))
            continue
        sentences = prepare_report(parsed, text_counter, source=str(path))
        if sentences is None:
            images_skipped.add("report skipped (see reports)", n=len(linked))
            continue
        report = _Report(
            study_id=study_id,
            path=path,
            sentences=sentences,
            report=format_report(str(parsed[FINDINGS]), str(parsed[IMPRESSION])),
            mesh_major=[str(m) for m in parsed["mesh_major"]],
        )
        for image_id in linked:
            source = f"{image_id} in {path.name}"
            if image_id in image_ids:
                images_skipped.add(
                    "duplicate image id", source=f"{source} (first in {image_ids[image_id].name})"
                )
                continue
            image_ids[image_id] = path
            stem = kaggle_stem(image_id)
            view = UNKNOWN_VIEW if views is None else views.get(stem, UNKNOWN_VIEW)
            if frontal_only:
                if views is not None and stem not in views:
                    images_skipped.add("no projection row", source=source)
                    continue
                if view != FRONTAL:
                    images_skipped.add(f"view {view}", source=source)
                    continue
            report.images.append((image_id, view))
        if not report.images:
            reports_skipped.add("no usable image", source=str(path))
            continue
        kept.append(report)
    reports_skipped.merge(text_counter)  # merge adds text_counter.seen; the total is:
    reports_skipped.seen = len(files)
    return kept
