"""timm's model contract, run against mixerlab's models.

Researchers use mixerlab through timm (``import mixerlab`` registers every model in timm's
registry), so our models must pass timm's own per-model tests: ``tests/test_models.py`` from the
source distribution of the *installed* timm version. That file is not committed here:

    .ci/timm_contract.sh [pytest args]      # or: make timm-contract

fetches ``timm-<version>.tar.gz`` with pip once into ``.cache/timm-sdist/`` (git-ignored, reused
while the installed version matches), extracts ``tests/test_models.py`` unchanged into
``tests_timm/upstream/`` (git-ignored, re-extracted every run) and runs pytest on it. This
conftest applies to it because it sits in a parent directory. Everything here is a hook; the
downloaded file is not patched.

How the file is pointed at our models:

* ``test_models.py`` builds its parametrize lists at import with ``timm.list_models(...)`` /
  ``timm.list_pretrained(...)``. Before it is imported, both are replaced by wrappers that call the
  real function with the *same* filters and keep only the models selected below (``MODEL_PATTERNS``,
  matched against mixerlab's own registry, so new models that fit a pattern are picked up).
* Routing: timm's ``NON_STD_FILTERS`` (``'vit_*'``, ...) send a model to the non-standard tests
  (``test_model_default_cfgs_non_std``, no ``features_only``) instead of the standard ones. Our
  ViT-style models (isotropic: one stage, token output - vit_p_1gf, vit_c_1gf, vit_small_ml) match
  ``'vit_*'``, so the file's own filters route them. At collection we check that every isotropic
  model is routed non-standard and every hierarchical one standard, and stop loudly otherwise.
* Two ``list_models`` arguments are adapted for our models (see ``_our_list_models``):
  ``module=`` (the forward_intermediates family, named by timm module) gets our timm module added,
  and ``name_matches_cfg=True`` is ignored for our models.
* Deselected, with the reason in ``DESELECT_REASONS`` (printed at the end of the run): the
  pretrained-weight / hub tests, the TorchScript tests, and every test that is not parametrized over one of our models
  (timm's regression tests for named timm architectures such as ``gcvit_xxtiny``).
"""

from __future__ import annotations

import fnmatch
import os

import pytest
import timm

import mixerlab

# Models under contract: mixerlab-registered names matching any pattern.
MODEL_PATTERNS = ["u_*_micro", "vit_p_1gf", "vit_c_1gf", "*_ml", "dwnet_tiny", "*hybrid*micro"]
MODELS = sorted({n for p in MODEL_PATTERNS for n in mixerlab.list_models(p)})
# ViT-style = isotropic macro-architecture; these belong to timm's non-standard family.
VIT_STYLE = {n for n in MODELS if mixerlab.model_config(n).arch == "isotropic"}
# timm records the module an entry point was registered from ('zoo' for mixerlab.zoo).
OUR_TIMM_MODULES = sorted({m for m in timm.list_modules() if set(timm.list_models(module=m)) & set(MODELS)})

# Deselected tests, by reason. Keep this short: everything parametrized over our models runs.
PRETRAINED_TESTS = {"test_model_inference", "test_model_load_pretrained", "test_model_features_pretrained"}
DESELECT_REASONS = {
    "torchscript": "torch.jit.script: TorchScript is deprecated in PyTorch 2.x (torch.compile / torch.export "
                   "replace it); mixerlab's mixers are written for eager, FX, compile and export, not for "
                   "TorchScript's Python subset",
    "pretrained": "loads pretrained weights from the HF hub: mixerlab ships no weights and CI has no network",
    "not_ours": "not parametrized over our models: timm's regression tests for named timm architectures "
                "(gcvit_xxtiny, swin/naflexvit/relpos families, ...) or a list that none of ours matches",
}

_real_list_models = timm.list_models
_real_list_pretrained = timm.list_pretrained
_calls = 0


def _base(name: str) -> str:
    return name.split(".")[0]  # include_tags=True lists 'model.tag' names


