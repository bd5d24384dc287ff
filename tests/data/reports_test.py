"""Tests for report section parsing, sentence splitting and skip counting."""

import os
from pathlib import Path

import pytest

from lovt_keras.data import reports
from lovt_keras.data.reports import (
    FEWER_THAN_MIN_TOKENS,
    NO_FINDINGS_OR_IMPRESSION,
    NO_SENTENCES,
    SkipCounter,
    count_tokens,
    extract_sections,
    normalize_section_name,
    parse_iu_xray_xml,
    parse_mimic_report,
    prepare_report,
    prepare_reports,
    report_to_sentences,
    split_sentences,
)

REALDATA = Path(os.environ["LOVT_KERAS_REALDATA"]) / "reports"  # set by tests/conftest.py


def _realdata(*parts: str) -> Path:
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not on this machine: {path}")
    return path


# ---------------------------------------------------------------- sentence splitting


@pytest.mark.parametrize(
    "text, expected",
    [
        # decimals and units
        (
            "Nodule measures 1.5 cm. It is stable at 2.0 x 1.3 cm.",
            ["Nodule measures 1.5 cm.", "It is stable at 2.0 x 1.3 cm."],
        ),
        # titles and Latin abbreviations never end a sentence
        (
            "Dr. Smith was notified. Findings, e.g. effusion, i.e. fluid, vs. atelectasis.",
            ["Dr. Smith was notified.", "Findings, e.g. effusion, i.e. fluid, vs. atelectasis."],
        ),
        (
            "Tube tip is approx. 3 cm above the carina.",
            ["Tube tip is approx. 3 cm above the carina."],
        ),
        # numbered lists with and without final periods
        ("1. Small effusion. 2. No pneumothorax.", ["1. Small effusion.", "2. No pneumothorax."]),
        (
            "1. Small effusion 2. No pneumothorax 3. Clear lungs",
            ["1. Small effusion", "2. No pneumothorax", "3. Clear lungs"],
        ),
        (
            "1. Small effusion.\n 2. No pneumothorax\n 3. Stable cardiomegaly.",
            ["1. Small effusion.", "2. No pneumothorax", "3. Stable cardiomegaly."],
        ),
        # de-identification placeholders, also at a sentence start
        (
            "Dr. ___ was paged at ___. ___ reviewed the findings.",
            ["Dr. ___ was paged at ___.", "___ reviewed the findings."],
        ),
        (
            "Normal chest x-XXXX. XXXX XXXX are normal. No XXXX.",
            ["Normal chest x-XXXX.", "XXXX XXXX are normal.", "No XXXX."],
        ),
        # line wraps inside sentences, paragraph breaks between them, extra spaces
        (
            "There are mild\n degenerative changes   in the\tspine.  Small\n right effusion.",
            ["There are mild degenerative changes in the spine.", "Small right effusion."],
        ),
        ("Heart size normal\n \nLungs clear", ["Heart size normal", "Lungs clear"]),
        # a period glued to the next sentence
        (
            "Lesion in the apex.There are streaky opacities.",
            ["Lesion in the apex.", "There are streaky opacities."],
        ),
        # question and exclamation marks; "?" inside a word does not split
        (
            "Indication: ?pleural effusion. Is there effusion? No.",
            ["Indication: ?pleural effusion.", "Is there effusion?", "No."],
        ),
        # "No. 5" is a number abbreviation, "etc." before a capital ends a sentence
        (
            "Clips, wires, etc. are seen. Tube No. 5 is in place, etc. The rest is normal.",
            ["Clips, wires, etc. are seen.", "Tube No. 5 is in place, etc.", "The rest is normal."],
        ),
        # fragments without words are dropped; empty input
        ("No effusion. . -", ["No effusion."]),
        ("", []),
        ("  \n \n ", []),
    ],
)
def test_split_sentences_hand_cases(text, expected):
    assert split_sentences(text) == expected


def test_split_sentences_cleans_whitespace_and_loses_no_word():
    text = "Heart   is\n normal.\r\n\r\nLungs\tare   clear.  No  effusion.\n"
    sentences = split_sentences(text)
    assert sentences == ["Heart is normal.", "Lungs are clear.", "No effusion."]
    # Invariant: the words of the sentences are the words of the text, in order.
    assert " ".join(sentences).split() == text.split()


def test_count_tokens_counts_words_and_punctuation():
    assert count_tokens("Normal.") == 2
    assert count_tokens("No acute process.") == 4
    assert count_tokens("1.5 cm, ___ x-XXXX.") == 10  # 1 . 5 cm , ___ x - XXXX .
    assert count_tokens("") == 0


# ---------------------------------------------------------------- sections

# MIMIC-CXR layout: leading spaces, sections separated by lines holding one space.
MIMIC_STYLE = "\n".join(
    [
        "                                 FINAL REPORT",
        " EXAMINATION:  CHEST (PA AND LAT)",
        " ",
        " INDICATION:  ___ year old man with cough.",
        " ",
        " FINDINGS: Heart size is",
        " normal.  There is no",
        " focal consolidation.",
        " ",
        " IMPRESSION: ",
        " ",
        " No acute cardiopulmonary process.",
        "",
    ]
)


