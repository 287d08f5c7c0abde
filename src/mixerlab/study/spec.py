"""Study specs: a researcher's question written down (YAML), validated, and expanded into jobs with stable ids.

A spec (``configs/studies/*.yaml``)::

    name: tiny                                   # [a-z0-9_-]+
    description: what the study asks             # optional, shown in the report
    data: {name: fashion-mnist, img_size: 32, in_chans: 1, train_subset: 500, eval_subset: 500}
    recipe: {epochs: 1, batch_size: 64}          # TrainConfig fields; or a recipe file (relative to the
                                                 # spec's folder), `recipe: ../x.yaml`; or {base: ../x.yaml, epochs: 1}
    models:                                      # a list (one group, "models"), or group name -> list
      - u_convnext_micro                         # a registered name
      - {name: u_swin_micro, args: {attn_act: [softmax, relu]}, recipe: {lr: 1.0e-3}}
    seeds: [0]
    analyses: [complexity, erf]                  # per model: names, or {name: {arg: value}}
    mixer_analyses: [properties]                 # on mixers built alone: properties, dynconv
    stability: {models: [vit_p_1gf, vit_c_1gf], n: 8, epochs: 2}   # StabilitySpec fields (SPEC 8.7)
    convergence: {target_top1: 80}               # epochs to this accuracy, per group (SPEC 8.8)
    resources: {cpus: 1, gpus: 0}                # what one job asks of a Ray cluster
    profiles: {quick: {recipe: {epochs: 1}}}     # named partial specs, merged on top with --profile

**Grids.** A list of names in a model's ``name``, and a list value in its ``args``, expand into one run per
element (several lists: their product, in key order). An argument whose value is itself a list is written as a
list of lists: ``depths: [[2, 2, 6, 2]]``.

**Ids.** A training job's id is the hash of the resolved experiment: its :class:`TrainConfig` without run control,
with ``model`` / ``model_args`` replaced by the resolved model config, so two spellings of one model (``{}`` and
``{attn_act: softmax}`` on a softmax model) are one run, trained once and listed in every group that asks for it.
Analysis jobs hash their name, arguments and the run or model they measure. Ids never depend on the output
directory, the profile's name or the order of the spec.

**Profiles** are merged recursively: mappings merge key by key, any other value (a list included) replaces.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, is_int, stable_hash
from ..train.config import RUN_CONTROL, TrainConfig

TOP_KEYS = ("name", "description", "data", "recipe", "models", "seeds", "analyses", "mixer_analyses", "stability",
            "convergence", "resources", "profiles")
MODEL_KEYS = ("name", "args", "recipe")
# TrainConfig fields the study sets itself (from models, seeds, data and the runner), never a recipe.
STUDY_SET = ("model", "model_args", "seed", "data", *RUN_CONTROL)
# Analyses of one model: `model` ones measure the architecture (once per distinct model, on its first trained
# run, whose resolved config they read); `run` ones measure trained weights (once per run).
MODEL_ANALYSES = ("complexity", "bench")
RUN_ANALYSES = ("erf", "invariance")
MIXER_ANALYSES = ("properties", "dynconv")
# Arguments the study fills in itself, so a spec may not set them.
RESERVED_ARGS = {"model", "model_or_name", "data", "device", "weights", "figures"}
DEFAULT_GROUP = "models"


class SpecError(ConfigError):
    """A study spec that cannot run; the message names the key path, the value and what is allowed."""


def bad(path: str, value: Any, allowed: str) -> SpecError:
    return SpecError(f"{path}={value!r} is invalid: {allowed}")


@dataclass(frozen=True)
class Job:
    """One unit of work: a training run or one analysis. Plain data only (it crosses process boundaries).

    ``payload``: for ``train`` the TrainConfig as a dict (its ``run_dir`` filled in by the runner); for an
    analysis ``{"args": ..., "run": <train job id> | None, ...}``. ``after``: job ids that must complete first.
    ``exclusive``: a timing measurement, run alone so that nothing else shares the machine."""

    id: str
    kind: str  # train | analysis
    name: str  # "train" or the analysis name
    groups: tuple[str, ...]
    model: str | None
    model_args: dict[str, Any]
    seed: int | None
    payload: dict[str, Any]
    after: tuple[str, ...] = ()
    exclusive: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def label(self) -> str:
        if self.kind == "train":
            return run_label(self.model or "", self.model_args, self.groups, self.payload)
        return f"{self.name}: {model_label(self.model or self.name, self.model_args)}"


def arg_text(v: Any) -> str:
    """An argument as labels show it: a mixer spec by its name, anything else without spaces."""
    return str(v["name"]) if isinstance(v, dict) and "name" in v else str(v).replace(" ", "")


def model_label(model: str, model_args: dict[str, Any]) -> str:
    """How studies and reports name a model: ``u_swin_micro attn_act=relu`` (arguments sorted)."""
    return " ".join([model, *(f"{k}={arg_text(v)}" for k, v in sorted(model_args.items()))]).strip()


def run_label(model: str, model_args: dict[str, Any], groups: Any, config: dict[str, Any]) -> str:
    """:func:`model_label`; a stability-sweep run (its runs differ in the optimiser settings of ``config``, a
    TrainConfig dict) adds the optimiser, lr, wd and epochs."""
    text = model_label(model, model_args)
    if "stability" in groups and config:
        text += (f" {config.get('opt')} lr={config.get('lr', 0):.3g} wd={config.get('weight_decay', 0):.3g} "
                 f"{config.get('epochs')} ep")
    return text


@dataclass
class Study:
    """A validated spec and its expansion."""

    name: str
    description: str
    spec: dict[str, Any]  # the resolved spec (profile applied), as validated
    profile: str | None
    base: TrainConfig
    jobs: list[Job] = field(default_factory=list)
    stability: Any = None  # the StabilitySpec of the sweep, or None

    def job(self, job_id: str) -> Job:
        return next(j for j in self.jobs if j.id == job_id)

    @property
    def train_jobs(self) -> list[Job]:
        return [j for j in self.jobs if j.kind == "train"]


# ---- loading ---------------------------------------------------------------------------------------------------
def load_spec(path: str | Path, profile: str | None = None) -> Study:
    """Read, merge the profile, validate and expand the spec at ``path``; raises :class:`SpecError` before any
    work starts."""
    p = Path(path)
    if not p.is_file():
        raise bad("spec", str(path), "a study spec YAML file (see configs/studies/)")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"spec={str(path)!r} is invalid: not YAML ({e})") from e
    return build_study(raw, profile=profile, root=p.parent)


def build_study(raw: Any, profile: str | None = None, root: str | Path = ".") -> Study:
    """:func:`load_spec` for an already-parsed mapping; a relative recipe path resolves against ``root`` (the
    spec's folder)."""
    if not isinstance(raw, dict):
        raise bad("spec", type(raw).__name__, "a mapping with keys " + ", ".join(TOP_KEYS))
    _keys("", raw, TOP_KEYS)
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise bad("profiles", profiles, "a mapping of profile name -> partial spec (a mapping)")
    spec = {k: v for k, v in raw.items() if k != "profiles"}
    if profile is not None:
        if profile not in profiles:
            raise bad("profile", profile, f"allowed values are {sorted(profiles)} (the spec's profiles)")
        over = profiles[profile]
        _keys(f"profiles.{profile}.", over, [k for k in TOP_KEYS if k not in ("profiles", "name")])
        spec = merge(spec, over)
    return _expand(spec, profile, Path(root))


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge recursively, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _keys(prefix: str, d: dict[str, Any], allowed: Any) -> None:
    unknown = sorted(set(d) - set(allowed), key=str)
    if unknown:
        raise bad(f"{prefix}{unknown[0]}" if prefix else str(unknown[0]), d[unknown[0]],
                  f"unknown key; allowed keys{' under ' + prefix.rstrip('.') if prefix else ''} are {sorted(allowed)}")


# ---- validation and expansion ----------------------------------------------------------------------------------
def _expand(spec: dict[str, Any], profile: str | None, root: Path) -> Study:
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise bad("name", name, "a study name of lower-case letters, digits, '-' and '_'")
    description = spec.get("description") or ""
    if not isinstance(description, str):
        raise bad("description", description, "a string")
    base = _recipe(spec, root)
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(is_int(s) and s >= 0 for s in seeds) or len(
            set(seeds)) != len(seeds):
        raise bad("seeds", seeds, "a non-empty list of distinct integers >= 0")
    _resources(spec.get("resources") or {})

    jobs: dict[str, Job] = {}
    order: list[str] = []

    def add(job: Job) -> None:
        if job.id in jobs:  # the same experiment asked for twice: one job, listed in both groups
            old = jobs[job.id]
            jobs[job.id] = dataclasses.replace(old, groups=tuple(dict.fromkeys(old.groups + job.groups)))
        else:
            jobs[job.id] = job
            order.append(job.id)

    for group, entries in _groups(spec.get("models")).items():
        for i, entry in enumerate(entries):
            path = f"models[{i}]" if group == DEFAULT_GROUP and isinstance(spec["models"], list) else \
                f"models.{group}[{i}]"
            models, grid, recipe = _model_entry(path, entry)
            for model in models:
                for args in grid:
                    for seed in seeds:
                        add(train_job(_train_config(base, path, model, args, recipe, seed), (group,)))

    analyses = _analysis_list("analyses", spec.get("analyses") or [], MODEL_ANALYSES + RUN_ANALYSES)
    trained = [jobs[i] for i in order if jobs[i].kind == "train"]
    first_of: dict[str, Job] = {}
    for j in trained:  # an architecture's first run (by seed order) carries its architecture analyses
        first_of.setdefault(_arch_key(j), j)
    for aname, aargs in analyses:
        for j in (first_of.values() if aname in MODEL_ANALYSES else trained):
            add(analysis_job(aname, aargs, j))
    for aname, aargs in _analysis_list("mixer_analyses", spec.get("mixer_analyses") or [], MIXER_ANALYSES):
        add(Job(id="a-" + stable_hash({"analysis": aname, "args": aargs}), kind="analysis", name=aname,
                groups=("mixers",), model=None, model_args={}, seed=None, payload={"args": aargs, "run": None}))

    stability = _stability(spec.get("stability"), base)
    if stability is not None:
        from ..analysis.stability import stability_runs

        for cfg in stability_runs(stability):
            add(train_job(cfg, ("stability",)))
    convergence = spec.get("convergence")
    if convergence is not None:
        if not isinstance(convergence, dict):
            raise bad("convergence", convergence, "a mapping with key target_top1")
        _keys("convergence.", convergence, ("target_top1",))
        t = convergence.get("target_top1")
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 100):
            raise bad("convergence.target_top1", t, "a top-1 accuracy in (0, 100] (%), or null")
    if not order:
        raise bad("models", spec.get("models"), "at least one model (or a stability sweep or mixer analyses)")
    resolved = {**spec, "seeds": seeds}
    return Study(name=name, description=description.strip(), spec=resolved, profile=profile, base=base,
                 jobs=[jobs[i] for i in order], stability=stability)


