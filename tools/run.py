"""The one program: runs a gin-configured experiment.

    python -m tools.run --gin experiments/pretrain/lovt_synthcxr.gin \\
        [--gin gin/debug/tiny.gin] [--bind 'lovt.pretrain.epochs = 3'] \\
        [--output_dir runs/lovt_synthcxr] [--backend jax] [--cpus 0-3] [--dry_run] [--overwrite]

Later ``--gin`` files and then the ``--bind`` bindings override earlier values. The
experiment's root is ``lovt.run`` (see ``tools.gin_registry``): a program (e.g.
``lovt.pretrain``), a model and the data; or ``lovt.study``, which runs a sequence of
pretrainings and their evaluation, each as a run of this program (see
``lovt_keras.training.study``).
``--backend`` sets ``KERAS_BACKEND`` before Keras is imported (``$KERAS_BACKEND`` must
name one of ``BACKENDS``). ``--cpus`` runs the process on those CPUs only, with every
framework's thread pools sized to them, also set before the import (``pin_cpus``).
Before any framework is imported the program also keeps freed memory in the process
(``keep_freed_memory``): TensorFlow's CPU tensors come from its BFC allocator, and glibc's
malloc neither maps nor trims what it frees below 32 MB. Both are off by default and
each training step then pays for fresh pages: on 2 CPUs a TensorFlow ``fit`` step of the
quickstart took 1.5 s instead of 1.1 s, a third of it in the kernel.
``--dry_run`` builds the model and the data, runs one batch
through the model, prints the summary and exits without writing a run directory (a
study prints every command it would run); building the data generates SynthCXR into its
cache on first use, as a real run would, and the dry run names the folders it
generated. For the evaluation program (``lovt.evaluate``) it builds every encoder and
every task's data and prints the encoders, each task's recipe and split sizes, or the
dataset folders that are missing (exit code 2).

A run directory (``--output_dir``, default ``runs/<name of the last --gin file>``)
holds ``config.gin`` (the parsed configuration), ``operative_config.gin`` (the values
actually used), ``command.txt``, ``run_info.json`` (package versions, backend, devices,
git commit and whether the tree was dirty, seed), ``metrics.jsonl``, TensorBoard logs,
checkpoints and the exported encoders. A non-empty directory is refused unless
``--overwrite`` is given or it holds a run of the same configuration, which is then
resumed from its last checkpoint (rerun the same command after an interruption). A run
directory belongs to the backend that made it: another backend is refused. Rerunning a
finished run changes nothing (not even ``run_info.json``) and says so.

TensorFlow prints start-up lines on every import, even with ``TF_CPP_MIN_LOG_LEVEL=3``
(which this program sets unless it is set): they are logged before TensorFlow reads its
log level. The program imports Keras with those known lines dropped from stderr (see
``_quiet_framework_import``); everything else TensorFlow prints passes through.

``main(argv)`` returns the exit code: 0 done, 1 the run failed, 2 a usage or
configuration error (reported as ``FILE:LINE: message`` with the closest valid names).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import difflib
import importlib.metadata
import json
import logging
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tokenize
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch")
RUNS_DIR = "runs"
CONFIG_FILE = "config.gin"
OPERATIVE_CONFIG_FILE = "operative_config.gin"
COMMAND_FILE = "command.txt"
RUN_INFO_FILE = "run_info.json"
PACKAGES = ("lovt_keras", "keras", "keras-hub", "tensorflow", "jax", "jaxlib", "torch",
            "numpy", "datasets", "tokenizers", "gin-config")


class ConfigError(Exception):
    """A configuration problem, reported without a traceback (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.run",
        description="Run a gin-configured lovt_keras experiment.",
    )
    parser.add_argument("--gin", action="append", default=[], metavar="FILE",
                        help="gin file (repeatable; later files override earlier ones)")
    parser.add_argument("--bind", action="append", default=[], metavar="'NAME = VALUE'",
                        help="gin binding applied after all files (repeatable)")
    parser.add_argument("--output_dir", help="run directory (default runs/<last gin file>)")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND or Keras' default)")
    parser.add_argument("--dry_run", action="store_true",
                        help="build the model and the data, print the summary, exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete a non-empty output directory and start afresh")
    parser.add_argument("--cpus", metavar="LIST",
                        help="run on these CPUs only, e.g. 0,1 or 0-3, with every "
                             "framework's threads sized to them (default: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.gin:
        parser.error("give at least one --gin FILE")
    # TensorFlow's C++ start-up lines (CPU features, oneDNN, CUDA stubs) are noise here.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        _select_backend(args.backend)
        if args.cpus is not None:
            pin_cpus(args.cpus)
        keep_freed_memory()
        _quiet_framework_import()
        spec = configure(args.gin, args.bind)
        if args.dry_run:
            return _dry_run(spec, args)
        output_dir = Path(args.output_dir or Path(RUNS_DIR) / Path(args.gin[-1]).stem)
        if secondary_process():  # data parallel: process 0 writes the run's files
            train_data, val_data = _build_data(spec)
            spec.program(model=spec.model, train_data=train_data, val_data=val_data,
                         output_dir=output_dir, verbose=0)
            return 0
        state = prepare_output_dir(output_dir, _config_text(), args.overwrite)
        resuming = state != NEW_RUN
        if resuming and _check_previous_run(output_dir, finished_is_done=state == RESUME):
            return 0
        _write_run_files(output_dir, argv, resuming)
        train_data, val_data = _build_data(spec)
        _write_operative_config(output_dir)
        result = spec.program(model=spec.model, train_data=train_data, val_data=val_data,
                              output_dir=output_dir, verbose=2 if sys.stdout.isatty() else 1)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _write_operative_config(output_dir)
    _record_end(output_dir, result)
    return 0


def secondary_process() -> bool:
    """True in the processes of a multi-process data-parallel run other than process 0
    (``torchrun``'s ``RANK``, Keras' ``KERAS_DISTRIBUTION_PROCESS_ID`` on JAX): they
    train their share and write nothing."""
    return any(int(os.environ.get(name, "0") or 0) > 0
               for name in ("RANK", "KERAS_DISTRIBUTION_PROCESS_ID"))


# --------------------------------------------------------------------------- backend


def _select_backend(backend: str | None) -> None:
    if backend is None:
        current = os.environ.get("KERAS_BACKEND")
        if current and current not in BACKENDS and "keras" not in sys.modules:
            raise ConfigError(
                f"KERAS_BACKEND={current} is not a backend of lovt_keras; use one of "
                f"{', '.join(BACKENDS)} (e.g. KERAS_BACKEND=jax, or --backend jax)"
            )
        return
    if "keras" in sys.modules:
        import keras

        current = keras.backend.backend()
        if current != backend:
            raise ConfigError(
                f"--backend {backend}: Keras is already imported with the {current} backend "
                "in this process; the backend can only be chosen before Keras is imported "
                "(run python -m tools.run in a new process)"
            )
    os.environ["KERAS_BACKEND"] = backend


def parse_cpus(text: str) -> list[int]:
    """``--cpus``: "0,1", "2-3" or "0-1,4" -> sorted CPU numbers."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ConfigError(f"--cpus {text!r}: give CPU numbers such as 0,1 or 0-3") from None
    if not cpus or min(cpus) < 0:
        raise ConfigError(f"--cpus {text!r}: give CPU numbers such as 0,1 or 0-3")
    return sorted(cpus)


def thread_environment(threads: int) -> dict[str, str]:
    """The environment variables that size each framework's CPU thread pools, read when
    the framework is imported: OpenMP and BLAS (PyTorch's intra-op threads, oneDNN) and
    TensorFlow's intra- and inter-op pools. (XLA:CPU, JAX's, sizes its pool by the
    process's CPU affinity, which ``pin_cpus`` sets.)"""
    n = str(int(threads))
    return {name: n for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                 "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}


def pin_cpus(text: str) -> list[int]:
    """``--cpus``: runs this process on those CPUs only, with every framework's thread
    pools sized to them, set before any framework is imported (one imported earlier
    keeps its pools: refused). How ``lovt.study`` runs pretrainings side by side."""
    cpus = parse_cpus(text)
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("--cpus: this operating system does not let a process choose its "
                          "CPUs (os.sched_setaffinity); leave --cpus out")
    allowed = os.sched_getaffinity(0)
    outside = sorted(set(cpus) - allowed)
    if outside:
        raise ConfigError(f"--cpus {text}: CPU(s) {outside} are not available to this process "
                          f"(it may use {sorted(allowed)})")
    imported = [m for m in ("tensorflow", "jax", "torch", "keras") if m in sys.modules]
    if imported:
        raise ConfigError(f"--cpus: {', '.join(imported)} already imported in this process; "
                          "the CPUs can only be chosen before (run python -m tools.run in a "
                          "new process)")
    os.sched_setaffinity(0, cpus)
    os.environ.update(thread_environment(len(cpus)))
    return cpus


# glibc's mallopt parameters (malloc.h) and the values keep_freed_memory sets: the
# largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2), and a trim
# threshold above a training step's working set.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30
MEMORY_ENVIRONMENT = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}


def keep_freed_memory() -> bool:
    """Keeps the memory a training step frees for the next step, in this process; call
    it before any framework is imported (``main`` does, so every run of a study does).

    - ``TF_CPU_ALLOCATOR_USE_BFC=true`` (unless set): TensorFlow's CPU tensors come from
      its BFC allocator, which keeps freed blocks, instead of one malloc/free each.
    - glibc's malloc (``mallopt``): buffers up to 32 MB come from the heap, not from a
      fresh ``mmap`` each, and freed memory is not trimmed back to the kernel below
      1 GB. By default glibc maps every buffer above a threshold that starts at 128 kB,
      and each of its pages faults again when the next step touches it.

    Measured on a 2-core VM (the quickstart's LoVT pretraining, TensorFlow, ``fit``): a
    step took 1.4-1.8 s with 280,000-460,000 page faults; with both, 1.1 s with a few
    hundred (about the in-memory ``train_on_batch`` step). The losses are unchanged.
    glibc's own ``GLIBC_TUNABLES=glibc.malloc...`` in the environment wins: then malloc
    is left alone.

    Returns:
        True when malloc was tuned (Linux with glibc), False when left alone.
    """
    for name, value in MEMORY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (macOS, musl): nothing to tune
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


# TensorFlow's lines logged before it reads TF_CPP_MIN_LOG_LEVEL (absl's pre-init
# logging), printed at every import. Only INFO lines, and "GPU will not be used" only
# where the machine has no NVIDIA device (with one, it says why a GPU is not used).
_STARTUP_NOISE = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\. .*",
)
_NO_GPU_NOISE = (
    r"I\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your "
    r"machine, GPU will not be used\.",
)


def _startup_noise() -> re.Pattern | None:
    """The stderr lines to drop while Keras is imported, or None to drop nothing (the
    user asked for TensorFlow's INFO logs with ``TF_CPP_MIN_LOG_LEVEL=0``)."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0"):
        return None
    patterns = list(_STARTUP_NOISE)
    if not list(Path("/dev").glob("nvidia*")):
        patterns += _NO_GPU_NOISE
    return re.compile("|".join(f"(?:{p})" for p in patterns))


@contextlib.contextmanager
def _stderr_without(noise: re.Pattern):
    """Runs the body with file descriptor 2 (what C++ code writes to) piped through a
    thread that forwards every line except those matching ``noise``."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not noise.fullmatch(line.decode("utf-8", "replace").rstrip("\r\n")):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's write end: the thread reads to the end
        thread.join(timeout=10)
        if not thread.is_alive():
            os.close(saved)


class _DropRetracingWarnings(logging.Filter):
    """Drops TensorFlow's "... triggered tf.function retracing" warning: the evaluation
    builds a new model per probe run by design, which is what the warning counts."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


RETRACING_FILTER = _DropRetracingWarnings()


def _quiet_framework_import() -> None:
    """Imports Keras and keras-hub (which imports TensorFlow on every backend) with
    TensorFlow's start-up noise dropped (``_startup_noise``), and drops TensorFlow's
    retracing warnings (``_DropRetracingWarnings``); nothing else is hidden."""
    logging.getLogger("tensorflow").addFilter(RETRACING_FILTER)  # idempotent
    if "keras" in sys.modules:
        return
    noise = _startup_noise()
    if noise is None:
        return
    with _stderr_without(noise):
        import keras  # noqa: F401
        import keras_hub  # noqa: F401


# --------------------------------------------------------------------------- gin


def _resolve_gin_file(name: str, relative_to: Path | None = None) -> Path | None:
    candidates = [Path(name)]
    if relative_to is not None:
        candidates.append(relative_to / name)
    candidates.append(REPO_ROOT / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""")