def test_extract_sections_mimic_style():
    sections = extract_sections(MIMIC_STYLE)
    assert sorted(sections) == ["examination", "findings", "impression", "indication"]
    assert sections["findings"] == "Heart size is\n normal.  There is no\n focal consolidation."
    assert sections["impression"] == "No acute cardiopulmonary process."
    assert sections["indication"] == "___ year old man with cough."
    assert report_to_sentences(MIMIC_STYLE) == [
        "Heart size is normal.",
        "There is no focal consolidation.",
        "No acute cardiopulmonary process.",
    ]


def test_extract_sections_missing_findings_and_variants():
    text = " INDICATION: Fever.\n \n IMPRESSION:  Right lower lobe pneumonia."
    assert extract_sections(text) == {
        "indication": "Fever.",
        "impression": "Right lower lobe pneumonia.",
    }
    assert report_to_sentences(text) == ["Right lower lobe pneumonia."]
    # Synonyms as in the MIMIC-CXR section parser.
    text = " FINDINGS AND IMPRESSION: No change.\n CLINICAL HISTORY: Cough."
    assert extract_sections(text) == {"impression": "No change.", "history": "Cough."}
    assert extract_sections(" CONCLUSION: Clear.") == {"impression": "Clear."}
    assert extract_sections(" PA AND LATERAL VIEWS OF THE CHEST: Clear.") == {"findings": "Clear."}


def test_extract_sections_inline_titled_and_duplicates():
    # Known headings inside a line, title-case headings at a line start.
    assert extract_sections("FINDINGS: Heart normal. IMPRESSION: No acute process.") == {
        "findings": "Heart normal.",
        "impression": "No acute process.",
    }
    assert extract_sections("Findings: Heart normal.\nImpression: Clear.") == {
        "findings": "Heart normal.",
        "impression": "Clear.",
    }
    # An empty findings section does not hide a later non-empty one; an empty one
    # after a non-empty one does not erase it.
    text = " FINDINGS:\n \n COMPARISON: None.\n FINDINGS: Lungs clear.\n IMPRESSION: Normal.\n FINDINGS:"
    sections = extract_sections(text)
    assert sections["findings"] == "Lungs clear."
    assert sections["impression"] == "Normal."
    # A capital word with a colon inside a line is not a heading.
    assert extract_sections(" FINDINGS: Right PICC: tip in the SVC.") == {
        "findings": "Right PICC: tip in the SVC."
    }
    assert extract_sections("Heart size is normal. No effusion.") == {}


def test_normalize_section_name():
    assert normalize_section_name("IMPRESSION") == "impression"
    assert normalize_section_name("Findings/Impression") == "impression"
    assert normalize_section_name("IMPRESSON") == "impression"
    assert normalize_section_name("REASON FOR EXAM") == "indication"
    assert normalize_section_name("FINDINGS ON PA VIEW") == "findings"
    assert normalize_section_name("PORTABLE  AP  CHEST") == "findings"
    assert normalize_section_name("WET READ") == "wet read"


# ---------------------------------------------------------------- skip rules


def test_prepare_report_skips_and_counts():
    counter = SkipCounter()
    ok = prepare_report(MIMIC_STYLE, counter, source="s1.txt")
    assert ok is not None and len(ok) == 3
    assert prepare_report(" INDICATION: Cough.", counter, source="s2.txt") is None
    assert prepare_report("No headings at all.", counter, source="s3.txt") is None
    assert prepare_report(" IMPRESSION: Normal.", counter, source="s4.txt") is None  # 2 tokens
    assert prepare_report(" IMPRESSION: . -", counter, source="s5.txt") is None
    assert prepare_report({"findings": "", "impression": "No acute process."}, counter) == [
        "No acute process."
    ]
    assert counter.seen == 6
    assert counter.total == 4
    assert counter.as_dict() == {
        NO_FINDINGS_OR_IMPRESSION: 2,
        FEWER_THAN_MIN_TOKENS: 1,
        NO_SENTENCES: 1,
    }
    assert counter.summary() == (
        "skipped 4 of 6 reports: 2 no findings or impression (e.g. s2.txt, s3.txt); "
        "1 fewer than 3 tokens (e.g. s4.txt); 1 no sentences (e.g. s5.txt)"
    )
    with pytest.raises(TypeError, match="row 7"):
        prepare_report(42, counter, source="row 7")


def test_min_tokens_counts_both_sections():
    # 2 + 2 tokens: each section alone is too short, together they pass.
    assert prepare_report({"findings": "Normal.", "impression": "Clear."}) == ["Normal.", "Clear."]


def test_skip_counter_merge_and_examples_limit():
    a = SkipCounter(max_examples=2)
    for i in range(3):
        a.add("bad", source=f"f{i}")
    a.seen = 5
    b = SkipCounter(max_examples=2)
    b.add("bad", n=2)
    b.add("worse", source="g")
    b.seen = 4
    a.merge(b)
    assert a.seen == 9 and a["bad"] == 5 and a["worse"] == 1 and a["missing"] == 0
    assert a.examples == {"bad": ["f0", "f1"], "worse": ["g"]}
    a.add("bad", n=0)
    assert a.total == 6