def _our_list_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False,
                     include_tags=None):
    """timm.list_models with the same filters, restricted to ``MODELS``."""
    global _calls
    _calls += 1
    if module:
        # module=FEAT_INTER_FILTERS names the timm modules whose models implement forward_intermediates()
        # and the FeatureGetterNet features_only wrapper. Every MixerNet implements both, so our module
        # is part of that family; the list can't name it because it is timm's.
        module = ([module] if isinstance(module, str) else list(module)) + OUR_TIMM_MODULES
    # name_matches_cfg=True keeps only models with a registered pretrained cfg (timm uses it to drop
    # aliases). Honouring it would silently drop each of our models that has no cfg from the backward,
    # torchscript and FX tests; ignoring it makes a missing cfg fail in the test that needs it.
    names = _real_list_models(filter=filter, module=module, pretrained=pretrained, exclude_filters=exclude_filters,
                              include_tags=include_tags)
    return [n for n in names if _base(n) in MODELS]


def _our_list_pretrained(filter="", exclude_filters=""):
    return _our_list_models(filter=filter, pretrained=True, exclude_filters=exclude_filters, include_tags=True)


# Must happen at conftest import: test_models.py does `from timm import list_models, list_pretrained`
# and calls them in its decorators, i.e. while it is imported during collection (after this file).
timm.list_models = _our_list_models
timm.list_pretrained = _our_list_pretrained

_deselected: dict[str, int] = {}


def pytest_configure(config):
    if not MODELS:
        raise pytest.UsageError(f"timm contract: no mixerlab model matches {MODEL_PATTERNS}")
    # The markers test_models.py uses (declared in timm's pyproject.toml, which we don't extract).
    for marker in ("base", "forward", "backward", "cfg", "cfg_nonstd", "torchscript", "features",
                   "fxforward", "fxbackward"):
        config.addinivalue_line("markers", f"{marker}: timm test_models.py marker")


def _model_of(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    name = callspec.params.get("model_name") if callspec else None
    return _base(name) if isinstance(name, str) else None


def pytest_collection_modifyitems(session, config, items):
    # Restore timm's functions: the parametrize lists are built, and mixerlab itself may call them.
    timm.list_models = _real_list_models
    timm.list_pretrained = _real_list_pretrained
    modules = {item.module for item in items if item.module.__name__.endswith("test_models")}
    if _calls == 0 or not modules:
        raise pytest.UsageError("timm contract: test_models.py was not collected or never called timm.list_models "
                                "at import; the harness no longer matches this timm version")
    _check_routing(modules.pop())

    keep, dropped = [], []
    for item in items:
        reason = ("pretrained" if item.originalname in PRETRAINED_TESTS
                  else "not_ours" if _model_of(item) not in MODELS
                  else "torchscript" if "torchscript" in item.originalname else None)
        if reason:
            _deselected[reason] = _deselected.get(reason, 0) + 1
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def _check_routing(test_models):
    """Isotropic (ViT-style) models must take timm's non-standard path, hierarchical ones the standard path."""
    misrouted = [n for n in MODELS
                 if any(fnmatch.fnmatch(n, f) for f in test_models.NON_STD_FILTERS) != (n in VIT_STYLE)]
    if misrouted:
        raise pytest.UsageError(
            f"timm contract: {misrouted} would be routed wrongly by test_models.NON_STD_FILTERS (ViT-style / isotropic "
            "models must match it, hierarchical ones must not): rename the model or extend the routing in "
            f"{os.path.relpath(__file__)}")


def pytest_terminal_summary(terminalreporter):
    # Here rather than in the header, which -q hides.
    terminalreporter.write_line(
        f"timm contract: timm {timm.__version__} test_models.py on {len(MODELS)} mixerlab models (timm module "
        f"{OUR_TIMM_MODULES}): {', '.join(MODELS)}; ViT-style, non-standard tests: {', '.join(sorted(VIT_STYLE))}")
    for reason, count in _deselected.items():
        terminalreporter.write_line(f"timm contract: deselected {count} ({reason}): {DESELECT_REASONS[reason]}")
