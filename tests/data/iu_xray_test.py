"""Tests for lovt_keras.data.iu_xray on tiny trees in the Open-i NLMCXR layout."""

import io
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lovt_keras.data.dataset_writer import ConversionError, OutputExistsError
from lovt_keras.data.iu_xray import (
    convert_iu_xray,
    find_report_files,
    kaggle_stem,
    split_reports,
)
from lovt_keras.data.reports import parse_iu_xray_xml, prepare_report
from tools import prepare

REALDATA = Path(os.environ["LOVT_KERAS_REALDATA"])  # set by tests/conftest.py
SIZE = 12


def _section(label: str, text: str) -> str:
    if not text:
        return f'            <AbstractText Label="{label}"/>\n'
    return f'            <AbstractText Label="{label}">{text}</AbstractText>\n'


def _parent_image(image_id: str, figure: int, caption: str) -> str:
    return f"""   <parentImage id="{image_id}">
      <figureId>F{figure}</figureId>
      <caption>{caption}</caption>
      <panel type="single">
         <url>/hadoop/storage/radiology/extract/{image_id}.jpg</url>
         <imgModality>7</imgModality>
         <region type="panel">
            <globalImageFeatures>
               <CEDD>f2p0k1598</CEDD>
               <ColorLayout>f1p0k36</ColorLayout>
            </globalImageFeatures>
         </region>
      </panel>
   </parentImage>
"""


def iu_xml(n: int, findings: str, impression: str, image_ids: list[str], mesh=("normal",),
           caption: str = "Xray Chest PA and Lateral") -> str:
    """An Open-i report XML with the structure of ecgen-radiology/<n>.xml."""
    images = "".join(_parent_image(i, k + 1, caption) for k, i in enumerate(image_ids))
    mesh_text = "".join(f"      <major>{m}</major>\n" for m in mesh)
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{n}"/>
   <pmcId id="{n}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{n}"/>
   <licenseType>open-access</licenseType>
   <licenseURL>http://creativecommons.org/licenses/by-nc-nd/4.0/</licenseURL>
   <ccLicense>byncnd</ccLicense>
   <articleURL/>
   <articleDate>2013-08-01</articleDate>
   <articleType>XR</articleType>
   <publisher>Indiana University</publisher>
   <title>Indiana University Chest X-ray Collection</title>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">

      <Article PubModel="Electronic">

         <Journal>
            <JournalIssue>
               <PubDate>
                  <Year>2013</Year>
               </PubDate>
            </JournalIssue>
         </Journal>

         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>

         <Abstract>

