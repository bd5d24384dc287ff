"""Data: image and report processing, tokenization, SynthCXR and the pretraining batches.

The names below are loaded on first use (PEP 562), so that importing one submodule
(e.g. ``lovt_keras.data.downstream.registry`` for ``python -m tools.prepare --help``)
does not import them all: ``datasets``, PIL and pandas take seconds, and the batch
pipeline imports keras (and so a backend). Converters and their worker processes stay
light.
"""

import importlib

__all__ = [
    "FINDING_CLASSES",
    "RANDOM_SENTENCE",
    "RANDOM_SWAPS",
    "TEXT_AUGMENTATIONS",
    "AugmentationParameters",
    "ConvirtAugmentation",
    "EvalTransform",
    "ImageOnlyBatches",
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
    "view_to_source_matrix",
]

_LAZY = {
    "AugmentationParameters": "lovt_keras.data.image_augment",
    "ConvirtAugmentation": "lovt_keras.data.image_augment",
    "EvalTransform": "lovt_keras.data.image_augment",
    "FINDING_CLASSES": "lovt_keras.data.synthcxr",
    "ImageOnlyBatches": "lovt_keras.data.image_only_batches",
    "ImageReadError": "lovt_keras.data.images",
    "PretrainingBatches": "lovt_keras.data.pretraining_dataset",
    "RANDOM_SENTENCE": "lovt_keras.data.text_augment",
    "RANDOM_SWAPS": "lovt_keras.data.text_augment",
    "ReportTokenizer": "lovt_keras.data.tokenization",
    "SkipCounter": "lovt_keras.data.reports",
    "TEXT_AUGMENTATIONS": "lovt_keras.data.pretraining_dataset",
    "augment_sentences": "lovt_keras.data.text_augment",
    "compute_mean_std": "lovt_keras.data.images",
    "decode_image": "lovt_keras.data.images",
    "decode_masks": "lovt_keras.data.synthcxr",
    "equalize_histogram": "lovt_keras.data.images",
    "extract_sections": "lovt_keras.data.reports",
    "from_uint8": "lovt_keras.data.images",
    "generate_sample": "lovt_keras.data.synthcxr",
    "generate_split": "lovt_keras.data.synthcxr",
    "load_pretraining_dataset": "lovt_keras.data.pretraining_dataset",
    "load_stats": "lovt_keras.data.synthcxr",
    "load_synthcxr": "lovt_keras.data.synthcxr",
    "normalize": "lovt_keras.data.images",
    "pad_and_resize": "lovt_keras.data.images",
    "pad_to_square": "lovt_keras.data.images",
    "parse_iu_xray_xml": "lovt_keras.data.reports",
    "parse_mimic_report": "lovt_keras.data.reports",
    "prepare_report": "lovt_keras.data.reports",
    "prepare_reports": "lovt_keras.data.reports",
    "random_sentence": "lovt_keras.data.text_augment",
    "random_sentence_swaps": "lovt_keras.data.text_augment",
    "read_image": "lovt_keras.data.images",
    "report_to_sentences": "lovt_keras.data.reports",
    "resize": "lovt_keras.data.images",
    "split_sentences": "lovt_keras.data.reports",
    "synthcxr_dir": "lovt_keras.data.synthcxr",
    "synthcxr_tokenizer": "lovt_keras.data.pretraining_dataset",
    "to_uint8": "lovt_keras.data.images",
    "view_to_source_matrix": "lovt_keras.data.image_only_batches",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lovt_keras.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
