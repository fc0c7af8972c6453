# Two commands on a fresh Debian machine:
#   make run    set up .venv and start the node on embedded defaults (SQLite queue, demo models)
#   make test   install the Debian peers the tests talk to, set up .venv, run the tests
PYTHON ?= python3
VENV ?= .venv
APT_PACKAGES = orthanc orthanc-dicomweb dcmtk dicom3tools redis-server libfuse2 fuse3 chromium nodejs
DATA_DIR ?= data

.PHONY: run test setup system-deps bench clean viewer-deps

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
	@# npm comes with NodeSource's nodejs; Debian's nodejs needs its npm package
	@command -v npm >/dev/null || { sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends npm; }

run: $(VENV)/.installed
	$(VENV)/bin/neuronova serve --data-dir $(DATA_DIR)

test: system-deps $(VENV)/.installed viewer-deps
	$(VENV)/bin/python -m pytest

bench: $(VENV)/.installed system-deps
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/queue_latency.py
	$(VENV)/bin/python bench/inference.py
	$(VENV)/bin/python bench/xai.py
	$(VENV)/bin/python bench/predict.py
	$(VENV)/bin/python bench/e2e.py

# OHIF v3's prebuilt viewer and playwright-core for tests/viewer, fetched once into a git-ignored cache
VIEWER_CACHE ?= .cache/viewer
OHIF_VERSION ?= 3.13.2
viewer-deps: $(VIEWER_CACHE)/ohif/package/dist/index.html $(VIEWER_CACHE)/node_modules/playwright-core/package.json

$(VIEWER_CACHE)/ohif/package/dist/index.html:
	mkdir -p $(VIEWER_CACHE)/ohif
	cd $(VIEWER_CACHE) && npm pack --silent @ohif/app@$(OHIF_VERSION)
	tar -xzf $(VIEWER_CACHE)/ohif-app-$(OHIF_VERSION).tgz -C $(VIEWER_CACHE)/ohif
	rm -f $(VIEWER_CACHE)/ohif-app-$(OHIF_VERSION).tgz

$(VIEWER_CACHE)/node_modules/playwright-core/package.json:
	mkdir -p $(VIEWER_CACHE)
	npm install --silent --no-save --no-package-lock --prefix $(VIEWER_CACHE) playwright-core@1.65.2

clean:
	rm -rf $(VENV) $(DATA_DIR)