{_section("COMPARISON", "None.")}
{_section("INDICATION", "XXXX-year-old with cough")}
{_section("FINDINGS", findings)}
{_section("IMPRESSION", impression)}
         </Abstract>

         <Language>eng</Language>
      </Article>
   </MedlineCitation>
   <MeSH>
{mesh_text}
   </MeSH>
{images}</eCitation>"""


def _png(path: Path, seed: int, shape=(20, 14)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)


# n -> (findings, impression, image ids)
REPORTS = {
    1: ("The cardiac silhouette and mediastinum size are within normal limits. There is no "
        "pulmonary edema.", "Normal chest x-XXXX.", ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]),
    2: ("", "No acute cardiopulmonary abnormality.", ["CXR2_IM-0652-1001"]),
    3: ("", "", ["CXR3_IM-1384-1001", "CXR3_IM-1384-2001"]),  # no text: skipped
    4: ("Clear lungs.", "Normal chest.", []),  # no parentImage
    6: ("Borderline cardiomegaly.", "No acute findings.",
        ["CXR1_1_IM-0001-4001", "CXR6_IM-2050-1001"]),  # first image is report 1's
    7: ("Low lung volumes.", "No acute disease.", ["CXR7_IM-2117-1001", "CXR7_IM-2117-2001"]),
    **{n: (f"Finding number {n} is stable.", "No change.", [f"CXR{n}_IM-{n:04d}-1001"])
       for n in range(8, 13)},
}
MISSING = "CXR7_IM-2117-1001"
CORRUPT = "CXR7_IM-2117-2001"


def make_tree(root: Path) -> tuple[Path, Path]:
    reports = root / "ecgen-radiology"
    images = root / "NLMCXR_png"
    reports.mkdir(parents=True)
    images.mkdir()
    for n, (findings, impression, ids) in REPORTS.items():
        (reports / f"{n}.xml").write_text(iu_xml(n, findings, impression, ids))
        for k, image_id in enumerate(ids):
            if image_id == CORRUPT:
                buffer = io.BytesIO()
                Image.fromarray(np.random.default_rng(k).integers(0, 256, (64, 64), dtype=np.uint8)).save(
                    buffer, format="PNG"
                )
                (images / f"{image_id}.png").write_bytes(buffer.getvalue()[:2000])
            elif image_id != MISSING:
                _png(images / f"{image_id}.png", 100 * n + k, (20, 14) if k == 0 else (16, 22))
    # A truncated XML: invalid.
    (reports / "5.xml").write_text(iu_xml(5, "Clear.", "Normal.", ["CXR5_IM-0001-1001"])[:400])
    return reports, images


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "NLMCXR")


def test_convert_counts_rows_and_skips(tree, tmp_path):
    reports, images = tree
    out = tmp_path / "out"
    result = convert_iu_xray(reports.parent, images, out, image_size=SIZE)
    ds = datasets.load_from_disk(str(out))

    # Kept reports (file order): 1, 2, 6, 7, 8, 9, 10, 11, 12 -> 9 reports, split by a
    # seed-0 permutation: round(0.8 * 9) = 7 train, round(0.1 * 9) = 1 validation, 1 test.
    kept = ["CXR1", "CXR2", "CXR6", "CXR7", "CXR8", "CXR9", "CXR10", "CXR11", "CXR12"]
    order = np.random.default_rng(0).permutation(9)
    expected = {
        "train": sorted(order[:7]), "validation": sorted(order[7:8]), "test": sorted(order[8:]),
    }
    images_of = {
        "CXR1": ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"], "CXR2": ["CXR2_IM-0652-1001"],
        "CXR6": ["CXR6_IM-2050-1001"], "CXR7": [],
        **{f"CXR{n}": [f"CXR{n}_IM-{n:04d}-1001"] for n in range(8, 13)},
    }
    for split, indices in expected.items():
        studies = [kept[i] for i in indices]
        assert list(ds[split]["image_id"]) == [i for s in studies for i in images_of[s]], split
        assert set(ds[split]["study_id"]) == {s for s in studies if images_of[s]}
    assert sum(result.counts.values()) == 9
    assert set(ds["train"]["view"]) == {"unknown"}

    row = None
    for split in ("train", "validation", "test"):
        if "CXR1" in ds[split]["study_id"]:
            row = ds[split][list(ds[split]["study_id"]).index("CXR1")]
    assert row["sentences"] == [
        "The cardiac silhouette and mediastinum size are within normal limits.",
        "There is no pulmonary edema.",
        "Normal chest x-XXXX.",
    ]
    assert row["report"] == (
        "FINDINGS: The cardiac silhouette and mediastinum size are within normal limits. "
        "There is no pulmonary edema.\n\nIMPRESSION: Normal chest x-XXXX."
    )
    assert row["mesh_major"] == ["normal"]

    reports_skipped = result.skipped["reports"]
    assert reports_skipped.seen == 12
    assert reports_skipped.as_dict() == {
        "invalid report XML": 1, "no linked images": 1, "no findings or impression": 1,
    }
    assert "5.xml" in reports_skipped.examples["invalid report XML"][0]
    images_skipped = result.skipped["images"]
    assert images_skipped.seen == 14  # parentImage entries of the 11 parsed reports
    assert images_skipped.as_dict() == {
        "report skipped (see reports)": 2, "duplicate image id": 1, "no image file": 1,
        "unreadable image file": 1,
    }
    assert images_skipped.examples["duplicate image id"] == [
        "CXR1_1_IM-0001-4001 in 6.xml (first in 1.xml)"
    ]
    assert images_skipped.examples["no image file"][0].endswith(f"{MISSING}.png")
    assert f"{CORRUPT}.png" in images_skipped.examples["unreadable image file"][0]

    stats = json.loads((out / "stats.json").read_text())
    train = ds["train"].with_format("numpy")
    pixels = np.stack(train["image"]).astype(np.float64) / 255.0
    assert pixels.shape == (result.counts["train"], SIZE, SIZE)
    assert stats["mean"] == pytest.approx(pixels.mean(), abs=1e-12)
    assert stats["std"] == pytest.approx(pixels.std(), abs=1e-12)
    assert stats["split"] == {"fractions": [0.8, 0.1, 0.1], "seed": 0, "by": "report"}
    assert stats["skipped"]["reports: no linked images"] == 1
    assert stats["frontal_only"] is False


def test_split_reports_partitions_reproducibly():
    parts = split_reports(50, (0.8, 0.1, 0.1), seed=3)
    assert [len(p) for p in parts] == [40, 5, 5]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(50))
    again = split_reports(50, (8, 1, 1), seed=3)  # fractions are normalized
    for a, b in zip(parts, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(split_reports(50, seed=4)[0], parts[0])
    assert [len(p) for p in split_reports(3, (0.5, 0.5, 0.5))] == [1, 1, 1]
    with pytest.raises(ValueError, match="3 non-negative fractions"):
        split_reports(10, (0.9, 0.1))


def test_projections_select_frontal_images_and_kaggle_names(tree, tmp_path):
    reports, images = tree
    # The Kaggle release names CXR1_1_IM-0001-3001 as 1_IM-0001-3001.dcm.png.
    (images / "CXR1_1_IM-0001-3001.png").rename(images / "1_IM-0001-3001.dcm.png")
    rows = [
        (1, "1_IM-0001-3001.dcm.png", "Frontal"), (1, "1_IM-0001-4001.dcm.png", "Lateral"),
        (2, "2_IM-0652-1001.dcm.png", "Frontal"), (6, "6_IM-2050-1001.dcm.png", "Lateral"),
        *[(n, f"{n}_IM-{n:04d}-1001.dcm.png", "Frontal") for n in range(8, 12)],
    ]  # no row for report 7's images nor for CXR12
    csv = tmp_path / "indiana_projections.csv"
    pd.DataFrame(rows, columns=["uid", "filename", "projection"]).to_csv(csv, index=False)

    result = convert_iu_xray(reports, images, tmp_path / "out", image_size=SIZE, projections=csv)
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    ids = sorted(i for split in ds.values() for i in split["image_id"])
    assert ids == sorted(["CXR1_1_IM-0001-3001", "CXR2_IM-0652-1001",
                          *[f"CXR{n}_IM-{n:04d}-1001" for n in range(8, 12)]])
    assert {v for split in ds.values() for v in split["view"]} == {"Frontal"}
    images_skipped = result.skipped["images"]
    assert images_skipped["view Lateral"] == 2  # CXR1_1_IM-0001-4001 and CXR6_IM-2050-1001
    assert images_skipped["duplicate image id"] == 1  # report 6 links report 1's image
    assert images_skipped["no projection row"] == 3  # report 7's two images and CXR12's
    assert result.skipped["reports"]["no usable image"] == 3  # reports 6, 7 and 12
    assert "no image file" not in images_skipped.counts


def test_kaggle_stem_follows_the_dicom_names():
    assert kaggle_stem("CXR1_1_IM-0001-3001") == "1_IM-0001-3001"
    assert kaggle_stem("CXR3_IM-1384-1001") == "3_IM-1384-1001"
    assert kaggle_stem("CXR1000_IM-0003-2001") == "1000_IM-0003-2001"
    assert kaggle_stem("CXR5_IM-2117-1003002") == "5_IM-2117-1003002"


def test_bad_arguments_and_projection_files(tree, tmp_path):
    reports, images = tree
    with pytest.raises(ValueError, match="frontal_only=True needs projections"):
        convert_iu_xray(reports, images, tmp_path / "out", frontal_only=True)
    csv = tmp_path / "projections.csv"
    pd.DataFrame({"uid": [1], "filename": ["1_IM-0001-3001.dcm.png"]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"projections.csv: missing column\(s\) \['projection'\]"):
        convert_iu_xray(reports, images, tmp_path / "out", projections=csv)
    pd.DataFrame({"uid": [1, 1], "filename": ["1_IM-0001-3001.dcm.png"] * 2,
                  "projection": ["Frontal", "Lateral"]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"duplicate filename '1_IM-0001-3001.dcm.png' on lines 2 and 3"):
        convert_iu_xray(reports, images, tmp_path / "out", projections=csv)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .xml report files"):
        convert_iu_xray(tmp_path / "empty", images, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_unless_asked(tree, tmp_path):
    reports, images = tree
    out = tmp_path / "out"
    convert_iu_xray(reports, images, out, image_size=SIZE, split=(1, 0, 0))
    with pytest.raises(OutputExistsError, match=f"{out}.*already exists"):
        convert_iu_xray(reports, images, out, image_size=SIZE)
    assert len(datasets.load_from_disk(str(out))["train"]) == 9
    result = convert_iu_xray(reports, images, out, image_size=SIZE, overwrite=True)
    ds = datasets.load_from_disk(str(out))
    assert {name: len(split) for name, split in ds.items()} == result.counts
    assert sum(result.counts.values()) == 9 and result.counts["train"] < 10


def test_prepare_tool_prints_counts_and_skips(tree, tmp_path, capsys):
    reports, images = tree
    out = tmp_path / "out"
    code = prepare.main(["iu-xray", str(reports), str(images), str(out), "--image_size", str(SIZE),
                         "--split", "1,0,0"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"wrote {out}: train 9, validation 0, test 0 rows" in printed
    assert "reports: skipped 3 of 12 reports" in printed
    assert "1 duplicate image id" in printed


def test_real_iu_reports_through_the_converter(tmp_path):
    folder = REALDATA / "reports" / "iu_xray_openi"
    if not folder.is_dir() or not list(folder.glob("*.xml")):
        pytest.skip(f"real data not available: {folder}")
    files = find_report_files(folder)
    # Independent count of the images the converter must look for: parentImage
    # elements of the reports with a non-empty FINDINGS or IMPRESSION.
    linked = 0
    for path in files:
        root = ET.parse(path).getroot()
        texts = {e.get("Label"): "".join(e.itertext()).strip() for e in root.iter("AbstractText")}
        if texts.get("FINDINGS") or texts.get("IMPRESSION"):
            linked += len(root.findall("parentImage"))
    assert linked > 0

    (tmp_path / "png").mkdir()  # the real images are not available
    with pytest.raises(ConversionError, match="train split received no rows") as info:
        convert_iu_xray(folder, tmp_path / "png", tmp_path / "out", image_size=SIZE)
    result = info.value.result
    assert result.skipped["images"].as_dict() == {"no image file": linked}
    assert result.skipped["reports"].seen == len(files)
    assert not (tmp_path / "out").exists()

    first = folder / "1.xml"
    if first.is_file():
        assert prepare_report(parse_iu_xray_xml(first)) == [
            "The cardiac silhouette and mediastinum size are within normal limits.",
            "There is no pulmonary edema.",
            "There is no focal consolidation.",
            "There are no XXXX of a pleural effusion.",
            "There is no evidence of pneumothorax.",
            "Normal chest x-XXXX.",
        ]
