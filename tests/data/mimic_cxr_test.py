"""Tests for lovt_keras.data.mimic_cxr on tiny trees in the MIMIC-CXR-JPG 2.0.0 layout."""

import io
import json
import os
import zipfile
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lovt_keras.data.dataset_writer import ConversionError, OutputExistsError
from lovt_keras.data.mimic_cxr import (
    CHEXPERT_LABELS,
    chexpert_u_ones,
    convert_mimic_cxr,
)
from tools import prepare

REALDATA = Path(os.environ["LOVT_KERAS_REALDATA"])  # set by tests/conftest.py
SIZE = 16
ALL_CHEXPERT = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
    "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
)


def _lines(*lines: str) -> str:
    return "\n".join(lines) + "\n"


# Reports in the fixed-width MIMIC layout: leading spaces, lines holding a single space
# between sections, headings followed by a space, ___ placeholders.
REPORT_NORMAL = _lines(
    "                                 FINAL REPORT",
    " EXAMINATION:  CHEST (PA AND LAT)",
    " ",
    " INDICATION:  ___ year old man with cough",
    " ",
    " FINDINGS: ",
    " ",
    " The lungs are clear.  There is no pleural effusion or",
    " pneumothorax.  Heart size is normal.",
    " ",
    " IMPRESSION: ",
    " ",
    " No acute cardiopulmonary process.",
)
REPORT_IMPRESSION_ONLY = _lines(
    "                                 FINAL REPORT",
    " EXAMINATION:  CHEST (PORTABLE AP)",
    " ",
    " IMPRESSION: ",
    " ",
    " Interval placement of a right IJ line.  No pneumothorax.",
)
REPORT_NO_SECTIONS = _lines(
    "                                 FINAL REPORT",
    " EXAMINATION:  CHEST (PA AND LAT)",
    " ",
    " INDICATION:  ___ with fever",
    " ",
    " TECHNIQUE:  Chest PA and lateral",
)
REPORT_EFFUSION = _lines(
    " FINDINGS:  Small left pleural effusion.  Mild cardiomegaly.",
    " ",
    " IMPRESSION:  Small left effusion.",
)
REPORT_EDEMA = """ FINDINGS:  Moderate pulmonary edema.
 IMPRESSION:  Edema, worse.
"""

# (subject, study, split, [(dicom_id, ViewPosition, image kind)], report, chexpert)
# image kind: "ok", "corrupt" (truncated JPEG) or "missing" (no file).
STUDIES = [
    ("10000032", "53189527", "train", [("d03", "AP", "ok")], REPORT_IMPRESSION_ONLY, {}),
    ("10000032", "50414267", "train", [("d01", "PA", "ok"), ("d02", "LATERAL", "ok")], REPORT_NORMAL,
     {"Cardiomegaly": "1.0", "Edema": "-1.0", "Atelectasis": "0.0", "Pleural Effusion": "1.0",
      "Pneumonia": "-1.0"}),
    ("10000764", "57375967", "train", [("d04", "PA", "ok"), ("d05", "AP", "ok")], REPORT_NO_SECTIONS, {}),
    ("10000898", "50771383", "train", [("d06", "PA", "corrupt"), ("d07", "AP", "ok")], REPORT_EFFUSION,
     {"Pleural Effusion": "-1.0", "Cardiomegaly": "1.0"}),
    ("10000935", "50578979", "train", [("d08", "", "ok"), ("d09", "LL", "ok")], REPORT_NORMAL, {}),
    ("10001038", "58224503", "validate", [("d10", "PA", "ok")], REPORT_EDEMA, {"Edema": "1.0"}),
    ("10001122", "52000001", "test", [("d11", "AP", "ok"), ("d12", "PA", "missing")], REPORT_NORMAL,
     {"Consolidation": "0.0"}),
    ("10001176", "53000002", "train", [("d13", "PA", "ok")], REPORT_EDEMA, None),  # no CheXpert row
]