def gin_file_closure(files: list[str]) -> list[Path]:
    """The given gin files and everything they include, in parse order."""
    seen: list[Path] = []

    def visit(path: Path):
        if path.resolve() in [p.resolve() for p in seen]:
            return
        seen.append(path)
        for line in path.read_text().splitlines():
            match = _INCLUDE.match(line)
            if match:
                included = _resolve_gin_file(match.group(1), path.parent)
                if included is not None:
                    visit(included)

    for name in files:
        path = _resolve_gin_file(name)
        if path is not None:
            visit(path)
    return seen


def configure(files: list[str], bindings: list[str]):
    """Parses gin files and bindings and returns the configured ``RunSpec``.

    Raises:
        ConfigError: a missing file, a syntax error, an unknown configurable, parameter
            or macro (naming the file, the line and the closest valid names), or an unset
            required part of ``lovt.run``.
    """
    import gin

    from tools import gin_registry

    gin_registry.register()
    gin_registry.clear_caches()
    gin.clear_config()
    if str(REPO_ROOT) not in _search_paths_added:
        gin.add_config_file_search_path(str(REPO_ROOT))
        _search_paths_added.add(str(REPO_ROOT))
    for name in files:
        path = _resolve_gin_file(name)
        if path is None:
            raise ConfigError(f"{name}: no such gin file")
        try:
            gin.parse_config_file(str(path))
        except Exception as error:  # gin raises ValueError, SyntaxError, TokenError, OSError
            raise ConfigError(_explain(error, str(path))) from None
    for binding in bindings:
        try:
            gin.parse_config(binding)
        except Exception as error:
            raise ConfigError(_explain(error, f"--bind {binding!r}", binding=binding)) from None
    _check_macros(files, bindings)
    try:
        return gin_registry.configured_run()
    except gin_registry.MissingValueError as error:
        raise ConfigError(str(error)) from None