def test_prepare_reports_keeps_positions():
    counter = SkipCounter()
    out = prepare_reports(
        [MIMIC_STYLE, "nothing", " FINDINGS: Lungs are clear."], counter, ["a", "b", "c"]
    )
    assert [None if o is None else len(o) for o in out] == [3, None, 1]
    assert counter.examples == {NO_FINDINGS_OR_IMPRESSION: ["b"]}


# ---------------------------------------------------------------- real files


def test_mimic_docs_sample_report():
    path = _realdata("mimic_cxr_docs_sample", "example_report_from_mimic-cxr_website_docs.txt")
    parsed = parse_mimic_report(path.read_text(encoding="utf-8"))
    assert sorted(parsed["sections"]) == [
        "comparison",
        "examination",
        "findings",
        "impression",
        "indication",
        "technique",
    ]
    assert parsed["impression"] == "Large left pleural effusion"
    assert parsed["sections"]["comparison"] == "___"
    sentences = prepare_report(parsed)
    assert sentences == [
        "Cardiac size cannot be evaluated.",
        "Large left pleural effusion is new.",
        "Small right effusion is new.",
        "The upper lungs are clear.",
        "Right lower lobe opacities are better seen in prior CT.",
        "There is no pneumothorax.",
        "There are mild degenerative changes in the thoracic spine",
        "Large left pleural effusion",
    ]
    assert sentences == prepare_report(path.read_text(encoding="utf-8"))


def test_iu_xray_normal_report():
    report = parse_iu_xray_xml(_realdata("iu_xray_openi", "1.xml"))
    assert report["report_id"] == "CXR1" and report["iu_id"] == "1"
    assert report["image_ids"] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
    assert report["mesh_major"] == ["normal"] and report["mesh_minor"] == []
    assert report["comparison"] == "None."
    assert report["indication"] == "Positive TB test"
    assert report["impression"] == "Normal chest x-XXXX."
    sentences = prepare_report(report)
    assert len(sentences) == 6
    assert sentences[3] == "There are no XXXX of a pleural effusion."
    assert sentences[-1] == "Normal chest x-XXXX."


def test_iu_xray_empty_findings_and_lists():
    report = parse_iu_xray_xml(_realdata("iu_xray_openi", "3.xml"))
    assert report["findings"] == "" and report["comparison"] == ""
    assert prepare_report(report) == [
        "No displaced rib fractures, pneumothorax, or pleural effusion identified.",
        "Well-expanded and clear lungs.",
        "Mediastinal contour within normal limits.",
        "No acute cardiopulmonary abnormality identified.",
    ]
    # 4.xml: "apex.There" glued and a numbered impression list.
    sentences = prepare_report(parse_iu_xray_xml(_realdata("iu_xray_openi", "4.xml")))
    assert len(sentences) == 8
    assert sentences[1].endswith("cavitary lesion in the left lung apex.")
    assert sentences[2] == "There are streaky opacities in the right upper lobe, XXXX scarring."
    assert [s[:3] for s in sentences[5:]] == ["1. ", "2. ", "3. "]


def test_iu_xray_all_files_parse():
    folder = _realdata("iu_xray_openi")
    counter = SkipCounter()
    counts = {}
    for path in sorted(folder.glob("*.xml")):
        report = parse_iu_xray_xml(path)
        sentences = prepare_report(report, counter, source=path.name)
        counts[path.name] = len(sentences)
        assert all(s == " ".join(s.split()) and s for s in sentences)
    assert counts == {"1.xml": 6, "2.xml": 6, "3.xml": 4, "4.xml": 8, "5.xml": 8}
    assert counter.seen == 5 and counter.total == 0


def test_iu_xray_bad_files(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<eCitation><unclosed></eCitation>")
    with pytest.raises(ValueError, match="bad.xml"):
        parse_iu_xray_xml(bad)
    empty = tmp_path / "empty.xml"
    empty.write_text("<eCitation><uId id='CXR9'/></eCitation>")
    with pytest.raises(ValueError, match="empty.xml: no AbstractText"):
        parse_iu_xray_xml(empty)
    no_images = tmp_path / "156.xml"
    no_images.write_text(
        "<eCitation><uId id='CXR156'/><MedlineCitation><Article><Abstract>"
        "<AbstractText Label='FINDINGS'>Heart\n   normal.</AbstractText>"
        "<AbstractText Label='IMPRESSION'/></Abstract></Article></MedlineCitation></eCitation>"
    )
    report = parse_iu_xray_xml(no_images)
    assert report["image_ids"] == [] and report["findings"] == "Heart normal."
    assert report["impression"] == "" and report["iu_id"] == ""


def test_module_has_no_backend_imports():
    source = Path(reports.__file__).read_text()
    for name in ("jax", "tensorflow", "torch", "keras", "gin"):
        assert f"import {name}" not in source
