# Two entry points for a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
# Debian packages installed when missing (and apt-get exists): $(call apt,PATH,PACKAGE,WHY)
define apt
	@if [ ! -e $(1) ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(2); \
	  else echo "$(1) not found and apt-get is unavailable: $(3)"; fi; \
	fi
endef

.PHONY: demo test lint data browser clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,ray]"
	touch $(STAMP)

# The default data set: Debian's dataset-fashion-mnist.
data:
	$(call apt,$(FMNIST),dataset-fashion-mnist,pass --data-dir (see README))

# Headless Chromium for the report's browser test (skipped without it, so a failed install does not stop the tests).
browser:
	$(call apt,$(CHROMIUM),chromium,the report's browser test will be skipped) || \
	  echo "installing chromium failed: the report's browser test will be skipped"

test: $(STAMP) data browser
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory timm-contract

# timm's own tests/test_models.py (from the installed timm's sdist, cached in .cache/timm-sdist/)
# against our registered models; see tests_timm/conftest.py. Extra pytest args: make timm-contract ARGS='-x'
.PHONY: timm-contract
timm-contract: $(STAMP)
	PY=$(BIN)/python .ci/timm_contract.sh $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

demo: $(STAMP) data
	$(BIN)/mixerlab demo

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
