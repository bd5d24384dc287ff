"""Radiology report text: section parsing, sentence splitting and skip counting.

LoVT pretrains on the FINDINGS and IMPRESSION sections of a report, split into
sentences (findings sentences first, then impression sentences), and skips a
report that has neither section, has no sentences, or has fewer than 3 tokens
(official ``src/data/datasets/mimic_cxr/mimic_cxr_dataset.py``). This module does that
for MIMIC-CXR free-text reports (``parse_mimic_report``, ``extract_sections``) and for
IU X-ray / Open-i XML (``parse_iu_xray_xml``); ``prepare_report`` is the one entry point
that applies the skip rules and counts what it skipped in a ``SkipCounter``.

Deviations from the official pipeline, all deliberate:
- The official code splits sentences with the Stanza English tokenizer; here a
  pure regex splitter (``split_sentences``) does it, tuned on radiology text
  (abbreviations, decimals, numbered lists, de-identification placeholders).
  Stanza is not available offline and is ~1000x slower.
- Section headings follow the MIMIC-CXR section parser's conventions (capital
  headings ending in a colon at the start of a line, its synonym table for
  section names) but are re-implemented, and the 54 hard-coded MIMIC study
  exceptions of that parser are not reproduced.
- Token counts for the 3-token minimum count words and punctuation marks
  (``\\w+`` runs and single other characters), which is what Stanza's token
  count amounts to on report text.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path

FINDINGS = "findings"
IMPRESSION = "impression"

# Skip reasons, shared by every caller so that summaries are comparable.
NO_FINDINGS_OR_IMPRESSION = "no findings or impression"
NO_SENTENCES = "no sentences"
FEWER_THAN_MIN_TOKENS = "fewer than 3 tokens"

MIN_REPORT_TOKENS = 3


class SkipCounter:
    """Counts skipped items per reason and remembers a few examples of each.

    Data preparation must never drop an item silently: every skip goes through
    ``add`` with a reason (and, when known, the file or row it came from), and
    the caller prints ``summary()`` at the end.

    Args:
        noun: what is counted, used in ``summary()`` ("reports", "sentences").
        verb: what happened to them, used in ``summary()`` ("skipped", "dropped").
        max_examples: how many example sources to keep per reason.
    """

    def __init__(self, noun: str = "reports", verb: str = "skipped", max_examples: int = 5) -> None:
        self.noun = noun
        self.verb = verb
        self.max_examples = max_examples
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.seen = 0

    def add(self, reason: str, n: int = 1, source: str | None = None) -> None:
        """Counts ``n`` skipped items for ``reason``; ``source`` names the file or row."""
        if n <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + n
        if source is not None:
            examples = self.examples.setdefault(reason, [])
            if len(examples) < self.max_examples:
                examples.append(str(source))

    def __getitem__(self, reason: str) -> int:
        return self.counts.get(reason, 0)

    @property
    def total(self) -> int:
        """Number of skipped items over all reasons."""
        return sum(self.counts.values())

    def merge(self, other: SkipCounter) -> None:
        """Adds the counts, examples and ``seen`` of ``other`` to this counter."""
        self.seen += other.seen
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
            examples = self.examples.setdefault(reason, [])
            for example in other.examples.get(reason, []):
                if len(examples) < self.max_examples:
                    examples.append(example)

    def as_dict(self) -> dict[str, int]:
        """Counts per reason (a copy)."""
        return dict(self.counts)

    def summary(self) -> str:
        """One line such as ``skipped 3 of 10 reports: 2 no sentences (e.g. a.txt); 1 ...``."""
        of = f" of {self.seen}" if self.seen else ""
        head = f"{self.verb} {self.total}{of} {self.noun}"
        if not self.counts:
            return head
        parts = []
        for reason, count in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            examples = self.examples.get(reason)
            example_text = f" (e.g. {', '.join(examples)})" if examples else ""
            parts.append(f"{count} {reason}{example_text}")
        return f"{head}: " + "; ".join(parts)

    def __repr__(self) -> str:
        return f"SkipCounter({self.summary()!r})"


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------

# Heading names as written in MIMIC-CXR, mapped to a normalized name. The table
# follows the MIMIC-CXR section parser (MIT-LCP, zenodo 3539363), which the
# official LoVT code uses; it includes the frequent misspellings found there.
_SECTION_SYNONYMS = {
    "comparisons": "comparison",
    "clinical history": "history",
    "reason for examination": "indication",
    "reason for exam": "indication",
    "clinical information": "history",
    "exam": "examination",
    "clinical indication": "indication",
    "conclusion": "impression",
    "chest, two views": "findings",
    "recommendation(s)": "recommendations",
    "recommendation": "recommendations",
    "type of examination": "examination",
    "reference exam": "comparison",
    "patient history": "history",
    "comparison exam": "comparison",
    "comparison film": "comparison",
    "findings and impression": "impression",
    "findings/impression": "impression",
    "findings/ impression": "impression",
    "wetread": "wet read",
    "pfi": "history",
    "ndication": "impression",
    "impresson": "impression",
    "imprression": "impression",
    "imoression": "impression",
    "impressoin": "impression",
    "imprssion": "impression",
    "impresion": "impression",
    "imperssion": "impression",
    "mpression": "impression",
    "impession": "impression",
    "finding": "findings",
    "findins": "findings",
    "findindgs": "findings",
    "findgings": "findings",
    "findngs": "findings",
    "findnings": "findings",
    "finidngs": "findings",
    "idication": "indication",
    "reference findings": "findings",
    "comparision": "comparison",
    "comparsion": "comparison",
    "comparrison": "comparison",
    "comparisions": "comparison",
}
# A heading that contains one of these words is that section ("FINDINGS ON PA VIEW").
_MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
# A heading that describes the views of the study introduces the findings.
_VIEW_HEADING = re.compile(
    r"chest|portable|pa and lat|lateral and pa|ap and lateral|lateral and ap|frontal and"
    r"|two views|frontal view|pa view|ap view|one view|lateral view|bone window"
    r"|frontal upright|frontal semi-upright|ribs"
)
# Heading names recognised anywhere in a line (capitals only) and in any case at
# the start of a line. Other names count only as capital headings at a line start,
# where an arbitrary "WORDS:" is a heading; mid-line, "PICC: tip in the SVC" is not.
_KNOWN_HEADINGS = (
    "FINDINGS AND IMPRESSION",
    "FINDINGS/IMPRESSION",
    "FINDINGS",
    "IMPRESSION",
    "CONCLUSION",
    "INDICATION",
    "CLINICAL INDICATION",
    "CLINICAL HISTORY",
    "HISTORY",
    "COMPARISONS",
    "COMPARISON",
    "TECHNIQUE",
    "EXAMINATION",
    "RECOMMENDATIONS",
    "RECOMMENDATION(S)",
    "NOTIFICATION",
    "ADDENDUM",
    "WET READ",
)
_KNOWN_ALTERNATION = "|".join(re.escape(h) for h in _KNOWN_HEADINGS)
# Every alternative starts with a literal ("\n" or " ") so that the regex engine
# scans for those two characters instead of trying each position (3x faster).
# The text is searched with a "\n" prepended so that its first line counts.
_HEADING = re.compile(
    # (1) capitals at the start of a line: "FINDINGS:", "PA AND LATERAL VIEWS OF THE CHEST:"
    r"\n[ \t]*(?P<line>[A-Z][A-Z0-9 ()/,&'-]*[A-Z)])[ \t]*:"
    # (2) a known name in any case at the start of a line: "Findings:"
    rf"|\n[ \t]*(?P<titled>(?i:{_KNOWN_ALTERNATION}))[ \t]*:"
    # (3) a known name in capitals after a space in a line: "... normal. IMPRESSION: ..."
    rf"| (?=[A-Z]{{2}})(?P<inline>{_KNOWN_ALTERNATION})[ \t]*:"
)


def normalize_section_name(name: str) -> str:
    """Maps a heading as written (any case) to its normalized lowercase name.

    ``"FINDINGS AND IMPRESSION"`` -> ``"impression"``, ``"CONCLUSION"`` ->
    ``"impression"``, ``"PA AND LATERAL VIEWS OF THE CHEST"`` -> ``"findings"``,
    unknown headings -> their lowercase text with whitespace collapsed.
    """
    name = " ".join(name.lower().split())
    if name in _SECTION_SYNONYMS:
        return _SECTION_SYNONYMS[name]
    for main in _MAIN_SECTIONS:
        if main in name:
            return main
    if _VIEW_HEADING.search(name):
        return FINDINGS
    return name


def extract_sections(text: str) -> dict[str, str]:
    """Splits a report into its sections by their headings.

    A heading is a run of capitals ending in a colon at the start of a line
    (``FINDINGS:``, ``INDICATION:``), a known section name in any case at the
    start of a line (``Impression:``), or a known name in capitals inside a line
    (``... normal. IMPRESSION: ...``). A section runs over lines until the next
    heading; its text may start on the heading's line.

    Args:
        text: the full report.

    Returns:
        Normalized lowercase section name -> section text, stripped but with its
        line breaks kept (``split_sentences`` uses them). Text before the first
        heading is not returned. When a name occurs more than once, the last
        non-empty occurrence wins, as in the official code; empty findings and
        impression sections are left out. A report without any heading gives ``{}``.
    """
    text = "\n" + text.replace("\r\n", "\n").replace("\r", "\n")
    matches = list(_HEADING.finditer(text))
    sections: dict[str, str] = {}
    for i, match in enumerate(matches):
        raw_name = match.group("line") or match.group("titled") or match.group("inline")
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = normalize_section_name(raw_name)
        body = text[match.end() : end].strip()
        if body or name not in sections:
            sections[name] = body
    for name in (FINDINGS, IMPRESSION):
        if name in sections and not sections[name]:
            del sections[name]
    return sections


# --------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------

# Abbreviations after which a period never ends a sentence.
_ABBREVIATIONS_NEVER_FINAL = frozenset(
    """dr drs mr mrs ms prof vs v approx appr apprx e.g eg i.e ie cf viz incl fig figs
    st mt ref dept sr jr""".split()
)
# Abbreviations that end a sentence only when a capital (or a placeholder) follows:
# "etc. The ..." ends one, "No. 5" and "pt. is" do not.
_ABBREVIATIONS_FINAL_BEFORE_CAPITAL = frozenset(
    """etc al no nos pt pts resp ca est min max sq nr num hr hrs wk wks yr yrs
    mo mos wt ht temp""".split()
)
_DOTTED_ABBREVIATION = re.compile(r"(?:[a-z]\.)+[a-z]$", re.IGNORECASE)
_LIST_NUMBER = re.compile(r"\d{1,2}$")

# A paragraph break (a line holding only whitespace) or a line break before a list
# item ("2. ...", "2) ...", "- ...") ends a sentence; other line breaks are wraps.
_BLOCK_BREAK = re.compile(r"\n[ \t]*\n\s*|\n[ \t]*(?=(?:\d{1,2}[.)]|[-*\u2022])[ \t]+\S)")
_WHITESPACE = re.compile(r"\s+")
# Candidate sentence ends. The pattern starts with a character class, which the
# regex engine scans for quickly; the decision is made in Python (_is_boundary).
_CANDIDATE = re.compile(
    r"(?P<punct>[.!?]+)(?:"
    # terminal punctuation, optional closing quotes/brackets, whitespace, next char
    r"[\"')\]]*\s+(?=(?P<next>\S))"
    # a period glued to the next sentence: "apex.There", "x-XXXX.The"
    r"|(?P<glued>(?<=[a-z]{2}\.)|(?<=XXXX\.))(?=[A-Z][a-z])"
    r")"
)
# An inline numbered list without periods: "1. Small effusion 2. No pneumothorax".
_LIST_ITEM_CANDIDATE = re.compile(r"\s(?=(?P<item>\d{1,2})[.)]\s+[A-Z_])")
_SENTENCE_START_LIST_ITEM = re.compile(r"(\d{1,2})[.)]\s")
_HAS_LIST_MARK = re.compile(r"\d[.)]\s")
_HAS_ALNUM = re.compile(r"[^\W_]|_{2,}")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def clean_whitespace(text: str) -> str:
    """Collapses every run of whitespace (line breaks included) to one space and strips."""
    return _WHITESPACE.sub(" ", text).strip()


def count_tokens(text: str) -> int:
    """Number of word tokens (runs of ``\\w``) plus punctuation marks in ``text``."""
    return len(_TOKEN.findall(text))


def _is_boundary(block: str, match: re.Match, sentence_start: int) -> bool:
    """Decides whether a candidate boundary in a whitespace-cleaned block ends a sentence."""
    if match.re is _LIST_ITEM_CANDIDATE:
        # Only the next number of a list that started this sentence begins a new item.
        head = _SENTENCE_START_LIST_ITEM.match(block, sentence_start)
        return head is not None and int(head.group(1)) + 1 == int(match.group("item"))
    if match.group("glued") is not None:
        return True

    punct = match.group("punct")
    next_char = match.group("next")
    if next_char in ",;:)]}":
        return False
    next_is_capital = next_char.isupper() or next_char in "_\"'(["
    if punct.startswith("..") or punct == "?." or punct == "!.":
        return next_is_capital or next_char.isdigit()
    if punct != ".":
        return True  # "?" and "!" end sentences

    # The word the period belongs to: back to the previous space or sentence start.
    word_start = max(block.rfind(" ", sentence_start, match.start()) + 1, sentence_start)
    word = block[word_start : match.start()].lstrip("([\"'")
    lower = word.lower()
    if lower in _ABBREVIATIONS_NEVER_FINAL or _DOTTED_ABBREVIATION.match(word):
        return False
    if lower in _ABBREVIATIONS_FINAL_BEFORE_CAPITAL or (len(word) == 1 and word.isalpha()):
        return next_is_capital
    if word_start == sentence_start and _LIST_NUMBER.match(word):
        # "1." opening a numbered item, not the end of a sentence.
        return False
    return True


def _split_block(block: str, out: list[str]) -> None:
    candidates: Iterable[re.Match] = _CANDIDATE.finditer(block)
    if _HAS_LIST_MARK.search(block):
        candidates = sorted(
            [*candidates, *_LIST_ITEM_CANDIDATE.finditer(block)], key=lambda m: m.start()
        )
    sentence_start = 0
    for match in candidates:
        if match.start() <= sentence_start:
            continue
        if _is_boundary(block, match, sentence_start):
            # A glued period ends the sentence right after it; otherwise the match
            # runs over the whitespace and the next sentence starts after it.
            end = (
                match.end("punct")
                if match.re is _CANDIDATE and match.group("glued") is not None
                else match.end()
            )
            out.append(block[sentence_start:end].strip())
            sentence_start = end
    out.append(block[sentence_start:].strip())


def split_sentences(text: str) -> list[str]:
    """Splits (section) text into sentences, cleaning whitespace.

    Sentences end at ``.``, ``!`` or ``?`` followed by whitespace, except after
    abbreviations (``Dr.``, ``e.g.``, ``vs.``, single letters before lowercase),
    after a list number opening a sentence (``1. Small effusion.`` is one
    sentence), inside decimals (``1.5 cm``). They also end at paragraph breaks,
    before a list item starting a line, at a period glued to the next sentence
    (``apex.There``) and before the next number of an inline numbered list.
    De-identification placeholders (``___``, ``XXXX``) are kept as words and may
    start a sentence. Line breaks inside a paragraph are line wraps.

    Args:
        text: any text; ``""`` gives ``[]``.

    Returns:
        The sentences in order, each with whitespace collapsed to single spaces;
        fragments without any letter, digit or placeholder are dropped.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    sentences: list[str] = []
    for raw_block in _BLOCK_BREAK.split(text):
        block = clean_whitespace(raw_block)
        if block:
            _split_block(block, sentences)
    return [s for s in sentences if _HAS_ALNUM.search(s)]


