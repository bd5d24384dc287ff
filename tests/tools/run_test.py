"""``python -m tools.run``: a whole tiny run, resuming, refusals, gin errors, backends."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from lovt_keras.models import LOSS_NAMES
from lovt_keras.training.checkpoints import read_checkpoint_state
from tools import run

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "experiments/pretrain/lovt_synthcxr.gin"
TINY = "gin/debug/tiny.gin"


def _synthcxr_bindings(cache: Path) -> list[str]:
    """A small SynthCXR, generated in ``cache`` on first use by lovt.synthcxr_folder."""
    return [
        "--bind", f"lovt.synthcxr_folder.cache_dir = '{cache}'",
        "--bind", "lovt.synthcxr_folder.num_train = 16",
        "--bind", "lovt.synthcxr_folder.num_validation = 8",
        "--bind", "lovt.synthcxr_folder.num_test = 4",
    ]


@pytest.fixture(scope="module")
def synthcxr_bindings(tmp_path_factory):
    # One small SynthCXR per session.
    return _synthcxr_bindings(tmp_path_factory.getbasetemp() / "synthcxr_cache")


def _tiny_argv(out: Path, cache: Path) -> list[str]:
    """One epoch of the tiny overlay on a small SynthCXR generated in ``cache``, two
    loader threads."""
    return ["--gin", EXPERIMENT, "--gin", TINY, *_synthcxr_bindings(cache),
            "--bind", "lovt.pretraining_batches.workers = 2",
            "--bind", "lovt.pretrain.epochs = 1", "--output_dir", str(out)]


def test_tiny_run_writes_the_whole_run_directory_and_repeats_bit_for_bit(tmp_path, capsys):
    out = tmp_path / "run"
    argv = _tiny_argv(out, tmp_path / "cache0")
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1  loss " in printed and "done: 1 epochs" in printed
    # The summary shows the rates the epoch's 2 updates used (cosine per epoch from 1e-4).
    assert "  lr 0.0001..5e-05  " in printed

    assert {p.name for p in out.iterdir()} >= {
        "config.gin", "operative_config.gin", "command.txt", "run_info.json",
        "metrics.jsonl", "tensorboard", "checkpoints", "image_encoder.keras",
        "report_encoder.keras", "vocab.txt", "data_info.json",
    }
    assert "pretrain.epochs = 1" in (out / "config.gin").read_text()
    operative = (out / "operative_config.gin").read_text()
    assert "LoVTPretrainer.projection_dim = 32" in operative
    assert "resnet_image_encoder.depth = 18" in operative
    assert (out / "command.txt").read_text().startswith(
        f"python -m tools.run --gin {EXPERIMENT} --gin {TINY} --bind ")
    info = json.loads((out / "run_info.json").read_text())
    assert info["backend"] == keras.backend.backend() and info["seed"] == 12345
    assert info["versions"]["keras"] == keras.__version__ and info["devices"]
    assert set(info["git"]) == {"commit", "dirty"} and info["resumed"] is False
    assert info["result"]["epochs"] == 1 and info["result"]["best_epoch"] == 1

    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 1 and record["step"] == 4  # 16 studies / batches of 4
    for name in ("loss", *LOSS_NAMES):
        assert np.isfinite(record[name]) and np.isfinite(record[f"val_{name}"]), name
    # lr after 2 updates of the 2-update epoch: the cosine is at its minimum, 0.
    assert record["learning_rate"] == pytest.approx(0.0, abs=1e-12)
    assert (record["lr_first_update"], record["lr_last_update"]) == pytest.approx((1e-4, 5e-5))
    for folder in ("train", "validation"):
        assert list((out / "tensorboard" / folder).glob("events.out.tfevents.*"))
    state = read_checkpoint_state(out / "checkpoints" / "last.npz")
    assert state.finished and state.epoch == 1 and state.global_step == 4

    # A finished run keeps one weights-only checkpoint (the kept weights) and the run
    # directory costs megabytes (a width-8 ResNet-18 and a 32-d BERT: 0.26 M weights).
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.npz"]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 3_000_000, size

    # The exported encoders load without gin and hold the kept (best) weights.
    image_encoder = keras.saving.load_model(out / "image_encoder.keras", compile=False)
    features = image_encoder(np.zeros((1, 64, 64, 1), "float32"))
    assert tuple(features["conv5"].shape) == (1, 2, 2, 64)  # the tiny overlay: width 8
    last = np.load(out / "checkpoints" / "last.npz")
    meta = json.loads(bytes(last["__meta__"]).decode())
    assert set(meta["groups"]) == {"model"}  # no optimizer state once finished
    paths = [v["path"] for v in meta["groups"]["model"]]
    kernel = last[f"model.{paths.index('conv1_conv/kernel'):06d}"]
    (stem,) = [v for v in image_encoder.variables if v.path == "conv1_conv/kernel"]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(stem), kernel)
    report_encoder = keras.saving.load_model(out / "report_encoder.keras", compile=False)
    tokens = np.zeros((1, 64), "int32")
    tokens[0, :3] = [2, 7, 3]
    outputs = report_encoder({"token_ids": tokens, "padding_mask": (tokens > 0).astype("int32"),
                              "sentence_ids": np.where(np.arange(64) == 1, 0, -1)[None]})
    assert tuple(outputs["sentence_features"].shape) == (1, 8, 32)

    # The same command again, with SynthCXR and its vocabulary generated afresh in
    # another cache: everything that decides a run is seeded (the data, the
    # initialization, the data order with two loader threads, the augmentations and
    # dropout), so the two runs agree bit for bit.
    again = tmp_path / "again"
    assert run.main(_tiny_argv(again, tmp_path / "cache1")) == 0
    assert (tmp_path / "cache0").is_dir() and (tmp_path / "cache1").is_dir()
    histories = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
                  for line in (folder / "metrics.jsonl").read_text().splitlines()]
                 for folder in (out, again)]
    assert len(histories[0]) == 1 and histories[0] == histories[1]
    repeated = keras.saving.load_model(again / "image_encoder.keras", compile=False)
    for a, b in zip(image_encoder.get_weights(), repeated.get_weights()):
        np.testing.assert_array_equal(a, b)

    # The same command again: the run is finished, so it says so and writes nothing.
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run.main(argv) == 0
    assert capsys.readouterr().out == (f"{out}: this run finished on {info['finished']}; "
                                       "nothing to do (its outputs are there; --overwrite "
                                       "runs it again)\n")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files

    # Another backend is refused (made here by editing the record: this process cannot
    # change its backend), and nothing is written.
    other = _other_backend()
    (out / "run_info.json").write_text(json.dumps({**info, "backend": other}))
    assert run.main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: --output_dir {out} holds a finished run made with the {other} backend, "
        f"this command uses {keras.backend.backend()}; use another --output_dir, or "
        f"--overwrite to replace it with a {keras.backend.backend()} run\n")
    assert json.loads((out / "run_info.json").read_text())["backend"] == other
    assert (out / "command.txt").read_bytes() == files[out / "command.txt"]
    # So is resuming an unfinished run with another backend.
    (out / "run_info.json").write_text(json.dumps(
        {k: v for k, v in info.items() if k != "finished"} | {"backend": other}))
    assert run.main(argv) == 2
    assert f"holds a run made with the {other} backend" in capsys.readouterr().err

    # Another configuration in the same directory is refused before anything runs.
    capsys.readouterr()
    assert run.main([*argv, "--bind", "lovt.pretrain.epochs = 3"]) == 2
    error = capsys.readouterr().err
    assert "holds a run with a different configuration" in error
    assert "'pretrain.epochs = 1' is now 'pretrain.epochs = 3'" in error


def test_non_empty_directory_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert run.main(["--gin", EXPERIMENT, "--output_dir", str(tmp_path)]) == 2
    assert "is not empty and holds no config.gin; pass --overwrite" in capsys.readouterr().err
    argv = ["--gin", EXPERIMENT, "--output_dir", str(tmp_path), "--overwrite"]
    assert run.main(argv) == 2
    assert "not a run directory; refusing to delete it" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _error_for(tmp_path, capsys, text, bindings=()):
    path = tmp_path / "typo.gin"
    path.write_text(f"include '{EXPERIMENT}'\n{text}\n")
    argv = ["--gin", str(path), "--dry_run"]
    for binding in bindings:
        argv += ["--bind", binding]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return path, err.strip()


def test_gin_typos_name_the_file_line_and_closest_names(tmp_path, capsys):
    path, err = _error_for(tmp_path, capsys, "lovt.LoVTPretainer.projection_dim = 16")
    assert err == (f"error: {path}:2: unknown configurable 'lovt.LoVTPretainer'; "
                   "did you mean 'lovt.LoVTPretrainer'?")
    path, err = _error_for(tmp_path, capsys, "lovt.LoVTPretrainer.spatial_smoothin = False")
    assert err == (f"error: {path}:2: 'lovt.LoVTPretrainer' has no parameter "
                   "'spatial_smoothin'; did you mean spatial_smoothing?")
    path, err = _error_for(tmp_path, capsys, "lovt.run.model = @lovt.LoVTPretrainr")
    assert err == (f"error: {path}:2: unknown configurable 'lovt.LoVTPretrainr'; "
                   "did you mean 'lovt.LoVTPretrainer'?")
    path, err = _error_for(tmp_path, capsys, "lovt.pretrain.seed = %SED")
    assert err == f"error: {path}:2: undefined macro %SED; did you mean %SEED?"
    _, err = _error_for(tmp_path, capsys, "", bindings=["lovt.pretrian.epochs = 1"])
    assert err == ("error: --bind 'lovt.pretrian.epochs = 1': unknown configurable "
                   "'lovt.pretrian'; did you mean 'lovt.pretrain'?")
    path, err = _error_for(tmp_path, capsys, "lovt.pretrain.epochs = = 3")
    assert err.startswith(f"error: {path}:2: syntax error")
    assert run.main(["--gin", "experiments/nope.gin"]) == 2
    assert "experiments/nope.gin: no such gin file" in capsys.readouterr().err


def test_unset_required_values_are_named(capsys):
    argv = ["--gin", "experiments/pretrain/lovt_mimic_30.gin", "--gin", TINY, "--dry_run"]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert "has no value: it is bound to a %gin.REQUIRED macro (MIMIC_CXR_DIR)" in err
    assert "--bind \"MIMIC_CXR_DIR = '...'\"" in err


def _other_backend() -> str:
    # The quickest other backend for a dry run: torch starts fast, TensorFlow runs the
    # eager forward pass faster than JAX (which compiles every op on first use).
    return "tensorflow" if keras.backend.backend() == "torch" else "torch"


def test_backend_cannot_change_once_keras_is_imported(capsys):
    other = _other_backend()
    assert run.main(["--gin", EXPERIMENT, "--backend", other, "--dry_run"]) == 2
    assert f"--backend {other}: Keras is already imported with the " in capsys.readouterr().err


def test_backend_flag_selects_the_backend_of_a_new_process(synthcxr_bindings):
    other = _other_backend()
    command = [sys.executable, "-m", "tools.run", "--gin", EXPERIMENT, "--gin", TINY,
               *synthcxr_bindings, "--backend", other, "--dry_run"]
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"backend: {other}" in done.stdout
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("run_info: ")]
    assert json.loads(line[len("run_info: "):])["backend"] == other
    assert "outputs (2 samples): {'image_global': (2, 32)" in done.stdout
    assert "dry run OK" in done.stdout


def test_dry_run_of_the_evaluation_builds_every_task_and_writes_nothing(
        tmp_path, capsys, monkeypatch):
    from lovt_keras.training.tasks import LOW_LABEL_TASKS, SYNTH_TASKS

    monkeypatch.chdir(tmp_path)  # where the default run directory runs/all_synth would go
    argv = ["--gin", "experiments/eval/all_synth.gin", "--gin", "gin/debug/tiny_eval.gin",
            "--bind", f"lovt.synth_tasks.cache_dir = '{tmp_path / 'cache'}'", "--dry_run"]
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    # tiny_eval: 2 seeds; every SynthCXR task has a 2-rate grid: 2 + 1 runs per task.
    assert (f"evaluation: 1 encoder(s) x {len(SYNTH_TASKS)} task(s); per task the lr grid at "
            f"seed 0, then 1 more seed(s) at the best lr ({3 * len(SYNTH_TASKS)} runs per "
            "encoder)") in printed
    # ResNet-18 on 1 channel: 11,170,240 weights + 15,872 BatchNorm moving statistics.
    assert "  Random: random init ResNet-18, 11,186,112 parameters" in printed
    found = dict(re.findall(r"\n  (\w+) \[.*\n.*\n    data: .*: (train \d+, validation \d+, "
                            r"test \d+) images", printed))
    # The tiny set has 100 / 16 / 16 images (200 train images for the low-label tasks);
    # the train split keeps round(n * fraction).
    pools = {name: 200 if name in LOW_LABEL_TASKS else 100 for name in SYNTH_TASKS}
    assert found == {name: f"train {round(pools[name] * task.label_fraction)}, validation 16, "
                     "test 16" for name, task in SYNTH_TASKS.items()}
    # Low-label epochs: ceil(100 / 16) = 7 batches, as the 100 % tasks' epochs.
    assert printed.count("up to 1 epoch(s) of 7 batches") == len(LOW_LABEL_TASKS) == 4
    assert "(7 train batches)" in printed
    assert printed.count(", 64 px, 1 class(es) ['opacity']") == 6
    assert "up to 2 boxes per image" in printed
    # The SynthCXR sets were generated into the (empty) cache, and the dry run says so.
    generated = sorted((tmp_path / "cache").iterdir())
    assert len(generated) == 2  # the 100-image set and the low-label tasks' 200-image set
    assert printed.endswith("dry run OK: no run directory written\n")
    assert ("generated SynthCXR into its cache (first use; later runs read it):\n  "
            + "\n  ".join(map(str, generated)) + "\n") in printed
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # only the SynthCXR cache
    # Again: nothing left to generate.
    assert run.main(argv) == 0
    assert "generated SynthCXR" not in capsys.readouterr().out


def test_dry_run_of_the_evaluation_names_missing_dataset_folders(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--gin", "experiments/eval/task09_rsna_linear_100.gin",
            "--gin", "gin/debug/tiny_eval.gin", "--bind", "lovt.eval_encoders.random_init_depth = 18",
            "--bind", f"RSNA_DATA = '{tmp_path / 'rsna'}'", "--output_dir", str(out), "--dry_run"]
    assert run.main(argv) == 2
    captured = capsys.readouterr()
    assert "  rsna_linear_100 [9 RSNA Lin 100%]: linear head, frozen encoder" in captured.out
    assert "lr grid 0.03, 0.01, 0.003, 0.001; batch 64; up to 1 epoch(s)" in captured.out
    assert captured.err == (
        f"error: dry run: 1 problem(s):\n  task rsna_linear_100: {tmp_path / 'rsna'}: no such "
        f"downstream dataset folder (the rsna folder of task 9: prepare it from the original "
        f"files with `python -m tools.prepare rsna ORIGINAL_DIR {tmp_path / 'rsna'}` (`python "
        "-m tools.prepare rsna --help` says what ORIGINAL_DIR holds) and bind RSNA_DATA)\n")
    assert not out.exists()


def test_a_bound_macro_that_no_file_uses_is_refused(capsys):
    code = run.main(["--gin", EXPERIMENT, "--bind", "IMAGE_SIZ = 32", "--dry_run"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--bind 'IMAGE_SIZ = 32': no loaded gin file uses the macro IMAGE_SIZ" in err
    assert "did you mean IMAGE_SIZE?" in err
    # A macro that a file uses is accepted.
    spec = run.configure([EXPERIMENT, TINY], ["IMAGE_SIZE = 32"])
    assert run.build_model(spec).image_encoder.image_size == 32


def test_help_imports_no_framework():
    # --help answers before Keras (and TensorFlow, ~10 s and start-up logs) is imported.
    code = ("import sys\nfrom tools import run\ntry:\n    run.main(['--help'])\n"
            "except SystemExit as done:\n    code = done.code\n"
            "print(code, sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch', 'gin', "
            "'lovt_keras') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.stderr == "" and done.stdout.endswith("\n0 []\n")
    assert done.stdout.startswith("usage: python -m tools.run [-h] [--gin FILE]")


_ABSL = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_ONEDNN = ("I0000 00:00:1796282006.734521    1787 port.cc:153] oneDNN custom operations are on. "
           "You may see slightly different numerical results due to floating-point round-off "
           "errors from different computation orders. To turn them off, set the environment "
           "variable `TF_ENABLE_ONEDNN_OPTS=0`.")
_NO_CUDA = ("I0000 00:00:1796282006.734829    1787 cudart_stub.cc:31] Could not find cuda "
            "drivers on your machine, GPU will not be used.")


def test_only_tensorflows_known_start_up_lines_are_dropped(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    kept = ["E0000 00:00:1796282474.686980    4938 cuda_platform.cc:52] failed call to cuInit",
            "W0000 00:00:1.0    1 port.cc:153] oneDNN custom operations are on. (a warning)",
            "Traceback (most recent call last):", "x " + _ABSL]
    with run._stderr_without(run._startup_noise()):
        for line in [_ABSL, _ONEDNN, kept[0], _NO_CUDA, *kept[1:]]:
            os.write(2, (line + "\n").encode())
    # "GPU will not be used" is kept on a machine with an NVIDIA device (it says why).
    if list(Path("/dev").glob("nvidia*")):
        kept.insert(1, _NO_CUDA)
    assert capfd.readouterr().err == "".join(line + "\n" for line in kept)
    # Asking for TensorFlow's INFO logs keeps everything.
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert run._startup_noise() is None


def test_tensorflows_retracing_warning_is_dropped_and_other_warnings_are_kept():
    import logging

    run._quiet_framework_import()
    logger = logging.getLogger("tensorflow")
    assert logger.filters.count(run.RETRACING_FILTER) == 1
    run._quiet_framework_import()  # once only
    assert logger.filters.count(run.RETRACING_FILTER) == 1

    def record(message):
        return logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, message, None, None)

    assert not logger.filter(record("5 out of the last 5 calls to <function f> triggered "
                                    "tf.function retracing. Tracing is expensive ..."))
    assert logger.filter(record("Gradients do not exist for variables ['w']"))


def test_a_new_process_prints_no_start_up_noise():
    # A configuration error after Keras and keras-hub (so TensorFlow) are imported: the
    # error is all that stderr holds.
    command = [sys.executable, "-m", "tools.run", "--gin", EXPERIMENT, "--bind",
               "IMAGE_SIZ = 32", "--dry_run"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("error: --bind 'IMAGE_SIZ = 32': no loaded gin file uses the macro "
                           "IMAGE_SIZ, so this binding would change nothing; did you mean "
                           "IMAGE_SIZE?\n")


def test_only_process_0_of_a_data_parallel_run_writes_files(monkeypatch):
    for name in ("RANK", "KERAS_DISTRIBUTION_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert not run.secondary_process()
    monkeypatch.setenv("RANK", "0")  # torchrun's process 0
    assert not run.secondary_process()
    monkeypatch.setenv("RANK", "1")
    assert run.secondary_process()
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "3")  # JAX multi-host
    assert run.secondary_process()


def test_another_encoder_set_resumes_the_evaluation(tmp_path, capsys):
    """A configuration that differs only in CHECKPOINTS is the same evaluation of other
    encoders: the stored configuration is replaced and a finished run runs again (its
    per-encoder results are reused by the evaluation); any other difference is refused."""
    base = "lovt.evaluate.seeds = 3\nCHECKPOINTS = \\\n    {'A': 'runs/a',\n     'B': 'runs/b'}\nX = 1\n"
    moved = base.replace("runs/b", "runs/b2").replace("'B'", "'C'")
    assert run._without_macros(base, ("CHECKPOINTS",)) == "lovt.evaluate.seeds = 3\nX = 1"
    out = tmp_path / "eval"
    assert run.prepare_output_dir(out, base, overwrite=False) == run.NEW_RUN
    assert run.prepare_output_dir(out, base, overwrite=False) == run.RESUME
    (out / "run_info.json").write_text(json.dumps(
        {"backend": keras.backend.backend(), "finished": "yesterday"}))
    assert run._check_previous_run(out)  # finished, same encoders: nothing to do
    capsys.readouterr()
    assert run.prepare_output_dir(out, moved, overwrite=False) == run.NEW_ENCODERS
    assert "another set of encoders" in capsys.readouterr().out
    assert (out / "config.gin").read_text() == moved
    assert not run._check_previous_run(out, finished_is_done=False)
    with pytest.raises(run.ConfigError, match="line 5: 'X = 1' is now 'X = 2'"):
        run.prepare_output_dir(out, moved.replace("X = 1", "X = 2"), overwrite=False)


def test_cpus_are_parsed_and_size_every_threads_pool():
    assert run.parse_cpus("0,1") == [0, 1]
    assert run.parse_cpus("2-3") == [2, 3]
    assert run.parse_cpus("0-1,4, 3") == [0, 1, 3, 4]
    for bad in ("", "a", "1-x", "-1"):
        with pytest.raises(run.ConfigError, match="CPU numbers"):
            run.parse_cpus(bad)
    assert run.thread_environment(3) == {
        "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3",
        "TF_NUM_INTRAOP_THREADS": "3", "TF_NUM_INTEROP_THREADS": "3"}
    # Keras is imported in this process: its pools are made, so --cpus is refused.
    with pytest.raises(run.ConfigError, match="already imported"):
        run.pin_cpus(str(min(os.sched_getaffinity(0))))


KEEP_FREED_MEMORY = """
import ctypes, resource
from tools import run
tuned = run.keep_freed_memory()
import tensorflow as tf
x = tf.ones((1024, 1024))  # 4 MiB
print("bfc", tf.config.experimental.get_memory_info("CPU:0")["current"] >= 4 << 20)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = libc.malloc(16 << 20)
    ctypes.memset(buffer, 1, 16 << 20)
    libc.free(buffer)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print("malloc", tuned, sum(faults[1:]))
