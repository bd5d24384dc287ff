"""Radiology-style reports for SynthCXR images, written from their findings.

Every present finding gets its own FINDINGS sentence that names its kind, the patient
side ("right"/"left") and a word of its lung zone (see ``ZONE_WORDS``), plus its size
(centimetres or a size word) and severity; the IMPRESSION repeats the abnormal
findings briefly, or states a normal study. Each absent kind gets an explicit negative
("No pneumothorax."), and one or two normal-anatomy sentences are added. Sentences
are shuffled within each section. Templates and synonyms vary the wording; the
location words are what tells two findings of the same kind apart.
"""

from __future__ import annotations

import numpy as np

from lovt_keras.data.synthcxr_render import FINDING_CLASSES, Finding

# A sentence about a finding in this zone contains at least one of these words.
ZONE_WORDS = {
    "upper": ("upper", "apex", "apical"),
    "middle": ("mid", "middle", "perihilar"),
    "lower": ("lower", "base", "basilar", "costophrenic", "retrocardiac"),
}

_SEVERITY_WORDS = {
    "opacity": {
        "mild": ("mild", "faint", "hazy", "subtle"),
        "moderate": ("patchy", "moderate", "ill-defined"),
        "severe": ("dense", "confluent", "extensive"),
    },
    "effusion": {
        "mild": ("small", "small", "trace"),
        "moderate": ("moderate", "moderate-sized"),
        "severe": ("large", "large"),
    },
    "pneumothorax": {
        "mild": ("small", "tiny"),
        "moderate": ("moderate", "moderate-sized"),
        "severe": ("large", "large"),
    },
}


class _Writer:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _article(word: str) -> str:
    w = word.lower()
    if w[:1].isdigit():  # "an 8.0 cm", "an 11 cm", "an 18 cm"
        return "an" if w.startswith(("8", "11.", "18.", "11 ", "18 ")) else "a"
    return "an" if w[:1] in "aeio" else "a"