_search_paths_added: set[str] = set()

_LOCATION = re.compile(r'In file "(?P<file>[^"]+)", line (?P<line>\d+)')
_BINDING_LOCATION = re.compile(r"In bindings string line \d+")
_UNKNOWN_CONFIGURABLE = re.compile(r"No configurable matching (?:reference )?'@?(?P<name>[^'()]+)")
_UNKNOWN_PARAMETER = re.compile(
    r"Configurable '(?P<configurable>[^']+)' doesn't have a parameter named '(?P<param>[^']+)'"
)


def _explain(error: Exception, origin: str, binding: str | None = None) -> str:
    """``FILE:LINE: what is wrong; did you mean ...?`` for a gin parse error (``binding``:
    the text of the ``--bind`` that failed; None for a file)."""
    from tools import gin_registry

    message = str(error)
    location = origin
    match = _LOCATION.search(message)
    if match:
        location = f"{match.group('file')}:{match.group('line')}"
    elif (isinstance(error, SyntaxError) and error.lineno and binding is None
          and not _BINDING_LOCATION.search(message)):
        location = f"{error.filename or origin}:{error.lineno}"
    names = sorted(gin_registry.REGISTERED)

    match = _UNKNOWN_CONFIGURABLE.search(message)
    if match:
        name = match.group("name")
        return f"{location}: unknown configurable '{name}'{_did_you_mean(name, _candidates(name, names))}"
    match = _UNKNOWN_PARAMETER.search(message)
    if match:
        configurable, param = match.group("configurable"), match.group("param")
        full = _full_name(configurable.split("/")[-1], names)
        options = gin_registry.parameters_of(full) if full else []
        return (f"{location}: '{configurable}' has no parameter '{param}'"
                f"{_did_you_mean(param, options, quote='')}")
    if isinstance(error, SyntaxError):
        hint = _quote_hint(error, origin, binding)
        text = getattr(error, "msg", message)
        return f"{location}: syntax error: {text.rstrip('.') if hint else text}{hint}"
    if isinstance(error, tokenize.TokenError):
        # ('EOF in multi-line statement', (row, col)): a bracket or string left open.
        row = error.args[1][0] if len(error.args) > 1 else "?"
        return f"{origin}:{row}: syntax error: {error.args[0]} (an unclosed bracket or string?)"
    if isinstance(error, OSError) and "Unable to open file" in message:
        return f"{location}: {message.splitlines()[0]}"
    first = message.splitlines()[0] if message else type(error).__name__
    return f"{location}: {type(error).__name__}: {first}"


