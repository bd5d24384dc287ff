"""MIMIC-CXR-JPG 2.0.0 with the MIMIC-CXR reports, converted for LoVT pretraining.

Input (PhysioNet layouts, ``root`` = the MIMIC-CXR-JPG folder)::

    root/mimic-cxr-2.0.0-split.csv.gz      dicom_id,study_id,subject_id,split (train/validate/test)
    root/mimic-cxr-2.0.0-metadata.csv.gz   dicom_id,subject_id,study_id,...,ViewPosition,...
    root/mimic-cxr-2.0.0-chexpert.csv.gz   subject_id,study_id,<14 CheXpert labels>
    root/files/p10/p10000032/s50414267/<dicom_id>.jpg
    reports: mimic-cxr-reports.zip (MIMIC-CXR 2.0.0; members files/p10/p10000032/s50414267.txt)
             or its extracted folder (with or without the leading ``files/``)

Uncompressed ``.csv`` files are accepted too. Output (see ``write_dataset``): one row
per frontal image, columns ``features(image_size)``, splits ``train`` / ``validation``
(the official ``validate``) / ``test``, and ``stats.json``.

What is kept, following the official LoVT builder
(``src/data/datasets/mimic_cxr/mimic_cxr_dataset.py``):

- the official split; images with ``ViewPosition`` PA or AP (frontal); every other
  value is skipped and counted by value, a blank one as "no view position";
- the findings and impression sentences of the study's report (``prepare_report``:
  studies without either section, without sentences or with fewer than 3 tokens are
  skipped and counted);
- CheXpert labels of the 5 competition classes (``CHEXPERT_LABELS`` order), U-ones:
  1.0 -> 1, -1.0 (uncertain) -> 1, 0.0 -> 0, blank -> 0. A kept study without a row
  in the CheXpert CSV gets all zeros and is counted in the notes;
- the images, read with ``read_image``, padded to a centred square, resized to
  ``image_size`` and stored as uint8.

Order and the train subset: studies are ordered by ``(subject_id, study_id)`` as
numbers -- the order of the official builder (``groupby(["subject_id",
"study_id"])``), which is also the order of the split CSV -- and a study's images keep
their split-CSV order. ``train_fraction`` keeps the first
``round(train_fraction * n)`` of the ``n`` train studies that pass the report and
view filters (the official ``Subset(range(round(len * train_subset)))`` over its
filtered study dataset); validation and test stay complete. The subset is fixed
before the images are decoded, so a study whose images all turn out unreadable still
takes its place in it. ``stats.json`` mean/std are those of the stored train split,
i.e. of the subset when ``train_fraction < 1`` (the official code computed them on
the full train split, at full resolution and without padding).

Bad input: a missing CSV, missing CSV columns, a duplicate ``dicom_id`` (in the split
or the metadata CSV), a duplicate CheXpert study, non-numeric ids, a study assigned
to two splits or an unknown CheXpert value raise ``ValueError`` / ``FileNotFoundError``
naming the file and line. Everything else is skipped and counted per reason with
example files: unknown split values, images without a metadata row or whose
subject/study disagree, non-frontal views, studies without a frontal image or without
a report file, unreadable reports, reports failing the text rules, missing and
unreadable image files. The official 54 section-parser exception studies are not
excluded (see ``lovt_keras.data.reports``).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
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
    parse_mimic_report,
    prepare_report,
)

__all__ = [
    "CHEXPERT_FILE",
    "CHEXPERT_LABELS",
    "FRONTAL_VIEWS",
    "METADATA_FILE",
    "REPORTS_ZIP",
    "SPLIT_FILE",
    "chexpert_u_ones",
    "convert_mimic_cxr",
    "features",
    "format_report",
]

SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"
METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert.csv.gz"
REPORTS_ZIP = "mimic-cxr-reports.zip"
FRONTAL_VIEWS = ("PA", "AP")
# The 5 CheXpert competition labels, in the order of the official monitoring probes.
CHEXPERT_LABELS = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
# Official split names -> ours.
SPLIT_NAMES = {"train": "train", "validate": "validation", "test": "test"}

# Image skip reason for the frontal images of a study that was skipped (reason there).
STUDY_SKIPPED = "study skipped (see studies)"
_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
_METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
_CHEXPERT_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)


def features(image_size: int = 256) -> datasets.Features:
    """The ``datasets.Features`` of a converted MIMIC-CXR split."""
    return datasets.Features({
        "image": datasets.Array2D((image_size, image_size), "uint8"),
        "study_id": datasets.Value("string"),
        "subject_id": datasets.Value("string"),
        "dicom_id": datasets.Value("string"),
        "view": datasets.Value("string"),
        "report": datasets.Value("string"),
        "sentences": datasets.Sequence(datasets.Value("string")),
        "chexpert": datasets.Sequence(datasets.Value("float32")),  # CHEXPERT_LABELS order
    })


def chexpert_u_ones(values: Mapping[str, str], source: str = "") -> list[float]:
    """Binary CheXpert labels with the U-ones rule, in ``CHEXPERT_LABELS`` order.

    Args:
        values: label name -> the CSV cell as text (``"1.0"``, ``"0.0"``, ``"-1.0"``,
            ``""``; integers ``"1"``, ``"0"``, ``"-1"`` are accepted too).
        source: the file and line, for the error message.

    Returns:
        5 floats: positive and uncertain -> 1.0, negative and blank -> 0.0.

    Raises:
        ValueError: a value that is none of those, naming ``source`` and the column.
    """
    labels = []
    for name in CHEXPERT_LABELS:
        text = str(values[name]).strip()
        if text == "":
            labels.append(0.0)
            continue
        try:
            number = float(text)
        except ValueError:
            number = None
        if number not in (1.0, 0.0, -1.0):
            raise ValueError(
                f"{source}: CheXpert column {name!r} has value {text!r}; expected 1.0, 0.0, "
                "-1.0 or blank"
            )
        labels.append(0.0 if number == 0.0 else 1.0)
    return labels


# --------------------------------------------------------------------------------------
# CSV files
# --------------------------------------------------------------------------------------


def _find_csv(root: Path, name: str) -> Path:
    candidates = [root / name, root / name.removesuffix(".gz")]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{candidates[0]}: not found (nor {candidates[1].name}); is {root} the MIMIC-CXR-JPG "
        "2.0.0 folder?"
    )


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """All cells as stripped text (blank -> ""), after checking the header."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as error:  # noqa: BLE001 - re-raised naming the file
        raise ValueError(f"{path}: cannot read as CSV ({type(error).__name__}: {error})") from error
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; the header has {list(frame.columns)}"
        )
    return frame