def _a(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _cm(f: Finding) -> str:
    return f"{f.size_cm:.1f}"


def _lung_location(w: _Writer, f: Finding) -> str:
    """Noun phrase for a place in the lung, e.g. "right lower lobe", "left apex"."""
    s = f.side
    if f.zone == "upper":
        opts = [f"{s} upper lobe", f"{s} upper lung zone", f"{s} apex", f"{s} lung apex"]
    elif f.zone == "middle":
        lobe = "right middle lobe" if s == "right" else "left mid lung"
        opts = [lobe, f"{s} mid lung zone", f"{s} perihilar region", f"{s} mid lung"]
    else:
        opts = [f"{s} lower lobe", f"{s} lung base", f"{s} base", f"{s} lower lung zone"]
        if f.medial:
            opts = opts + ["left retrocardiac region"] * 2
    return w.pick(opts)


def _lung_adjective(w: _Writer, f: Finding) -> str:
    """Adjectival location for impressions, e.g. "right lower lobe", "left apical"."""
    s = f.side
    if f.zone == "upper":
        return w.pick([f"{s} upper lobe", f"{s} apical", f"{s} upper lung"])
    if f.zone == "middle":
        return w.pick(["right middle lobe" if s == "right" else "left mid lung", f"{s} perihilar"])
    opts = [f"{s} lower lobe", f"{s} basilar", f"{s} lower lobe"]
    if f.medial:
        opts.append("left retrocardiac")
    return w.pick(opts)


def _chest_location(w: _Writer, f: Finding) -> str:
    s = f.side
    word = {"upper": "upper", "middle": "mid", "lower": "lower"}[f.zone]
    opts = [f"{s} {word} chest", f"{s} {word} hemithorax", f"{s} {word} lung zone"]
    if f.zone == "lower":
        opts.append(f"{s} lung base")
    return w.pick(opts)


def _size_word(f: Finding) -> str:
    return "small" if f.size_cm < 4.5 else ("moderate-sized" if f.size_cm < 7.5 else "large")


# ------------------------------------------------------------- finding sentences


def _opacity(w: _Writer, f: Finding) -> tuple[str, str]:
    sev = w.pick(_SEVERITY_WORDS["opacity"][f.severity])
    noun = w.pick(
        (
            "opacity",
            "airspace opacity",
            "consolidation",
            "airspace consolidation",
            "airspace disease",
        )
    )
    loc = _lung_location(w, f)
    finding = w.pick(
        (
            f"There is {sev} {noun} in the {loc}.",
            f"{_cap(sev)} {noun} is seen in the {loc}.",
            f"{_cap(sev)} {noun} in the {loc}, measuring approximately {_cm(f)} cm.",
            f"The {loc} demonstrates {sev} {noun}.",
            f"There is {_a(_size_word(f))} area of {sev} {noun} in the {loc}.",
            f"{_cap(sev)} {noun} projects over the {loc}, spanning about {_cm(f)} cm.",
        )
    )
    adj = _lung_adjective(w, f)
    impression = w.pick(
        (
            f"{_cap(adj)} pneumonia.",
            f"{_cap(sev)} {adj} consolidation, concerning for pneumonia.",
            f"Findings consistent with {adj} pneumonia.",
            f"{_cap(adj)} airspace disease, likely pneumonia.",
        )
    )
    return finding, impression


def _nodule(w: _Writer, f: Finding) -> tuple[str, str]:
    if f.subtype == "mass":
        noun = w.pick(("mass", "pulmonary mass", "masslike opacity"))
        desc = w.pick(("lobulated ", "large ", "spiculated ", ""))
    else:
        noun = w.pick(("nodule", "pulmonary nodule", "rounded opacity", "nodular opacity"))
        desc = w.pick(("well-circumscribed ", "round ", "smoothly marginated ", ""))
    loc = _lung_location(w, f)
    cm = _cm(f)
    finding = w.pick(
        (
            f"There is {_a(cm)} cm {desc}{noun} in the {loc}.",
            f"{_cap(_a(desc + noun))} measuring {cm} cm is seen in the {loc}.",
            f"{_cap(_a(cm))} cm {noun} projects over the {loc}.",
            f"In the {loc}, there is {_a(desc + noun)} measuring approximately {cm} cm.",
        )
    )
    adj = _lung_adjective(w, f)
    impression = w.pick(
        (
            f"{_cap(_a(cm))} cm {adj} {noun}; recommend chest CT for further evaluation.",
            f"{_cap(noun)} in the {loc}, measuring {cm} cm.",
            f"{_cap(adj)} {noun}, suspicious for malignancy."
            if f.subtype == "mass"
            else f"{_cap(adj)} {noun}; follow-up CT is recommended.",
        )
    )
    return finding, impression


def _effusion(w: _Writer, f: Finding) -> tuple[str, str]:
    sev = w.pick(_SEVERITY_WORDS["effusion"][f.severity])
    s = f.side
    finding = w.pick(
        (
            f"There is {_a(sev)} {s} pleural effusion layering at the base.",
            f"{_cap(sev)} {s} pleural effusion with blunting of the costophrenic angle.",
            f"Blunting of the {s} costophrenic angle is consistent with {_a(sev)} pleural effusion.",
            f"{_cap(sev)} {s} basilar pleural effusion is present.",
            f"{_cap(_a(sev))} effusion is seen at the {s} lung base, with a meniscus.",
            f"{_cap(sev)} pleural effusion at the {s} base.",
        )
    )
    impression = w.pick(
        (
            f"{_cap(sev)} {s} pleural effusion.",
            f"{_cap(sev)} {s} effusion.",
            f"{_cap(sev)} {s} pleural effusion with adjacent basilar opacity."
            if f.severity == "severe"
            else f"{_cap(sev)} {s} pleural effusion.",
        )
    )
    return finding, impression


def _pneumothorax(w: _Writer, f: Finding) -> tuple[str, str]:
    sev = w.pick(_SEVERITY_WORDS["pneumothorax"][f.severity])
    s = f.side
    if f.zone == "upper":
        finding = w.pick(
            (
                f"There is {_a(sev)} {s} apical pneumothorax.",
                f"{_cap(sev)} {s} pneumothorax at the apex, with a visible pleural line.",
                f"{_cap(_a(sev))} pneumothorax is seen at the {s} apex.",
                f"A visceral pleural line is seen at the {s} apex, consistent with {_a(sev)} "
                "pneumothorax.",
                f"{_cap(sev)} {s} apical pneumothorax without mediastinal shift.",
            )
        )
        impression = w.pick(
            (f"{_cap(sev)} {s} pneumothorax.", f"{_cap(sev)} {s} apical pneumothorax.")
        )
    else:
        finding = w.pick(
            (
                f"There is {_a(sev)} {s} basilar pneumothorax.",
                f"{_cap(_a(sev))} pneumothorax is seen at the {s} lung base, with a deep sulcus sign.",
                f"Lucency at the {s} base with a pleural line is consistent with {_a(sev)} "
                "pneumothorax.",
            )
        )
        impression = w.pick(
            (f"{_cap(sev)} {s} pneumothorax.", f"{_cap(sev)} {s} basilar pneumothorax.")
        )
    return finding, impression


def _cardiomegaly(w: _Writer, f: Finding) -> tuple[str, str]:
    adverb = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}[f.severity]
    adj = {"mild": "mild", "moderate": "moderate", "severe": "marked"}[f.severity]
    ratio = f.extra.get("cardiothoracic_ratio")
    finding = w.pick(
        (
            f"The heart is {adverb} enlarged.",
            f"{_cap(adj)} cardiomegaly.",
            f"The cardiac silhouette is {adverb} enlarged.",
            f"{_cap(adj)} enlargement of the cardiac silhouette.",
            f"The heart is {adverb} enlarged, with a cardiothoracic ratio of approximately {ratio:.2f}.",
        )
    )
    impression = w.pick(
        ("Cardiomegaly.", f"{_cap(adj)} cardiomegaly.", "Enlarged cardiac silhouette.")
    )
    return finding, impression


