# Two commands set everything up on a fresh machine: `make serve` and `make test` (each creates .venv first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
MODEL ?= ae
DATA ?= ../shared/data

.PHONY: venv test serve models bench clean-venv

$(INSTALLED): requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(INSTALLED)

venv: $(INSTALLED)

test: $(INSTALLED)
	$(PY) -m pytest -q

bench: $(INSTALLED)
	$(PY) benchmarks/bench_model.py --model $(MODEL) --data $(DATA)

serve: $(INSTALLED)
	@echo "The MONAI Label server app is not in this build yet."; exit 1

clean-venv:
	rm -rf $(VENV)