def _recipe(spec: dict[str, Any], root: Path) -> TrainConfig:
    recipe = spec.get("recipe") or {}
    path: str | None = None
    if isinstance(recipe, str):
        path, recipe = recipe, {}
    if not isinstance(recipe, dict):
        raise bad("recipe", recipe, "a mapping of TrainConfig fields, a recipe YAML path, or {base: path, ...}")
    recipe = dict(recipe)
    path = recipe.pop("base", path)
    if path is not None:
        found = root / path  # a relative path is relative to the spec's folder, wherever the command runs
        if not found.is_file():
            raise bad("recipe.base" if isinstance(spec.get("recipe"), dict) else "recipe", path,
                      f"a recipe YAML file (relative paths start at the spec's folder, {root})")
        path = str(found)
    for k in STUDY_SET:
        if k in recipe:
            where = {"model": "models", "model_args": "models[i].args", "seed": "seeds", "data": "data"}
            raise bad(f"recipe.{k}", recipe[k], f"set by the study ({where.get(k, 'the runner')}), not the recipe")
    data = spec.get("data") or {}
    if not isinstance(data, dict):
        raise bad("data", data, "a mapping of DataConfig fields")
    overrides = {**recipe, **{f"data.{k}": v for k, v in data.items()}}
    try:
        cfg = TrainConfig.from_sources(path, overrides)
    except (ConfigError, TypeError) as e:  # TypeError: a field of the wrong kind reaching a dataclass
        raise SpecError(f"recipe / data: {e}") from e
    return cfg