def _foreign(w: _Writer, f: Finding) -> tuple[str, str]:
    loc = _chest_location(w, f)
    cm = _cm(f)
    s = f.side
    if f.subtype == "coin":
        finding = w.pick(
            (
                f"A round {cm} cm radiopaque foreign body, likely a coin, projects over the {loc}.",
                f"A coin-shaped metallic density overlies the {loc}.",
                f"There is {_a(cm)} cm metallic disc, compatible with a coin, projecting over the {loc}.",
            )
        )
        impression = f"Radiopaque foreign body, likely a coin, projecting over the {loc}."
    elif f.subtype == "button":
        finding = w.pick(
            (
                f"A small round radiopaque object, likely a button, projects over the {loc}.",
                f"A button artifact overlies the {loc}.",
                f"A radiopaque disc with central holes, consistent with a button, projects over the {loc}.",
            )
        )
        impression = f"Button artifact projecting over the {loc}."
    elif f.subtype == "wire":
        finding = w.pick(
            (
                f"An external wire overlies the {loc}.",
                f"A monitoring lead wire projects over the {loc}.",
                f"A thin curvilinear metallic wire is seen over the {loc}.",
            )
        )
        impression = f"External wire projecting over the {loc}."
    else:
        finding = w.pick(
            (
                f"A chest tube projects over the {loc}.",
                f"A {s}-sided chest tube courses over the {loc}.",
                f"A drainage catheter overlies the {loc}.",
            )
        )
        impression = w.pick(
            (
                f"{_cap(s)} chest tube in place, projecting over the {loc}.",
                f"Chest tube over the {loc}.",
            )
        )
    return finding, impression


_SENTENCES = {
    "opacity": _opacity,
    "nodule": _nodule,
    "effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "cardiomegaly": _cardiomegaly,
    "foreign_object": _foreign,
}

# ------------------------------------------------------------------- negatives

_NEGATIVES = {
    "opacity": (
        "No focal consolidation.",
        "There is no focal airspace opacity.",
        "No consolidation is seen.",
        "No focal airspace consolidation is identified.",
    ),
    "pneumothorax": (
        "No pneumothorax.",
        "There is no pneumothorax.",
        "No evidence of pneumothorax.",
        "No pneumothorax is seen.",
    ),
    "effusion": (
        "No pleural effusion.",
        "There is no pleural effusion.",
        "No pleural effusions are seen.",
        "The costophrenic angles are sharp, without pleural effusion.",
    ),
    "nodule": (
        "No suspicious pulmonary nodule or mass.",
        "No pulmonary nodules or masses are identified.",
        "No focal mass or nodule.",
        "There is no pulmonary nodule.",
    ),
    "cardiomegaly": (
        "Heart size is normal.",
        "The cardiac silhouette is within normal limits.",
        "Normal heart size.",
        "The heart is not enlarged.",
        "The cardiomediastinal silhouette is normal.",
    ),
    "foreign_object": (
        "No radiopaque foreign body.",
        "No foreign bodies are seen.",
        "No lines, tubes or foreign bodies are present.",
        "No radiopaque foreign objects are identified.",
    ),
}
_PLEURAL_NEGATIVES = (
    "No pleural effusion or pneumothorax.",
    "There is no pneumothorax or pleural effusion.",
    "No pneumothorax or pleural effusion is seen.",
)
_NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "Normal chest radiograph.",
    "No acute cardiopulmonary abnormality.",
    "No acute intrathoracic process.",
    "No radiographic evidence of acute disease.",
)