def _line(index: int) -> int:
    """CSV line number of data row ``index`` (line 1 is the header)."""
    return index + 2


def _check_unique(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    duplicated = frame.duplicated(columns, keep=False)
    if duplicated.any():
        rows = frame.index[duplicated]
        key = tuple(frame.loc[rows[0], c] for c in columns)
        same = [int(i) for i in rows if tuple(frame.loc[i, c] for c in columns) == key]
        what = key[0] if len(key) == 1 else key
        raise ValueError(
            f"{path}: duplicate {'/'.join(columns)} {what!r} on lines "
            f"{', '.join(str(_line(i)) for i in same)} ({int(duplicated.sum())} duplicated rows "
            "in total)"
        )


def _numeric_id(value: str, column: str, path: Path, index: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"{path} line {_line(index)}: {column} {value!r} is not a number"
        ) from None


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


class _Reports:
    """The report texts, from ``mimic-cxr-reports.zip`` or a folder of ``.txt`` files.

    Reports are found by their last three path components
    (``p10/p10000032/s50414267.txt``), whatever folders the zip puts above them.
    """

    def __init__(self, location: Path):
        self.location = location
        self.zip: zipfile.ZipFile | None = None
        if location.is_file():
            try:
                self.zip = zipfile.ZipFile(location)
            except zipfile.BadZipFile as error:
                raise ValueError(f"{location}: not a valid zip file ({error})") from error
            self.members = {
                "/".join(name.split("/")[-3:]): name
                for name in self.zip.namelist()
                if name.endswith(".txt")
            }
        elif location.is_dir():
            self.base = location / "files" if (location / "files").is_dir() else location
        else:
            raise FileNotFoundError(f"{location}: reports zip or folder not found")

    def where(self, key: str) -> str:
        if self.zip is not None:
            return f"{self.location}:{self.members.get(key, key)}"
        return str(self.base / key)

    def read(self, key: str) -> bytes | None:
        """The file's bytes, or None when there is no such report."""
        if self.zip is not None:
            name = self.members.get(key)
            return None if name is None else self.zip.read(name)
        path = self.base / key
        return path.read_bytes() if path.is_file() else None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _default_reports(root: Path) -> Path:
    for candidate in (root / REPORTS_ZIP, root / "mimic-cxr-reports", root / "files"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"no reports found under {root} ({REPORTS_ZIP}, mimic-cxr-reports/ or files/*.txt); "
        "pass reports= (the MIMIC-CXR 2.0.0 mimic-cxr-reports.zip or its folder)"
    )


# --------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------


@dataclass
class _Study:
    subject_id: str
    study_id: str
    split: str
    first_line: int
    images: list[tuple[str, str]] = field(default_factory=list)  # (dicom_id, view)
    sentences: list[str] = field(default_factory=list)
    report: str = ""
    chexpert: list[float] = field(default_factory=list)

    @property
    def folder(self) -> str:
        return f"p{self.subject_id[:2]}/p{self.subject_id}/s{self.study_id}"


def convert_mimic_cxr(
    root: str | os.PathLike,
    output_dir: str | os.PathLike,
    reports: str | os.PathLike | None = None,
    image_size: int = 256,
    train_fraction: float = 1.0,
    overwrite: bool = False,
    num_proc: int = 1,
) -> ConversionResult:
    """Converts MIMIC-CXR-JPG 2.0.0 + reports into a pretraining dataset folder.

    Args:
        root: the MIMIC-CXR-JPG folder (CSV files and ``files/``).
        output_dir: the dataset folder to write (must not exist unless ``overwrite``).
        reports: ``mimic-cxr-reports.zip`` or its extracted folder; default: the
            first of ``root/mimic-cxr-reports.zip``, ``root/mimic-cxr-reports/``,
            ``root/files/`` (``sSTUDY.txt`` beside the image folders).
        image_size: side of the stored square images.
        train_fraction: keep the first ``round(train_fraction * n)`` train studies
            (0.3 for the 30 % subset); see the module docstring for the order.
        overwrite: replace an existing ``output_dir``.
        num_proc: worker processes decoding images.

    Returns:
        ``ConversionResult`` with rows per split, skip counters ``"studies"`` and
        ``"images"``, the ``stats.json`` content and notes.

    Raises:
        FileNotFoundError, ValueError: missing files or malformed CSVs, naming the
            file and line; OutputExistsError: ``output_dir`` exists.
        ConversionError: no train image could be written (its ``result`` holds the
            skip counts that say why).
    """
    root = Path(root)
    output_dir = check_output_dir(output_dir, overwrite)
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")

    studies_skipped = SkipCounter(noun="studies")
    images_skipped = SkipCounter(noun="images")
    result = ConversionResult(
        output_dir=output_dir, skipped={"studies": studies_skipped, "images": images_skipped}
    )

    studies = _collect_studies(root, images_skipped)
    studies_skipped.seen = len(studies)
    report_source = _Reports(Path(reports) if reports is not None else _default_reports(root))
    try:
        kept = _attach_reports(studies, report_source, studies_skipped, images_skipped)
    finally:
        report_source.close()
    _attach_chexpert(root, kept, result)

    by_split: dict[str, list[_Study]] = {name: [] for name in SPLIT_NAMES.values()}
    for study in kept:
        by_split[study.split].append(study)
    n_train = len(by_split["train"])
    n_keep = round(n_train * train_fraction)
    if n_keep < n_train:
        left_out = by_split["train"][n_keep:]
        by_split["train"] = by_split["train"][:n_keep]
        result.notes["train studies outside the train_fraction subset"] = len(left_out)
        result.notes["images of those studies"] = sum(len(s.images) for s in left_out)

    images_root = root / "files"
    study_counts: dict[str, int] = {}

    def rows(split: str) -> Iterator[dict[str, Any]]:
        split_studies = by_split[split]
        tasks = [(study, dicom_id, view) for study in split_studies for dicom_id, view in study.images]
        paths = [images_root / t[0].folder / f"{t[1]}.jpg" for t in tasks]
        written: set[str] = set()
        for (study, dicom_id, view), path, (image, reason, missing) in zip(
            tasks, paths, load_images(paths, image_size, num_proc)
        ):
            if image is None:
                if missing:
                    images_skipped.add(NO_IMAGE_FILE, source=str(path))
                else:
                    images_skipped.add(UNREADABLE_IMAGE, source=f"{path} ({reason})")
                continue
            written.add(study.study_id)
            yield {
                "image": image,
                "study_id": study.study_id,
                "subject_id": study.subject_id,
                "dicom_id": dicom_id,
                "view": view,
                "report": study.report,
                "sentences": study.sentences,
                "chexpert": study.chexpert,
            }
        study_counts[split] = len(written)

    def stats_extra() -> dict[str, Any]:
        return {
            "source": f"MIMIC-CXR-JPG 2.0.0 ({root})",
            "views": list(FRONTAL_VIEWS),
            "chexpert_labels": list(CHEXPERT_LABELS),
            "train_fraction": train_fraction,
            "train_studies": {"kept": n_keep, "of": n_train},
            "study_counts": dict(study_counts),
            "order": "studies by (subject_id, study_id) as numbers; images in split-CSV order",
            "skipped": flatten_skips(result.skipped),
            "notes": dict(result.notes),
        }

    try:
        result.stats = write_dataset(
            output_dir,
            {split: rows(split) for split in by_split},
            features(image_size),
            stats_extra,
            overwrite=overwrite,
        )
    except EmptyTrainSplitError as error:
        raise ConversionError(f"{error}\n{result.summary()}", result) from error
    result.counts = dict(result.stats["counts"])
    return result


def _collect_studies(root: Path, images_skipped: SkipCounter) -> list[_Study]:
    """Joins the split and metadata CSVs; frontal images grouped by study, in study order."""
    split_path = _find_csv(root, SPLIT_FILE)
    metadata_path = _find_csv(root, METADATA_FILE)
    split_csv = _read_csv(split_path, _SPLIT_COLUMNS)
    metadata = _read_csv(metadata_path, _METADATA_COLUMNS)
    _check_unique(split_csv, ["dicom_id"], split_path)
    _check_unique(metadata, ["dicom_id"], metadata_path)
    meta_by_dicom = {
        dicom: (index, subject, study, view.strip())
        for index, (dicom, subject, study, view) in enumerate(zip(
            metadata["dicom_id"], metadata["subject_id"], metadata["study_id"],
            metadata["ViewPosition"],
        ))
    }

    studies: dict[tuple[int, int], _Study] = {}
    images_skipped.seen = len(split_csv)
    for index, (dicom, study_id, subject_id, split) in enumerate(
        zip(split_csv["dicom_id"], split_csv["study_id"], split_csv["subject_id"], split_csv["split"])
    ):
        where = f"{split_path.name} line {_line(index)} ({dicom})"
        key = (
            _numeric_id(subject_id, "subject_id", split_path, index),
            _numeric_id(study_id, "study_id", split_path, index),
        )
        split = split.strip()
        if split not in SPLIT_NAMES:
            images_skipped.add(f"unknown split {split!r}", source=where)
            continue
        meta = meta_by_dicom.get(dicom)
        if meta is None:
            images_skipped.add("no metadata row", source=where)
            continue
        meta_key = (
            _numeric_id(meta[1], "subject_id", metadata_path, meta[0]),
            _numeric_id(meta[2], "study_id", metadata_path, meta[0]),
        )
        if meta_key != key:
            images_skipped.add("split and metadata disagree on subject/study", source=where)
            continue
        study = studies.get(key)
        if study is None:
            study = studies[key] = _Study(subject_id, study_id, SPLIT_NAMES[split], _line(index))
        elif study.split != SPLIT_NAMES[split]:
            raise ValueError(
                f"{split_path} line {_line(index)}: study {study_id} is in split {split!r} here "
                f"but in {study.split!r} on line {study.first_line}"
            )
        view = meta[3]
        if view in FRONTAL_VIEWS:
            study.images.append((dicom, view))
        elif view:
            images_skipped.add(f"view {view}", source=where)
        else:
            images_skipped.add("no view position", source=where)
    return [studies[key] for key in sorted(studies)]


def _attach_reports(
    studies: list[_Study],
    report_source: _Reports,
    studies_skipped: SkipCounter,
    images_skipped: SkipCounter,
) -> list[_Study]:
    """Sentences and report text per study; the studies that pass the text rules."""
    kept = []
    # prepare_report counts `seen` itself; the total is set by the caller.
    report_counter = SkipCounter(noun="studies")
    for study in studies:
        if not study.images:
            studies_skipped.add("no frontal image", source=study.folder)
            continue
        key = f"{study.folder}.txt"
        data = report_source.read(key)
        if data is None:
            studies_skipped.add("no report file", source=report_source.where(key))
            images_skipped.add(STUDY_SKIPPED, n=len(study.images))
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            studies_skipped.add("report not UTF-8", source=f"{report_source.where(key)} ({error})")
            images_skipped.add(STUDY_SKIPPED, n=len(study.images))
            continue
        sections = parse_mimic_report(text)
        sentences = prepare_report(sections, report_counter, source=report_source.where(key))
        if sentences is None:
            images_skipped.add(STUDY_SKIPPED, n=len(study.images))
            continue
        study.sentences = sentences
        study.report = format_report(str(sections[FINDINGS]), str(sections[IMPRESSION]))
        kept.append(study)
    seen = studies_skipped.seen
    studies_skipped.merge(report_counter)
    studies_skipped.seen = seen
    return kept


def _attach_chexpert(root: Path, studies: list[_Study], result: ConversionResult) -> None:
    path = _find_csv(root, CHEXPERT_FILE)
    frame = _read_csv(path, _CHEXPERT_COLUMNS)
    _check_unique(frame, ["subject_id", "study_id"], path)
    index_of = {
        (
            _numeric_id(subject, "subject_id", path, i),
            _numeric_id(study, "study_id", path, i),
        ): i
        for i, (subject, study) in enumerate(zip(frame["subject_id"], frame["study_id"]))
    }
    label_rows = frame[list(CHEXPERT_LABELS)].to_dict("records")
    missing = 0
    for study in studies:
        i = index_of.get((int(study.subject_id), int(study.study_id)))
        if i is None:
            missing += 1
            study.chexpert = [0.0] * len(CHEXPERT_LABELS)
        else:
            study.chexpert = chexpert_u_ones(label_rows[i], f"{path} line {_line(i)}")
    if missing:
        result.notes["kept studies without a CheXpert row (labels set to 0)"] = missing
