# Two commands set everything up on a fresh machine: `make serve` and `make test` (each creates .venv first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
MODEL ?= ae
DATA ?= ../shared/data
# Python reads and writes UTF-8 whatever the machine's locale (CI machines may run with an ASCII one).
export PYTHONUTF8 := 1

.PHONY: venv test serve weights orthanc chromium web bench clean-venv

$(INSTALLED): requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(INSTALLED)

venv: $(INSTALLED)

test: $(INSTALLED) orthanc chromium
	$(PY) -m pytest -q

# The DICOMweb test runs a real Orthanc (Debian packages); installed once, skipped where apt-get is not usable.
orthanc:
	@command -v Orthanc >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb; \
	  else echo "Orthanc is not installed and apt-get is not usable here: the DICOMweb test will be skipped"; fi; }

# The web viewer's browser test drives Debian's chromium (no browser download); the viewer renders off screen
# through EGL (Mesa). Installed once, skipped where apt-get is not usable.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium libegl1 libegl-mesa0 \
	      libgl1-mesa-dri; \
	  else echo "chromium is not installed and apt-get is not usable here: the web viewer test will be skipped"; fi; }

# The web viewer (trame-slicer) on 127.0.0.1:$(WEB_PORT), for the server at $(SERVER_URL).
WEB_PORT ?= 8080
SERVER_URL ?= http://127.0.0.1:8000
web: $(INSTALLED)
	cd MedAnomalySlicer && $(abspath $(PY)) -m MedAnomalyLib.web --server-url $(SERVER_URL) --port $(WEB_PORT)

bench: $(INSTALLED)
	$(PY) benchmarks/bench_model.py --model $(MODEL) --data $(DATA)

# The server: a datastore folder filled from sample_data/ (which stays untouched); it trains nothing and serves the
# shipped checkpoints of monailabel_app/zoo/ at once (models trained with POST /train go to MODEL_DIR and take
# precedence). `make weights` rebuilds the shipped checkpoints and their cards by their recipes (long on a CPU).
STUDIES ?= monailabel_app/studies
MODEL_DIR ?= monailabel_app/model
HOST ?= 127.0.0.1
PORT ?= 8000
SERVER_ENV := PATH="$(abspath $(VENV))/bin:$$PATH" MONAILABEL_PYEXE="$(abspath $(PY))" \
	MONAI_LABEL_AUTO_UPDATE_SCORING=false MONAI_LABEL_SESSIONS=false

weights: $(INSTALLED)
	$(PY) -m medanomaly zoo build $(ZOO_MODELS) --data $(DATA)

serve: $(INSTALLED)
	$(PY) monailabel_app/make_models.py --studies $(STUDIES)
	$(SERVER_ENV) monailabel start_server --app monailabel_app --studies $(STUDIES) \
		--host $(HOST) --port $(PORT) --conf model_dir $(abspath $(MODEL_DIR))

clean-venv:
	rm -rf $(VENV)
