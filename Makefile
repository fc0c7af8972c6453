# Two commands on a fresh Debian machine:
#   make run    set up .venv and start the node on embedded defaults (SQLite queue, demo models)
#   make test   install the Debian peers the tests talk to, set up .venv, run the tests
PYTHON ?= python3
VENV ?= .venv
APT_PACKAGES = orthanc orthanc-dicomweb dcmtk dicom3tools redis-server libfuse2 fuse3 chromium nodejs
DATA_DIR ?= data

.PHONY: run test setup system-deps bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  echo "installing:$$missing"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

run: $(VENV)/.installed
	$(VENV)/bin/neuronova serve --data-dir $(DATA_DIR)

test: system-deps $(VENV)/.installed
	$(VENV)/bin/python -m pytest

bench: $(VENV)/.installed system-deps
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/queue_latency.py
	$(VENV)/bin/python bench/inference.py
	$(VENV)/bin/python bench/xai.py
	$(VENV)/bin/python bench/predict.py
	$(VENV)/bin/python bench/e2e.py

clean:
	rm -rf $(VENV) $(DATA_DIR)