def _resources(r: Any) -> None:
    if not isinstance(r, dict):
        raise bad("resources", r, "a mapping with keys cpus, gpus")
    _keys("resources.", r, ("cpus", "gpus"))
    for k in ("cpus", "gpus"):
        v = r.get(k, 0 if k == "gpus" else 1)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "cpus" and v <= 0):
            raise bad(f"resources.{k}", v, "a number > 0" if k == "cpus" else "a number >= 0")


def resources(study: Study) -> dict[str, float]:
    r = study.spec.get("resources") or {}
    return {"cpus": r.get("cpus", 1), "gpus": r.get("gpus", 0)}


def _groups(models: Any) -> dict[str, list[Any]]:
    if models is None:
        return {}
    if isinstance(models, list):
        return {DEFAULT_GROUP: models}
    if isinstance(models, dict) and all(isinstance(v, list) for v in models.values()):
        for g in models:
            if not isinstance(g, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", g):
                raise bad(f"models.{g}", g, "a group name of letters, digits, '-' and '_'")
        return models
    raise bad("models", models, "a list of models, or a mapping of group name -> list of models")


def _model_entry(path: str, entry: Any) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    from ..zoo import list_models

    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise bad(path, entry, "a registered model name or {name, args, recipe}")
    _keys(path + ".", entry, MODEL_KEYS)
    names = entry.get("name")
    names = names if isinstance(names, list) and names else [names]  # a list of names is a grid too
    for name in names:
        if name not in list_models():
            raise bad(f"{path}.name", name, f"a registered model: one of {list_models()}")
    args = entry.get("args") or {}
    if not isinstance(args, dict):
        raise bad(f"{path}.args", args, "a mapping of model overrides or mixer arguments")
    recipe = entry.get("recipe") or {}
    if not isinstance(recipe, dict):
        raise bad(f"{path}.recipe", recipe, "a mapping of TrainConfig fields for this model")
    for k in recipe:
        if k in STUDY_SET or k not in _train_fields():
            raise bad(f"{path}.recipe.{k}", recipe[k], "a TrainConfig field other than model, model_args, seed, "
                      "data and run control")
    for k, v in args.items():
        if isinstance(v, list) and not v:
            raise bad(f"{path}.args.{k}", v, "a non-empty list (a grid) or a single value")
    keys = list(args)
    values = [v if isinstance(v, list) else [v] for v in args.values()]
    return names, [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)], recipe


