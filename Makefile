# Two entry points for a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test lint data clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

# The default data set: Debian's dataset-fashion-mnist (installed when missing and apt-get exists).
data:
	@if [ ! -f $(FMNIST) ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST not found at $(FMNIST) and apt-get is unavailable: pass --data-dir (see README)"; fi; \
	fi

test: $(STAMP) data
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