_UNQUOTED = re.compile(r"^\s*(?P<name>[\w./%@]+)\s*=\s*(?P<value>[^'\"\s\[({=][^#]*?)\s*$")


def _quote_hint(error: SyntaxError, origin: str, binding: str | None) -> str:
    """For "Unable to parse value" on ``NAME = text`` (gin values are Python literals, so
    an unquoted path or word is not one): the line with the value quoted."""
    if "Unable to parse value" not in str(error):
        return ""
    lines = (binding if binding is not None else _read_text(origin)).splitlines()
    number = error.lineno or 1
    match = _UNQUOTED.match(lines[number - 1]) if 0 < number <= len(lines) else None
    if match is None:
        return ""
    quoted = f"{match.group('name')} = {match.group('value')!r}"
    if binding is not None:
        return f" (gin values are Python literals: quote strings, --bind \"{quoted}\")"
    return f" (gin values are Python literals: quote strings, {quoted})"


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _candidates(name: str, names: list[str]) -> list[str]:
    # Compare like with like: "lovt.X" with full names, "X" with short ones.
    return names if "." in name else [n.split(".", 1)[1] for n in names]


def _full_name(name: str, names: list[str]) -> str | None:
    for full in names:
        if full == name or full.split(".", 1)[1] == name:
            return full
    return None