def _has_min_tokens(findings: str, impression: str) -> bool:
    # Every whitespace-separated piece holds >= 1 token, so 3 pieces settle it
    # without running the token regex over the whole report.
    if (
        len(findings.split(None, MIN_REPORT_TOKENS))
        + len(impression.split(None, MIN_REPORT_TOKENS))
        >= MIN_REPORT_TOKENS
    ):
        return True
    return count_tokens(findings) + count_tokens(impression) >= MIN_REPORT_TOKENS


def sections_to_sentences(sections: Mapping[str, str]) -> list[str]:
    """Findings sentences followed by impression sentences of parsed sections."""
    return split_sentences(sections.get(FINDINGS) or "") + split_sentences(
        sections.get(IMPRESSION) or ""
    )


def report_to_sentences(text: str) -> list[str]:
    """Findings sentences then impression sentences of a full report, cleaned.

    No skip rule is applied: a report without those sections gives ``[]``.
    """
    return sections_to_sentences(extract_sections(text))


def prepare_report(
    report: str | Mapping[str, str],
    counter: SkipCounter | None = None,
    source: str | None = None,
) -> list[str] | None:
    """Sentences for pretraining, or ``None`` when the report is skipped.

    A report is skipped (and counted in ``counter`` with ``source`` as example)
    when it has neither a findings nor an impression section, when those give no
    sentence, or when they hold fewer than 3 tokens together (official
    ``src/data/datasets/mimic_cxr/mimic_cxr_dataset.py``, ``min_section_tokens: 3``).

    Args:
        report: the full report text, or already parsed sections (e.g. the output
            of ``parse_iu_xray_xml``); only the ``"findings"`` and
            ``"impression"`` entries are used.
        counter: receives one ``seen`` per call and the skip reason.
        source: the file or row the report came from, kept as an example.

    Returns:
        Findings sentences then impression sentences, or ``None`` when skipped.
    """
    if counter is not None:
        counter.seen += 1
    if isinstance(report, str):
        sections: Mapping[str, str] = extract_sections(report)
    elif isinstance(report, Mapping):
        sections = report
    else:
        raise TypeError(
            f"prepare_report expects report text or a mapping of sections, got "
            f"{type(report).__name__}" + (f" ({source})" if source else "")
        )
    findings = (sections.get(FINDINGS) or "").strip()
    impression = (sections.get(IMPRESSION) or "").strip()

    reason = None
    sentences: list[str] = []
    if not findings and not impression:
        reason = NO_FINDINGS_OR_IMPRESSION
    else:
        sentences = split_sentences(findings) + split_sentences(impression)
        if not sentences:
            reason = NO_SENTENCES
        elif not _has_min_tokens(findings, impression):
            reason = FEWER_THAN_MIN_TOKENS
    if reason is not None:
        if counter is not None:
            counter.add(reason, source=source)
        return None
    return sentences


