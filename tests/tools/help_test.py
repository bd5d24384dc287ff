"""Every program's --help is fast: it imports no framework (so it prints none of
TensorFlow's start-up lines either)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The modules run as `python -m tools.NAME` (the prepare_* modules are subcommands of
# tools.prepare).
PROGRAMS = sorted(p.stem for p in (REPO / "tools").glob("*.py")
                  if 'if __name__ == "__main__":' in p.read_text())
FRAMEWORKS = ("keras", "tensorflow", "jax", "torch")


def test_the_programs_are_found():
    assert {"run", "prepare", "bench_train_step", "bench_nms", "bench_pipeline"} <= set(PROGRAMS)


@pytest.mark.parametrize("program", PROGRAMS)
def test_help_imports_no_framework(program):
    code = ("import runpy, sys\n"
            f"sys.argv = ['{program}', '--help']\n"
            "try:\n"
            f"    runpy.run_module('tools.{program}', run_name='__main__')\n"
            "except SystemExit as exit_:\n"
            "    assert exit_.code in (0, None), exit_.code\n"
            f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert "usage:" in done.stdout and done.stderr == ""
