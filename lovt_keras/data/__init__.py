"""Data: image and report processing, tokenization, SynthCXR and the pretraining batches."""

from lovt_keras.data.image_augment import AugmentationParameters, ConvirtAugmentation, EvalTransform
from lovt_keras.data.images import (
    ImageReadError,
    compute_mean_std,
    decode_image,
    equalize_histogram,
    from_uint8,
    normalize,
    pad_and_resize,
    pad_to_square,
    read_image,
    resize,
    to_uint8,
)
from lovt_keras.data.reports import (
    SkipCounter,
    extract_sections,
    parse_iu_xray_xml,
    parse_mimic_report,
    prepare_report,
    prepare_reports,
    report_to_sentences,
    split_sentences,
)
from lovt_keras.data.synthcxr import (
    FINDING_CLASSES,
    decode_masks,
    generate_sample,
    generate_split,
    load_stats,
    load_synthcxr,
    synthcxr_dir,
)
from lovt_keras.data.text_augment import (
    RANDOM_SENTENCE,
    RANDOM_SWAPS,
    augment_sentences,
    random_sentence,
    random_sentence_swaps,
)
from lovt_keras.data.tokenization import ReportTokenizer

__all__ = [
    "FINDING_CLASSES",
    "RANDOM_SENTENCE",
    "RANDOM_SWAPS",
    "TEXT_AUGMENTATIONS",
    "AugmentationParameters",
    "ConvirtAugmentation",
    "EvalTransform",
    "ImageReadError",
    "PretrainingBatches",
    "ReportTokenizer",
    "SkipCounter",
    "augment_sentences",
    "compute_mean_std",
    "decode_image",
    "decode_masks",
    "equalize_histogram",
    "extract_sections",
    "from_uint8",
    "generate_sample",
    "generate_split",
    "load_pretraining_dataset",
    "load_stats",
    "load_synthcxr",
    "normalize",
    "pad_and_resize",
    "pad_to_square",
    "parse_iu_xray_xml",
    "parse_mimic_report",
    "prepare_report",
    "prepare_reports",
    "random_sentence",
    "random_sentence_swaps",
    "read_image",
    "report_to_sentences",
    "resize",
    "split_sentences",
    "synthcxr_dir",
    "synthcxr_tokenizer",
    "to_uint8",
]


# The batch pipeline imports keras (and so a backend): load it on first use, so that
# converters and their worker processes stay light.
_LAZY = {
    "TEXT_AUGMENTATIONS": "lovt_keras.data.pretraining_dataset",
    "PretrainingBatches": "lovt_keras.data.pretraining_dataset",
    "load_pretraining_dataset": "lovt_keras.data.pretraining_dataset",
    "synthcxr_tokenizer": "lovt_keras.data.pretraining_dataset",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lovt_keras.data' has no attribute {name!r}")