def prepare_reports(
    reports: Iterable[str | Mapping[str, str]],
    counter: SkipCounter | None = None,
    sources: Iterable[str] | None = None,
) -> list[list[str] | None]:
    """``prepare_report`` over many reports; skipped ones give ``None`` in place."""
    if sources is None:
        return [prepare_report(r, counter) for r in reports]
    return [prepare_report(r, counter, s) for r, s in zip(reports, sources, strict=True)]


# --------------------------------------------------------------------------
# Dataset formats
# --------------------------------------------------------------------------


def parse_mimic_report(text: str) -> dict[str, object]:
    """Parses a MIMIC-CXR free-text report (``files/pXX/pSUBJECT/sSTUDY.txt``).

    Args:
        text: the file content: fixed-width lines with capital ``NAME:`` headings,
            ``___`` de-identification placeholders.

    Returns:
        ``{"findings": str, "impression": str, "sections": dict[str, str]}``;
        findings and impression are ``""`` when missing, ``sections`` holds every
        section found (see ``extract_sections``). Pass the result to
        ``prepare_report`` for sentences and the skip rules.
    """
    sections = extract_sections(text)
    return {
        FINDINGS: sections.get(FINDINGS, ""),
        IMPRESSION: sections.get(IMPRESSION, ""),
        "sections": sections,
    }


