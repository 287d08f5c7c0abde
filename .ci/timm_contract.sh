#!/usr/bin/env bash
# timm's own per-model tests (tests/test_models.py of the installed timm's sdist) against mixerlab's
# models; how the file is pointed at our models: tests_timm/conftest.py.
#   .ci/timm_contract.sh [pytest args]     e.g. -x, -k u_swin_micro, --lf
# Needs the venv (make test / make timm-contract create it) and, on the first run only, PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CACHE=.cache/timm-sdist          # git-ignored; holds timm-<version>.tar.gz
DEST=tests_timm/upstream         # git-ignored; the extracted test file, next to our conftest's directory

ver=$("$PY" -c 'import importlib.metadata as m; print(m.version("timm"))')
sdist=$CACHE/timm-$ver.tar.gz
if [ ! -f "$sdist" ]; then
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/.download.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "timm-contract: fetching the timm $ver sdist from PyPI into $CACHE"
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "timm==$ver" -d "$tmp"
  mv "$tmp"/timm-*.tar.gz "$sdist"   # rename into place only when complete: a killed download leaves no cache
  for f in "$CACHE"/timm-*.tar.gz; do [ "$f" = "$sdist" ] || rm -f "$f"; done   # drop other versions
fi

# Re-extract every run (milliseconds) so the file always matches the cached sdist. Only
# test_models.py: it imports nothing from timm's tests/ (its conftest.py only has a CLI fixture,
# and its __init__.py would make pytest import the file as a package module).
rm -rf "$DEST" && mkdir -p "$DEST"
tar -xzf "$sdist" -C "$DEST" --strip-components=2 "timm-$ver/tests/test_models.py"

# --tb=short keeps the CI log readable (FX trace errors are long); a later --tb=... in "$@" wins.
# GITHUB_ACTIONS makes test_models.py drop whole tests (sized for timm's ~1,500 models on small
# runners); unset it so the contract is the same on every machine.
rc=0
env -u GITHUB_ACTIONS "$PY" -m pytest "$DEST/test_models.py" -q --tb=short "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "timm-contract: ERROR: no tests collected - the harness is broken (or your -k/-m matched nothing):" \
       "see MODEL_PATTERNS and the list_models wrapper in tests_timm/conftest.py" >&2
fi
exit "$rc"