def _did_you_mean(word: str, options: list[str], quote: str = "'") -> str:
    """``; did you mean 'a' or 'b'?`` with the closest options (those within 0.05 of the
    best similarity ratio), or an empty string."""
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    if not close:
        return ""
    ratios = [difflib.SequenceMatcher(None, word, c).ratio() for c in close]
    close = [c for c, r in zip(close, ratios) if r >= max(ratios) - 0.05]
    listed = " or ".join(f"{quote}{c}{quote}" for c in close)
    return f"; did you mean {listed}?"


_STRING = re.compile(r"'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"")
_MACRO_DEFINITION = re.compile(r"^\s*([A-Za-z_]\w*)\s*=")
_MACRO_REFERENCE = re.compile(r"%([A-Za-z_][\w.]*)")


def _check_macros(files: list[str], bindings: list[str]) -> None:
    """Every ``%NAME`` must be defined somewhere (gin itself only checks this when the
    config is finalized, which also demands unused ``%gin.REQUIRED`` values), and a
    ``--bind`` that sets a macro must set one that some file uses (a misspelled macro
    would otherwise be accepted and change nothing)."""
    sources: list[tuple[str, list[str]]] = [
        (str(path), path.read_text().splitlines()) for path in gin_file_closure(files)
    ]
    sources += [(f"--bind {b!r}", b.splitlines()) for b in bindings]
    defined: set[str] = set()
    references: list[tuple[str, int, str]] = []
    for origin, lines in sources:
        for number, line in enumerate(lines, 1):
            code = _STRING.sub("''", line.split("#", 1)[0])
            match = _MACRO_DEFINITION.match(code)
            if match:
                defined.add(match.group(1))
            for name in _MACRO_REFERENCE.findall(code):
                if name != "gin.REQUIRED":
                    references.append((origin, number, name))
    referenced = {name for _, _, name in references}
    for binding in bindings:
        for line in binding.splitlines():
            match = _MACRO_DEFINITION.match(_STRING.sub("''", line.split("#", 1)[0]))
            if match and match.group(1) not in referenced:
                name = match.group(1)
                known = sorted(referenced | defined - {name})
                raise ConfigError(
                    f"--bind {binding!r}: no loaded gin file uses the macro {name}, so this "
                    f"binding would change nothing{_did_you_mean(name, known, quote='')}"
                )
    for origin, number, name in references:
        if name not in defined:
            where = origin if origin.startswith("--bind") else f"{origin}:{number}"
            raise ConfigError(
                f"{where}: undefined macro %{name}"
                f"{_did_you_mean(f'%{name}', [f'%{d}' for d in sorted(defined)], quote='')}"
            )


def _config_text() -> str:
    import gin

    return gin.config_str()


# --------------------------------------------------------------------------- run directory


# prepare_output_dir's answers: a new run, the same run resumed, or the same evaluation
# with another set of encoders (see ENCODER_SET_MACROS).
NEW_RUN, RESUME, NEW_ENCODERS = "new", "resume", "new encoders"
# Macros that name the encoders an evaluation scores. A run directory whose
# configuration differs only in them is the same evaluation of another set of encoders:
# every result file is keyed by encoder name and checked against the encoder it was
# computed with (lovt_keras.training.evaluation.check_stored_result), so the results of
# the encoders kept are reused and the others computed; a study that adds methods or
# seeds, or moves an encoder, resumes its evaluation this way.
ENCODER_SET_MACROS = ("CHECKPOINTS",)


def prepare_output_dir(output_dir: Path, config_text: str, overwrite: bool) -> str:
    """Creates or checks the run directory; returns ``NEW_RUN``, ``RESUME`` (the same
    configuration) or ``NEW_ENCODERS`` (the same but for ``ENCODER_SET_MACROS``; the
    stored configuration is replaced, saying so).

    Raises:
        ConfigError: the directory is not empty and neither ``overwrite`` is set nor does
            it hold a run of the same configuration.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output_dir {output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if overwrite:
            if not (output_dir / CONFIG_FILE).is_file():
                # Never delete a folder that is not a run directory (a mistyped path).
                raise ConfigError(
                    f"--overwrite: {output_dir} holds no {CONFIG_FILE}, so it is not a run "
                    "directory; refusing to delete it"
                )
            shutil.rmtree(output_dir)
        else:
            config_path = output_dir / CONFIG_FILE
            if not config_path.is_file():
                raise ConfigError(
                    f"--output_dir {output_dir} is not empty and holds no {CONFIG_FILE}; "
                    "pass --overwrite to replace it or choose another directory"
                )
            stored = config_path.read_text()
            if stored != config_text and (_without_macros(stored, ENCODER_SET_MACROS)
                                          == _without_macros(config_text, ENCODER_SET_MACROS)):
                print(f"{output_dir}: the same evaluation with another set of encoders "
                      f"({', '.join(ENCODER_SET_MACROS)}); results of the encoders kept are "
                      "reused, the others computed", flush=True)
                config_path.write_text(config_text)
                return NEW_ENCODERS
            if stored != config_text:
                raise ConfigError(
                    f"--output_dir {output_dir} holds a run with a different configuration "
                    f"({_first_difference(stored, config_text)}); pass --overwrite to "
                    "replace it, or rerun the command that created it to resume"
                )
            return RESUME
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / CONFIG_FILE).write_text(config_text)
    return NEW_RUN


def _without_macros(config_text: str, names: Sequence[str]) -> str:
    """``config_text`` (gin's ``config_str()``) without the definitions of the macros
    ``names``: a line ``NAME = ...`` and the indented lines continuing it."""
    kept, skipping = [], False
    for line in config_text.splitlines():
        if skipping and line[:1].isspace():
            continue
        skipping = any(line.startswith(f"{name} =") for name in names)
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def _check_previous_run(output_dir: Path, finished_is_done: bool = True) -> bool:
    """Before resuming the run in ``output_dir``: True (after saying so) when it has
    finished and ``finished_is_done``, so there is nothing to do and nothing is written.

    Raises:
        ConfigError: the run was made with another Keras backend.
    """
    import keras

    info_path = output_dir / RUN_INFO_FILE
    if not info_path.is_file():
        return False
    info = json.loads(info_path.read_text())
    backend = keras.backend.backend()
    if info.get("backend") not in (None, backend):
        state = "finished run" if "finished" in info else "run"
        raise ConfigError(
            f"--output_dir {output_dir} holds a {state} made with the {info['backend']} "
            f"backend, this command uses {backend}; use another --output_dir, or "
            f"--overwrite to replace it with a {backend} run"
        )
    if "finished" in info and finished_is_done:
        print(f"{output_dir}: this run finished on {info['finished']}; nothing to do (its "
              "outputs are there; --overwrite runs it again)", flush=True)
        return True
    return False


def _first_difference(old: str, new: str) -> str:
    old_lines, new_lines = old.splitlines(), new.splitlines()
    for number, (a, b) in enumerate(zip(old_lines, new_lines), 1):
        if a != b:
            return f"{CONFIG_FILE} line {number}: {a.strip()!r} is now {b.strip()!r}"
    return f"{CONFIG_FILE} has {len(old_lines)} lines, the new configuration {len(new_lines)}"


def _git_info() -> dict:
    def git(*command):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *command], capture_output=True,
                              text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    commit = head.stdout.strip() if head.returncode == 0 else None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {"commit": commit, "dirty": dirty}


def _versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _devices() -> list[str]:
    import keras

    try:
        return [str(d) for d in keras.distribution.list_devices()]
    except Exception:
        if keras.backend.backend() == "torch":
            import torch

            if torch.cuda.is_available():
                return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu"]


def _seed():
    from tools.gin_registry import bound_value

    value = bound_value("lovt.pretrain.seed", default=None)
    return value if isinstance(value, int) else None


def run_info() -> dict:
    """Versions, backend, devices, git state and seed of this process's run."""
    import keras

    return {
        "backend": keras.backend.backend(),
        "devices": _devices(),
        "versions": _versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git": _git_info(),
        "seed": _seed(),
    }


def _write_run_files(output_dir: Path, argv: list[str], resuming: bool) -> None:
    command = "python -m tools.run " + shlex.join(argv)
    with open(output_dir / COMMAND_FILE, "a", encoding="utf-8") as f:
        f.write(command + "\n")
    info_path = output_dir / RUN_INFO_FILE
    previous = []
    if resuming and info_path.is_file():
        old = json.loads(info_path.read_text())
        previous = old.pop("previous_starts", []) + [old]
    info = run_info()
    info.update(
        command=command,
        cwd=os.getcwd(),
        started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        resumed=resuming,
        previous_starts=previous,
    )
    _write_json(info_path, info)


def _write_json(path: Path, value: dict) -> None:
    from lovt_keras.files import write_json

    write_json(path, value, default=str)


def _write_operative_config(output_dir: Path) -> None:
    import gin

    (output_dir / OPERATIVE_CONFIG_FILE).write_text(gin.operative_config_str())


def _record_end(output_dir: Path, result) -> None:
    info_path = output_dir / RUN_INFO_FILE
    info = json.loads(info_path.read_text())
    info["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    state = getattr(result, "state", None)
    if state is not None:
        info["result"] = {
            "epochs": state.epoch,
            "best_epoch": None if state.best_epoch is None else state.best_epoch + 1,
            "best_value": state.best_value,
            "stopped_early": state.stopped_early,
            "resumed_from": getattr(result, "resumed_from", None),
        }
    _write_json(info_path, info)


# --------------------------------------------------------------------------- building


def _build_data(spec):
    from tools.gin_registry import MissingValueError

    try:
        train_data = spec.train_data() if spec.train_data is not None else None
        val_data = spec.validation_data() if spec.validation_data is not None else None
    except (MissingValueError, FileNotFoundError) as error:
        # gin appends "In call to configurable ..." lines; the first part says it all.
        raise ConfigError(str(error).split("\n  In call to configurable")[0]) from None
    return train_data, val_data


def build_model(spec):
    """Builds the model of a configured ``RunSpec`` (no data needed)."""
    from tools.gin_registry import MissingValueError

    try:
        return spec.model()
    except MissingValueError as error:
        raise ConfigError(str(error)) from None


def _dry_run(spec, args) -> int:
    import keras

    if _is_study(spec):
        output_dir = args.output_dir or Path(RUNS_DIR) / Path(args.gin[-1]).stem
        spec.program(model=None, train_data=None, val_data=None, output_dir=output_dir,
                     verbose=1, dry_run=True)
        return 0
    caches = _synthcxr_caches()
    cached = _folders_in(caches)
    try:
        _dry_run_model_and_data(spec)
    finally:
        generated = sorted(_folders_in(caches) - cached)
        if generated:
            print("generated SynthCXR into its cache (first use; later runs read it):\n  "
                  + "\n  ".join(str(folder) for folder in generated), flush=True)
    print(f"backend: {keras.backend.backend()}")
    print("run_info:", json.dumps(run_info(), default=str))
    print("dry run OK: no run directory written")
    return 0


def _synthcxr_caches() -> set[Path]:
    """The SynthCXR cache folders this configuration may generate into (the default one
    and any bound ``cache_dir``)."""
    from lovt_keras.data.synthcxr import synthcxr_dir
    from tools.gin_registry import bound_value

    bound = [bound_value(f"lovt.{name}.cache_dir", default=None)
             for name in ("synthcxr_folder", "synth_tasks")]
    return {synthcxr_dir(cache).parent for cache in [None, *bound]
            if cache is None or isinstance(cache, (str, os.PathLike))}


def _folders_in(caches: set[Path]) -> set[Path]:
    return {folder for cache in caches if cache.is_dir() for folder in cache.iterdir()
            if folder.is_dir() and not folder.name.startswith(".")}


def _dry_run_model_and_data(spec) -> None:
    import keras

    from lovt_keras.training.pretrain import check_batch_fits_model

    train_data, val_data = _build_data(spec)  # first: missing data is the likelier error
    if _is_evaluation(train_data):
        _dry_run_evaluation(spec, train_data, val_data)
    else:
        model = build_model(spec)
        if isinstance(model, keras.Model) and isinstance(train_data, keras.utils.PyDataset):
            batch = train_data[0]
            check_batch_fits_model(model, batch)
            outputs = model({k: v[:2] for k, v in batch.items()}, training=False)
            model.summary()
            print("inputs:", {k: tuple(v.shape) for k, v in batch.items()})
            print("outputs (2 samples):", {k: tuple(v.shape) for k, v in outputs.items()})
            print(f"train: {len(train_data)} batches ({train_data!r})")
            if val_data is not None:
                print(f"validation: {len(val_data)} batches ({val_data!r})")
        else:
            print(f"model: {model!r}")
            print(f"train_data: {train_data!r}")


def _is_study(spec) -> bool:
    """A program that builds no model and no data itself but runs others (``lovt.study``)."""
    return spec.model is None and spec.train_data is None


def _is_evaluation(train_data) -> bool:
    """The evaluation program's data: a list of ``EvalTask``s (``lovt.paper_tasks`` /
    ``lovt.synth_tasks``)."""
    from lovt_keras.training.evaluation import EvalTask

    return (isinstance(train_data, list | tuple) and len(train_data) > 0
            and all(isinstance(t, EvalTask) for t in train_data))


def _dry_run_evaluation(spec, tasks, val_data) -> None:
    """Builds the encoders and every task's data and prints them (``lovt.evaluate``).

    Raises:
        ConfigError: an encoder or a task's data cannot be built (all problems listed,
            after the summary of everything else).
    """
    from lovt_keras.training.evaluation_program import describe_evaluation
    from tools.gin_registry import bound_value

    if val_data is not None:
        raise ConfigError("lovt.evaluate takes its data from the tasks; leave "
                          "lovt.run.validation_data unset")
    try:
        encoders = build_model(spec)
    except (FileNotFoundError, ValueError) as error:  # a missing checkpoint, no encoder
        # gin appends "In call to configurable ..." lines; the first part says it all.
        message = str(error).split("\n  In call to configurable")[0]
        raise ConfigError(message) from None
    problems = describe_evaluation(encoders, list(tasks), int(bound_value("lovt.evaluate.seeds")))
    if problems:
        raise ConfigError(f"dry run: {len(problems)} problem(s):\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    sys.exit(main())