def parse_iu_xray_xml(path: str | PathLike) -> dict[str, object]:
    """Parses one Open-i IU X-ray report XML (``ecgen-radiology/<n>.xml``).

    Args:
        path: the XML file.

    Returns:
        A dict with
        - ``"findings"``, ``"impression"``, ``"comparison"``, ``"indication"``:
          the ``AbstractText`` sections with whitespace cleaned, ``""`` when
          empty or absent;
        - ``"report_id"``: the ``uId`` (``"CXR1"``), ``"iu_id"``: ``IUXRId`` (``"1"``);
        - ``"image_ids"``: the ``parentImage`` ids in file order
          (``["CXR1_1_IM-0001-3001", ...]``, ``[]`` for a report without images),
          which are the PNG stems of ``NLMCXR_png``;
        - ``"mesh_major"``, ``"mesh_minor"``: the MeSH terms (``["normal"]``);
        - ``"path"``: the file path as a string.

    Raises:
        ValueError: naming the file, when it is not XML or has no ``AbstractText``.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{path}: not a valid IU X-ray report XML ({error})") from error
    texts = root.findall(".//AbstractText")
    if not texts:
        raise ValueError(f"{path}: no AbstractText element (not an Open-i report XML?)")
    result: dict[str, object] = {
        FINDINGS: "",
        IMPRESSION: "",
        "comparison": "",
        "indication": "",
    }
    for element in texts:
        label = (element.get("Label") or "").strip().lower()
        if not label:
            raise ValueError(f"{path}: AbstractText element without a Label attribute")
        result[label] = clean_whitespace("".join(element.itertext()))
    uid = root.find("uId")
    iu_id = root.find("IUXRId")
    result["report_id"] = uid.get("id", "") if uid is not None else ""
    result["iu_id"] = iu_id.get("id", "") if iu_id is not None else ""
    result["image_ids"] = [
        image.get("id", "") for image in root.findall("parentImage") if image.get("id")
    ]
    result["mesh_major"] = [clean_whitespace(e.text or "") for e in root.findall("MeSH/major")]
    result["mesh_minor"] = [clean_whitespace(e.text or "") for e in root.findall("MeSH/minor")]
    result["path"] = str(path)
    return result