def _train_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def _train_config(base: TrainConfig, path: str, model: str, args: dict[str, Any], recipe: dict[str, Any],
                  seed: int) -> TrainConfig:
    cfg = dataclasses.replace(base, model=model, model_args=args, seed=seed, **recipe)
    try:
        cfg.validate()
    except (ConfigError, TypeError) as e:
        hint = (" (a list in args expands into a grid; write a list-valued argument as a list of lists)"
                if any(isinstance(v, (int, float, str)) for v in args.values()) else "")
        raise SpecError(f"{path} with args {args}: {e}{hint}") from e
    return cfg


def experiment(cfg: TrainConfig) -> dict[str, Any]:
    """What a training job's id hashes: the TrainConfig without run control, the model as its resolved config."""
    from ..zoo import model_config

    d = {k: v for k, v in cfg.to_dict().items() if k not in (*RUN_CONTROL, "model", "model_args")}
    mc = model_config(cfg.model, **cfg.model_overrides(num_classes=0)).to_dict()
    mc["mixer"] = [_with_defaults(m) for m in mc["mixer"]] if isinstance(mc["mixer"], list) else \
        _with_defaults(mc["mixer"])
    d["model_config"] = mc
    return d


def _with_defaults(mixer: dict[str, Any]) -> dict[str, Any]:
    """A mixer config with every omitted keyword at its default: ``{}`` and ``{attn_act: softmax}`` hash equal."""
    from ..mixers import mixer_class

    params = inspect.signature(mixer_class(mixer["name"]).__init__).parameters.values()
    defaults = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
    return {**mixer, "args": {**defaults, **mixer["args"]}}


