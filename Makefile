# make demo: environment + build + the main job.  make test: environment + build + every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Tests build the CUDA kernels (when nvcc is present) for one architecture, plus the emulated
# kernels that run them on the CPU.
export TORCH_CUDA_ARCH_LIST ?= 9.0
export TETRIS_EMULATION ?= 1
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: venv build test demo wheel bench clean

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

build: venv
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest -q tests

demo: build
	$(PY) -m tetris_ext.demo

# Release wheel: no emulation, the GPU architectures users run.
wheel: venv
	TETRIS_EMULATION=0 TORCH_CUDA_ARCH_LIST="8.0;9.0;10.0+PTX" \
	  $(PY) -m pip wheel --no-build-isolation --no-deps -w dist .

clean:
	rm -rf build dist python/tetris_ext/_C*.so