"""


def test_a_new_process_keeps_freed_memory():
    """keep_freed_memory, run before TensorFlow is imported: its CPU tensors come from
    the BFC allocator (the one CPU allocator that counts its bytes: a 4 MiB tensor is
    read back), and with glibc a freed 16 MiB buffer serves the next ones without a page
    fault (glibc's defaults map them anew: 4093 faults for the four, measured on Debian's
    glibc 2.36); the user's own settings win."""
    done = subprocess.run([sys.executable, "-c", KEEP_FREED_MEMORY], cwd=run.REPO_ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines()
                 if line.startswith(("bfc ", "malloc ")))
    assert lines["bfc"] == "True"
    tuned, faults = lines["malloc"].split()
    if tuned == "True":
        assert int(faults) < 100
    else:
        assert platform.libc_ver()[0] != "glibc"
    # The user's own settings are kept.
    environment = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "false",
                   "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}
    code = ("import os; from tools import run; "
            "print(run.keep_freed_memory(), os.environ['TF_CPU_ALLOCATOR_USE_BFC'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=run.REPO_ROOT,
                          capture_output=True, text=True, timeout=60, env=environment)
    assert done.stdout.split() == ["False", "false"], done.stderr


def test_main_keeps_freed_memory_before_reading_the_configuration(monkeypatch, capsys):
    """Every tools.run process (and so every run of a study) calls keep_freed_memory,
    before the gin files are read: also a run whose file is missing."""
    calls = []
    monkeypatch.setattr(run, "keep_freed_memory", lambda: calls.append("kept"))
    assert run.main(["--gin", "experiments/nope.gin"]) == 2
    assert "no such gin file" in capsys.readouterr().err
    assert calls == ["kept"]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_cpus_flag_pins_a_new_process_before_its_framework_is_imported(capsys):
    """A process pinned with --cpus runs on those CPUs only, with the thread pools sized
    to them (PyTorch's intra-op threads read back; XLA:CPU and TensorFlow size theirs
    from the affinity and the environment set here); a CPU it may not use is named."""
    cpu = sorted(os.sched_getaffinity(0))[-1]
    code = (
        "import os, sys; from tools import run; run.pin_cpus(sys.argv[1]); import keras; "
        "b = keras.backend.backend(); "
        "t = __import__('torch').get_num_threads() if b == 'torch' else None; "
        "x = keras.ops.sum(keras.ops.ones((64, 64)) @ keras.ops.ones((64, 64))); "
        "print(sorted(os.sched_getaffinity(0)), os.environ['TF_NUM_INTRAOP_THREADS'], t, "
        "float(x))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(cpu)], cwd=run.REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    affinity, threads, torch_threads, total = done.stdout.split()[-4:]
    assert affinity == f"[{cpu}]" and threads == "1" and total == "262144.0"
    if keras.backend.backend() == "torch":
        assert torch_threads == "1"
    outside = max(os.sched_getaffinity(0)) + 1
    assert run.main(["--gin", "gin/debug/tiny.gin", "--cpus", str(outside)]) == 2
    assert f"CPU(s) [{outside}] are not available to this process" in capsys.readouterr().err
