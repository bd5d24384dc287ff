"""Converts encoder weights between PyTorch and Keras forms, offline.

    python -m tools.convert torchvision-to-keras resnet50.pth image_encoder.keras
    python -m tools.convert lovt-checkpoint-to-keras last.ckpt image_encoder.keras
    python -m tools.convert keras-to-torchvision RUN_DIR resnet50.safetensors --num_classes 1000
    python -m tools.convert bert-to-safetensors Bio_ClinicalBERT/ Bio_ClinicalBERT_st/

PyTorch files are read with ``torch.load(weights_only=True)`` or safetensors: nothing
from a file is executed (a pickle naming other globals is refused). The conversions
live in ``lovt_keras.weights``; ``main(argv)`` returns 0 done, 2 bad input (the error
names the file and the keys).
"""

from __future__ import annotations

import argparse
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")
# The official LoVT pretraining model keeps its image encoder's torchvision children here
# (mirrors lovt_keras.weights.LOVT_IMAGE_PREFIX; --help must not import Keras).
LOVT_IMAGE_PREFIX = "model_a.encoder.feature_extractor.backbone_layers."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.convert", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run a subcommand with --help for its options.")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND or Keras' default)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def image_in(p):
        p.add_argument("--depth", type=int, choices=(18, 34, 50, 101, 152),
                       help="expected ResNet depth (default: read from the file)")
        p.add_argument("--image_size", type=int, default=224,
                       help="input side of the saved encoder (224; the weights do not "
                       "depend on it)")
        p.add_argument("--input_channels", type=int, choices=(1, 3), default=1,
                       help="1: grayscale, repeated to RGB inside the model (default)")

    p = sub.add_parser(
        "torchvision-to-keras", help="torchvision ResNet state dict -> .keras / .weights.h5",
        description="A torchvision ResNet-18/34/50/101/152 state dict (.pt, .pth, .bin, "
        ".safetensors; fc.* ignored) to a ResNetImageEncoder saved as .keras or "
        ".weights.h5. A prefix such as 'backbone.' or 'module.' is found automatically "
        "when the file holds one ResNet.")
    p.add_argument("input", help="the state dict file")
    p.add_argument("output", help="OUT.keras or OUT.weights.h5")
    p.add_argument("--prefix", help="key prefix of the ResNet (default: found automatically)")
    image_in(p)

    p = sub.add_parser(
        "lovt-checkpoint-to-keras", help="official LoVT checkpoint's image encoder -> .keras",
        description="The image encoder of a PyTorch Lightning checkpoint of the official "
        f"LoVT code (keys '{LOVT_IMAGE_PREFIX}*') to a ResNetImageEncoder saved as .keras "
        "or .weights.h5. Its hyper-parameters are not unpickled into objects.")
    p.add_argument("input", help="the .ckpt file")
    p.add_argument("output", help="OUT.keras or OUT.weights.h5")
    p.add_argument("--prefix", default=LOVT_IMAGE_PREFIX,
                   help=f"key prefix of the image encoder ('{LOVT_IMAGE_PREFIX}')")
    image_in(p)

    p = sub.add_parser(
        "keras-to-torchvision", help="our image encoder -> torchvision .safetensors",
        description="A ResNetImageEncoder (.keras, a pretraining run directory, .weights.h5 "
        "with --depth, or any input of the other commands) to a torchvision ResNet state "
        "dict in safetensors: torchvision.models.resnetNN() loads it with strict=True when "
        "--num_classes is given (a zero fc), or with fc = nn.Identity() without.")
    p.add_argument("input", help="the encoder (file or run directory)")
    p.add_argument("output", help="OUT.safetensors")
    p.add_argument("--depth", type=int, choices=(18, 34, 50, 101, 152),
                   help="ResNet depth (needed for a .weights.h5 input)")
    p.add_argument("--num_classes", type=int,
                   help="write a zero fc of this many classes (1000: a plain torchvision "
                   "resnet loads it with strict=True); default: no fc")
    p.add_argument("--conv1_channels", type=int, choices=(1, 3), default=3,
                   help="3: torchvision's RGB conv1 (default); 1: conv1 summed over its "
                   "input channels, for a grayscale ResNet")

    p = sub.add_parser(
        "bert-to-safetensors", help="HF BERT folder with pytorch_model.bin -> model.safetensors",
        description="Copies a Hugging Face BERT folder (config.json, vocab.txt, "
        "pytorch_model.bin) to OUTPUT with the weights as model.safetensors (read with "
        "torch.load(weights_only=True)); the result is what REPORT_ENCODER_FOLDER and "
        "keras-hub's BertBackbone.from_preset read. (A folder with pytorch_model.bin also "
        "loads directly; this conversion only saves doing it on every start.)")
    p.add_argument("input", help="the BERT folder")
    p.add_argument("output", help="the new folder (must not exist)")
    return parser


def _run(args: argparse.Namespace) -> str:
    from lovt_keras import weights

    if args.command in ("torchvision-to-keras", "lovt-checkpoint-to-keras"):
        encoder = weights.torchvision_resnet_encoder(
            args.input, image_size=args.image_size, input_channels=args.input_channels,
            prefix=args.prefix, depth=args.depth)
        path = weights.save_image_encoder(encoder, args.output)
        return f"wrote {path} ({encoder.description} from {args.input})"
    if args.command == "keras-to-torchvision":
        encoder = weights.load_image_encoder(args.input, image_size=None, depth=args.depth)
        path = weights.save_image_encoder(encoder, args.output, num_classes=args.num_classes,
                                          conv1_channels=args.conv1_channels)
        return f"wrote {path} (torchvision resnet{encoder.depth} state dict from {args.input})"
    if args.command == "bert-to-safetensors":
        import shutil
        from pathlib import Path

        from lovt_keras.files import replace_folder
        from lovt_keras.weights.hf_bert import SAFETENSORS_FILE, TORCH_FILE, bert_preset_folder

        output = Path(args.output)
        if output.exists():
            raise FileExistsError(f"{output}: already exists")
        built = output.with_name(f".{output.name}.building")
        with bert_preset_folder(args.input) as preset:
            shutil.rmtree(built, ignore_errors=True)
            built.mkdir(parents=True)
            for item in Path(preset).iterdir():
                if item.name != TORCH_FILE and item.is_file():
                    shutil.copy(item, built / item.name)
        replace_folder(built, output)
        return f"wrote {output} ({SAFETENSORS_FILE} from {args.input})"
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        print(_run(args))
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