def train_job(cfg: TrainConfig, groups: tuple[str, ...]) -> Job:
    payload = {**cfg.to_dict(), "run_dir": None, "progress": False, "resume": False, "overwrite": False}
    return Job(id="r-" + stable_hash(experiment(cfg)), kind="train", name="train", groups=groups, model=cfg.model,
               model_args=dict(cfg.model_args), seed=cfg.seed, payload=payload)


def _arch_key(job: Job) -> str:
    """Jobs of one architecture at one input geometry (any seed, any recipe): one complexity / bench each."""
    d = job.payload["data"]
    return stable_hash({"model": job.model, "args": job.model_args, "img": d["img_size"], "chans": d["in_chans"]})


def analysis_job(name: str, args: dict[str, Any], run: Job) -> Job:
    return Job(id="a-" + stable_hash({"analysis": name, "args": args, "run": run.id}), kind="analysis", name=name,
               groups=run.groups, model=run.model, model_args=run.model_args,
               seed=None if name in MODEL_ANALYSES else run.seed, payload={"args": args, "run": run.id},
               after=(run.id,), exclusive=name == "bench")


def analysis_function(name: str) -> Callable[..., Any]:
    """The function behind an analysis name (imported on first use: the spec never runs it)."""
    if name == "complexity":
        from ..complexity import complexity

        return complexity
    from .. import analysis

    return {"bench": analysis.benchmark, "erf": analysis.erf.erf, "invariance": analysis.invariance.invariance,
            "properties": analysis.properties.properties, "dynconv": analysis.dynconv.dynconv}[name]


def _analysis_list(path: str, items: Any, allowed: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(items, list):
        raise bad(path, items, f"a list of analysis names from {list(allowed)} or {{name: {{arg: value}}}}")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            name, args = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            (name, args), = item.items()
            args = args or {}
        else:
            raise bad(f"{path}[{i}]", item, "an analysis name or a one-key mapping {name: {arg: value}}")
        if name not in allowed:
            raise bad(f"{path}[{i}]", name, f"allowed values are {list(allowed)}")
        if not isinstance(args, dict):
            raise bad(f"{path}[{i}].{name}", args, "a mapping of the analysis's keyword arguments")
        params = list(inspect.signature(analysis_function(name)).parameters.values())
        # The first parameter of a model analysis is the model, which the study supplies; a mixer analysis's is the
        # list of mixers to probe, which the spec may set.
        first = 0 if name in MIXER_ANALYSES else 1
        accepted = sorted(p.name for p in params[first:] if p.name not in RESERVED_ARGS
                          and p.kind is not p.VAR_KEYWORD)
        for k in args:
            if k not in accepted:
                raise bad(f"{path}[{i}].{name}.{k}", args[k], f"allowed arguments of {name} are {accepted}")
        if any(n == name for n, _ in out):
            raise bad(f"{path}[{i}]", name, "each analysis once per list")
        out.append((name, dict(args)))
    return out


def _stability(raw: Any, base: TrainConfig) -> Any:
    if raw is None:
        return None
    from ..analysis.stability import StabilitySpec

    if not isinstance(raw, dict):
        raise bad("stability", raw, "a mapping of StabilitySpec fields")
    allowed = [f.name for f in dataclasses.fields(StabilitySpec) if f.name not in ("base", "runs_dir")]
    _keys("stability.", raw, allowed)
    spec = StabilitySpec(**raw, base=dataclasses.replace(base), runs_dir="runs")
    try:
        spec.validate()
    except ConfigError as e:
        raise SpecError(f"stability.{e}") from e
    return spec