def _anatomy_sentences(kinds: set[str]) -> list[str]:
    out = [
        "The mediastinal contours are normal.",
        "The trachea is midline.",
        "The osseous structures are unremarkable.",
        "No acute osseous abnormality.",
        "The hila are unremarkable.",
        "There is no pulmonary edema.",
        "The visualized upper abdomen is unremarkable.",
    ]
    if "effusion" not in kinds:
        out.append("The hemidiaphragms are well defined.")
    if "pneumothorax" not in kinds:
        out.append("Lung volumes are normal.")
    if not kinds & {"opacity", "nodule", "effusion", "pneumothorax"}:
        out.append("The lungs are clear.")
    return out


def write_report(
    findings: list[Finding], rng: np.random.Generator
) -> tuple[list[str], list[str], list[list[int]]]:
    """Writes the report for the drawn findings.

    Returns ``(findings_sentences, impression_sentences, sentence_ids)`` where
    ``sentence_ids[i]`` lists the indices (into findings sentences followed by
    impression sentences) of the sentences that describe ``findings[i]``.
    """
    w = _Writer(rng)
    kinds = {f.kind for f in findings}
    body: list[tuple[str, int | None]] = []
    impr: list[tuple[str, int | None]] = []
    for i, f in enumerate(findings):
        sentence, impression = _SENTENCES[f.kind](w, f)
        body.append((sentence, i))
        impr.append((impression, i))

    absent = [k for k in FINDING_CLASSES if k not in kinds]
    if "effusion" in absent and "pneumothorax" in absent and w.chance(0.4):
        body.append((w.pick(_PLEURAL_NEGATIVES), None))
        absent = [k for k in absent if k not in ("effusion", "pneumothorax")]
    for k in absent:
        body.append((w.pick(_NEGATIVES[k]), None))
    # Location-bearing negatives for the other side of a one-sided pleural finding.
    for kind, noun in (("effusion", "pleural effusion"), ("pneumothorax", "pneumothorax")):
        sides = {f.side for f in findings if f.kind == kind}
        if len(sides) == 1 and w.chance(0.35):
            other = "left" if "right" in sides else "right"
            body.append(
                (w.pick((f"No {other} {noun}.", f"There is no {noun} on the {other}.")), None)
            )
    sides = {f.side for f in findings if f.kind == "opacity"}
    if len(sides) == 1 and not kinds & {"effusion", "pneumothorax", "nodule"} and w.chance(0.3):
        other = "left" if "right" in sides else "right"
        body.append((f"The {other} lung is clear.", None))
    pool = _anatomy_sentences(kinds)
    for j in rng.choice(len(pool), size=1 + int(w.chance(0.5)), replace=False):
        body.append((pool[j], None))

    if not findings:
        impr.append((w.pick(_NORMAL_IMPRESSIONS), None))
        if w.chance(0.3):
            impr.append(("Clear lungs.", None))

    body = [body[j] for j in rng.permutation(len(body))]
    impr = [impr[j] for j in rng.permutation(len(impr))]
    if findings and w.chance(0.25):  # only makes sense after the findings it refers to
        impr.append(("No other acute cardiopulmonary process.", None))
    sentence_ids: list[list[int]] = [[] for _ in findings]
    for j, (_, i) in enumerate(body + impr):
        if i is not None:
            sentence_ids[i].append(j)
    return [s for s, _ in body], [s for s, _ in impr], sentence_ids


def format_report(findings_sentences: list[str], impression_sentences: list[str]) -> str:
    """Joins the sections: ``"FINDINGS: ...\\n\\nIMPRESSION: ..."``."""
    return (
        "FINDINGS: "
        + " ".join(findings_sentences)
        + "\n\nIMPRESSION: "
        + " ".join(impression_sentences)
    )