def _jpeg(seed: int, shape=(24, 18)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_tree(root: Path, reports: str = "zip", studies=STUDIES) -> Path:
    """Writes the CSVs, images and reports of ``studies`` in the original layout.

    reports: "zip" (root/mimic-cxr-reports.zip), "folder" (root/mimic-cxr-reports/files/...),
    "beside" (root/files/pXX/pSUBJECT/sSTUDY.txt next to the image folders).
    """
    split_rows, meta_rows, chexpert_rows, report_files = [], [], [], {}
    for n, (subject, study, split, images, report, chexpert) in enumerate(studies):
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, (dicom, view, kind) in enumerate(images):
            split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split})
            meta_rows.append({
                "dicom_id": dicom, "subject_id": subject, "study_id": study,
                "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                "Rows": 24, "Columns": 18, "StudyDate": 21800506, "StudyTime": 213014.531,
                "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                "ViewCodeSequence_CodeMeaning": "postero-anterior",
                "PatientOrientationCodeSequence_CodeMeaning": "Erect",
            })
            data = _jpeg(10 * n + k, shape=(24, 18) if k % 2 == 0 else (14, 20))
            if kind == "corrupt":
                (folder / f"{dicom}.jpg").write_bytes(data[: len(data) // 2])
            elif kind == "ok":
                (folder / f"{dicom}.jpg").write_bytes(data)
        if chexpert is not None:
            chexpert_rows.append({"subject_id": subject, "study_id": study,
                                  **{c: chexpert.get(c, "") for c in ALL_CHEXPERT}})
        report_files[f"files/p{subject[:2]}/p{subject}/s{study}.txt"] = report
    pd.DataFrame(split_rows).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    pd.DataFrame(meta_rows).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    pd.DataFrame(chexpert_rows, columns=["subject_id", "study_id", *ALL_CHEXPERT]).to_csv(
        root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False
    )
    if reports == "zip":
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as zf:
            for name, text in report_files.items():
                zf.writestr(name, text)
    else:
        base = root / "mimic-cxr-reports" if reports == "folder" else root
        for name, text in report_files.items():
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (base / name).write_text(text)
    return root


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "mimic-cxr-jpg")


def _stored_train_pixels(out: Path) -> np.ndarray:
    train = datasets.load_from_disk(str(out))["train"].with_format("numpy")
    return np.stack(train["image"]).astype(np.float64) / 255.0


def test_convert_keeps_frontal_images_of_valid_studies(tree, tmp_path):
    out = tmp_path / "out"
    result = convert_mimic_cxr(tree, out, image_size=SIZE)
    ds = datasets.load_from_disk(str(out))

    # Studies in (subject_id, study_id) order: s50414267 before s53189527 although the
    # CSV lists it second; d02 lateral, d04/d05 (no sections), d06 (corrupt),
    # d08/d09 (no frontal view) and d12 (missing) are gone.
    assert list(ds["train"]["dicom_id"]) == ["d01", "d03", "d07", "d13"]
    assert list(ds["validation"]["dicom_id"]) == ["d10"]
    assert list(ds["test"]["dicom_id"]) == ["d11"]
    assert result.counts == {"train": 4, "validation": 1, "test": 1}
    assert list(ds["train"]["view"]) == ["PA", "AP", "AP", "PA"]
    assert list(ds["train"]["study_id"]) == ["50414267", "53189527", "50771383", "53000002"]
    assert list(ds["train"]["subject_id"]) == ["10000032", "10000032", "10000898", "10001176"]

    first = ds["train"][0]
    assert first["sentences"] == [
        "The lungs are clear.",
        "There is no pleural effusion or pneumothorax.",
        "Heart size is normal.",
        "No acute cardiopulmonary process.",
    ]
    assert first["report"] == (
        "FINDINGS: The lungs are clear. There is no pleural effusion or pneumothorax. "
        "Heart size is normal.\n\nIMPRESSION: No acute cardiopulmonary process."
    )
    assert ds["train"][1]["sentences"] == [
        "Interval placement of a right IJ line.", "No pneumothorax."
    ]
    assert ds["train"][1]["report"] == (
        "IMPRESSION: Interval placement of a right IJ line. No pneumothorax."
    )

    # U-ones in CHEXPERT_LABELS order (Cardiomegaly, Edema, Consolidation, Atelectasis,
    # Pleural Effusion): 1 -> 1, -1 -> 1, 0 -> 0, blank -> 0; no CheXpert row -> zeros.
    chexpert = np.asarray(ds["train"]["chexpert"], np.float32)
    np.testing.assert_array_equal(chexpert, [
        [1, 1, 0, 0, 1],
        [0, 0, 0, 0, 0],
        [1, 0, 0, 0, 1],
        [0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(ds["validation"]["chexpert"], [[0, 1, 0, 0, 0]])

    images = result.skipped["images"]
    assert images.seen == 13
    assert images.as_dict() == {
        "view LATERAL": 1, "view LL": 1, "no view position": 1,
        "study skipped (see studies)": 2, "unreadable image file": 1, "no image file": 1,
    }
    assert "s50771383/d06.jpg" in images.examples["unreadable image file"][0]
    assert images.examples["no image file"][0].endswith("p10/p10001122/s52000001/d12.jpg")
    studies = result.skipped["studies"]
    assert studies.seen == 8
    assert studies.as_dict() == {"no frontal image": 1, "no findings or impression": 1}
    assert result.notes == {"kept studies without a CheXpert row (labels set to 0)": 1}
    assert "unreadable image file (e.g." in result.summary()

    stats = json.loads((out / "stats.json").read_text())
    pixels = _stored_train_pixels(out)
    assert pixels.shape == (4, SIZE, SIZE)
    assert stats["mean"] == pytest.approx(pixels.mean(), abs=1e-12)
    assert stats["std"] == pytest.approx(pixels.std(), abs=1e-12)
    assert stats["image_size"] == SIZE
    assert stats["counts"] == {"train": 4, "validation": 1, "test": 1}
    assert stats["study_counts"] == {"train": 4, "validation": 1, "test": 1}
    assert stats["chexpert_labels"] == list(CHEXPERT_LABELS)
    assert stats["skipped"]["images: view LATERAL"] == 1
    assert stats["skipped"]["studies: no findings or impression"] == 1
    assert "MIMIC-CXR-JPG" in stats["source"]


def test_stored_image_is_padded_and_resized(tree, tmp_path):
    out = tmp_path / "out"
    convert_mimic_cxr(tree, out, image_size=SIZE)
    train = datasets.load_from_disk(str(out))["train"]
    assert train.features["image"] == datasets.Array2D((SIZE, SIZE), "uint8")
    row = train.with_format("numpy")[0]
    # d01 is 24 x 18 (H x W): padding adds 3 zero columns on each side; after the
    # 24 -> 16 resize the first and last columns see only padding (filter support 1.5 px).
    image = row["image"]
    assert image.shape == (SIZE, SIZE) and 0 <= image.min() and image.max() <= 255
    assert image[:, :1].max() == 0 and image[:, -1:].max() == 0
    assert image[:, 3:-3].mean() > 20


@pytest.mark.parametrize("layout", ["folder", "beside"])
def test_report_folder_layouts_match_the_zip(tmp_path, layout):
    zipped = convert_mimic_cxr(make_tree(tmp_path / "a"), tmp_path / "out_a", image_size=SIZE)
    root = make_tree(tmp_path / "b", reports=layout)
    reports = root / "mimic-cxr-reports" if layout == "folder" else None
    other = convert_mimic_cxr(root, tmp_path / "out_b", reports=reports, image_size=SIZE)
    assert other.counts == zipped.counts
    a = datasets.load_from_disk(str(tmp_path / "out_a"))
    b = datasets.load_from_disk(str(tmp_path / "out_b"))
    for split in ("train", "validation", "test"):
        assert a[split]["dicom_id"] == b[split]["dicom_id"]
        assert a[split]["sentences"] == b[split]["sentences"]
    assert other.skipped["images"].as_dict() == zipped.skipped["images"].as_dict()


def test_train_fraction_keeps_first_train_studies(tree, tmp_path):
    # 4 train studies pass the filters; round(0.5 * 4) = 2 and round(0.3 * 4) = 1 are kept,
    # in (subject_id, study_id) order; validation and test stay complete.
    half = convert_mimic_cxr(tree, tmp_path / "half", image_size=SIZE, train_fraction=0.5)
    ds = datasets.load_from_disk(str(tmp_path / "half"))
    assert list(ds["train"]["dicom_id"]) == ["d01", "d03"]
    assert half.counts == {"train": 2, "validation": 1, "test": 1}
    assert half.notes["train studies outside the train_fraction subset"] == 2
    assert half.notes["images of those studies"] == 3  # d06, d07, d13

    convert_mimic_cxr(tree, tmp_path / "thirty", image_size=SIZE, train_fraction=0.3)
    ds = datasets.load_from_disk(str(tmp_path / "thirty"))
    assert list(ds["train"]["dicom_id"]) == ["d01"]
    assert list(ds["test"]["dicom_id"]) == ["d11"]
    stats = json.loads((tmp_path / "thirty" / "stats.json").read_text())
    assert stats["train_studies"] == {"kept": 1, "of": 4}
    pixels = _stored_train_pixels(tmp_path / "thirty")
    assert stats["mean"] == pytest.approx(pixels.mean(), abs=1e-12)

    with pytest.raises(ValueError, match="train_fraction"):
        convert_mimic_cxr(tree, tmp_path / "none", train_fraction=0.0)


def test_missing_columns_name_the_file(tree, tmp_path):
    path = tree / "mimic-cxr-2.0.0-metadata.csv.gz"
    pd.read_csv(path).drop(columns=["ViewPosition"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"mimic-cxr-2.0.0-metadata.csv.gz: missing column\(s\) \['ViewPosition'\]"):
        convert_mimic_cxr(tree, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    make_tree(tmp_path / "c")
    path = tmp_path / "c" / "mimic-cxr-2.0.0-chexpert.csv.gz"
    pd.read_csv(path).drop(columns=["Edema", "Atelectasis"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"chexpert.csv.gz: missing column\(s\) \['Edema', 'Atelectasis'\]"):
        convert_mimic_cxr(tmp_path / "c", tmp_path / "out_c")

    (tmp_path / "c" / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-split.csv.gz: not found"):
        convert_mimic_cxr(tmp_path / "c", tmp_path / "out_c")


def test_duplicate_dicom_id_is_an_error_naming_lines(tree, tmp_path):
    path = tree / "mimic-cxr-2.0.0-split.csv.gz"
    frame = pd.read_csv(path, dtype=str)
    frame = pd.concat([frame, frame.iloc[[4]]], ignore_index=True)  # d05 again at the end
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"split.csv.gz: duplicate dicom_id 'd05' on lines 6, 15"):
        convert_mimic_cxr(tree, tmp_path / "out")


def test_unknown_chexpert_value_is_an_error(tree, tmp_path):
    path = tree / "mimic-cxr-2.0.0-chexpert.csv.gz"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[0, "Edema"] = "maybe"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"chexpert.csv.gz line 2: CheXpert column 'Edema' has value 'maybe'"):
        convert_mimic_cxr(tree, tmp_path / "out")


def test_chexpert_u_ones_rule():
    row = {"Cardiomegaly": "1.0", "Edema": "-1.0", "Consolidation": "", "Atelectasis": "0.0",
           "Pleural Effusion": "-1"}
    assert chexpert_u_ones(row) == [1.0, 1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"f.csv line 9: CheXpert column 'Atelectasis' has value '2.0'"):
        chexpert_u_ones({**row, "Atelectasis": "2.0"}, "f.csv line 9")


def test_refuses_to_overwrite_unless_asked(tree, tmp_path):
    out = tmp_path / "out"
    convert_mimic_cxr(tree, out, image_size=SIZE, train_fraction=0.5)
    with pytest.raises(OutputExistsError, match=f"{out}.*already exists"):
        convert_mimic_cxr(tree, out, image_size=SIZE)
    assert len(datasets.load_from_disk(str(out))["train"]) == 2  # untouched

    result = convert_mimic_cxr(tree, out, image_size=SIZE, overwrite=True)
    assert result.counts["train"] == 4
    assert len(datasets.load_from_disk(str(out))["train"]) == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_no_train_image_is_a_conversion_error_with_counts(tmp_path):
    studies = [s for s in STUDIES if s[2] != "train"]
    root = make_tree(tmp_path / "root", studies=studies)
    with pytest.raises(ConversionError, match="train split received no rows") as info:
        convert_mimic_cxr(root, tmp_path / "out", image_size=SIZE)
    assert info.value.result.skipped["images"]["no image file"] == 1
    assert not (tmp_path / "out").exists()


def test_prepare_tool_prints_counts_and_skips(tree, tmp_path, capsys):
    out = tmp_path / "out"
    code = prepare.main(["mimic-cxr", str(tree), str(out), "--image_size", str(SIZE),
                         "--train_fraction", "0.5"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"wrote {out}: train 2, validation 1, test 1 rows" in printed
    assert "images: skipped" in printed and "1 view LATERAL" in printed
    assert "studies: skipped 2 of 8 studies" in printed
    assert "train pixel mean" in printed

    code = prepare.main(["mimic-cxr", str(tree), str(out)])
    assert code == 1
    assert "already exists" in capsys.readouterr().out


def test_real_mimic_report_through_the_converter(tmp_path):
    report = REALDATA / "reports" / "mimic_cxr_docs_sample" / "example_report_from_mimic-cxr_website_docs.txt"
    if not report.is_file():
        pytest.skip(f"real data not available: {report}")
    studies = [("10000032", "50414267", "train", [("d01", "PA", "ok")], report.read_text(), {})]
    root = make_tree(tmp_path / "root", studies=studies)
    convert_mimic_cxr(root, tmp_path / "out", image_size=SIZE)
    row = datasets.load_from_disk(str(tmp_path / "out"))["train"][0]
    assert row["sentences"] == [
        "Cardiac size cannot be evaluated.",
        "Large left pleural effusion is new.",
        "Small right effusion is new.",
        "The upper lungs are clear.",
        "Right lower lobe opacities are better seen in prior CT.",
        "There is no pneumothorax.",
        "There are mild degenerative changes in the thoracic spine",
        "Large left pleural effusion",
    ]
    assert row["report"].startswith("FINDINGS: Cardiac size cannot be evaluated. Large left")
    assert row["report"].endswith("\n\nIMPRESSION: Large left pleural effusion")
