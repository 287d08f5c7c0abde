"""From the study store to plain rows: the study's data read once, and the side-by-side table of models.

Everything here reads records only (the store, opened read-only); nothing builds a model or trains. A row of the
model table is one *experiment* regardless of seed: the runs with the same model, model arguments and recipe
(the TrainConfig without its seed and run control). Stability-sweep runs are not rows (the sweep has its own
section). Per row:

* ``top1_mean`` / ``top1_std``: the mean and the sample standard deviation (n - 1 in the denominator; None for
  one seed) of the final eval top-1 (%, the last epoch) over the row's *completed* runs; ``n_seeds`` of them.
* ``params_m`` / ``gmacs``: from the ``complexity`` record of the architecture (10^6 parameters; 10^9
  multiply-accumulates per image at the study's input size), else the run record's parameter count.
* ``infer_ips`` / ``train_ips``: images per second of the ``bench`` record (inference / one training step:
  forward, loss, backward, optimiser), at the settings :func:`bench_settings` states.
* ``epochs_to_target``: the mean over the seeds that reach it of the first epoch (1-based: epochs trained) whose
  eval top-1 is at or above the target; ``reached`` of ``n_seeds`` reach it. From the ``convergence`` records when
  they hold the run, else from the epochs table at the spec's ``convergence.target_top1``.
* ``erf50`` / ``erf99``: the area ratio (fraction of the input image) of the smallest centred square holding 50% /
  99% of the effective receptive field of the *last* stage (RepLKNet / STM-Eval method), mean over seeds.
* ``cons_translation`` / ``cons_rotation``: the invariance record's consistency (% of predictions equal to the one
  on the untransformed image), averaged over its non-zero shifts (8 directions each) / non-zero angles; mean over
  seeds. The zero setting is left out: it is 100% by definition.
* ``support_radius``, ``shared_positions``, ``shared_channels``, ``dynamic``: the ``properties`` row of the model's
  mixer (one value per distinct stage mixer for a hybrid), see :func:`match_property`.
"""

from __future__ import annotations

import ast
import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..study.spec import arg_text, model_label, run_label
from ..study.store import Store

STABILITY = "stability"
# Keys of a run's TrainConfig that do not make it another experiment (the seed makes it another sample of one).
NOT_RECIPE = ("seed", "run_dir", "progress", "resume", "overwrite", "model", "model_args")
FAILED = ("failed", "diverged", "skipped")
UNFINISHED = ("pending", "running")


# ---- the study, read once ----------------------------------------------------------------------------------------
@dataclass
class StudyData:
    """Everything the report needs from ``<directory>/study.db``, read in one read transaction (a consistent
    snapshot even while a runner writes)."""

    directory: Path
    meta: dict[str, Any]
    runs: list[dict[str, Any]]
    epochs: dict[str, list[dict[str, Any]]]
    analyses: list[dict[str, Any]]

    @classmethod
    def load(cls, directory: str | Path) -> StudyData:
        store = Store(directory, readonly=True)
        try:
            return cls.from_store(store, Path(directory))
        finally:
            store.close()

    @classmethod
    def from_store(cls, store: Store, directory: Path | None = None) -> StudyData:
        # One deferred read transaction: in WAL mode every SELECT inside it sees the same committed state.
        own = not store.db.in_transaction
        if own:
            store.db.execute("BEGIN")
        try:
            meta = store.meta()
            runs = store.runs()
            epochs = {r["id"]: store.epochs(r["id"]) for r in runs}
            analyses = store.analyses()
        finally:
            if own:
                store.db.execute("COMMIT")
        return cls(directory or store.path.parent, meta, runs, epochs, analyses)

    def records(self, name: str) -> list[dict[str, Any]]:
        """Completed analysis rows of ``name`` that hold a record."""
        return [a for a in self.analyses if a["name"] == name and a["status"] == "completed" and a["record"]]

    @property
    def table_runs(self) -> list[dict[str, Any]]:
        """Runs that are rows of the model table: all but those only in the stability sweep."""
        return [r for r in self.runs if any(g != STABILITY for g in r["groups"])]

    @property
    def stability_runs(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if STABILITY in r["groups"]]

    def spec(self) -> dict[str, Any]:
        return self.meta.get("spec") or {}


def as_data(source: StudyData | Store | str | Path) -> StudyData:
    if isinstance(source, StudyData):
        return source
    if isinstance(source, Store):
        return StudyData.from_store(source)
    return StudyData.load(source)


# ---- small helpers -----------------------------------------------------------------------------------------------
def canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def mean_std(xs: Iterable[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; None below two values)."""
    v = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None)


def mean(xs: Iterable[float | None]) -> float | None:
    return mean_std(xs)[0]


def mixer_list(model_config: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """The stage mixers of a resolved model config as ``(name, args)``, one per stage (one for a single mixer)."""
    if not model_config or "mixer" not in model_config:
        return []
    m = model_config["mixer"]
    specs = m if isinstance(m, list) else [m]
    return [(s.get("name", "?"), dict(s.get("args") or {})) for s in specs if isinstance(s, dict)]


def distinct_mixers(mixers: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for name, args in mixers:
        if (name, args) not in out:
            out.append((name, args))
    return out


def describe_mixers(mixers: list[tuple[str, dict[str, Any]]]) -> str:
    """``window(window_size=7)``; per-stage mixers in stage order, runs of one name merged:
    ``dwconv(kernel_size=7) x2 -> window(window_size=7) x2``, ``sra(sr_ratio=8/4/2/1)``."""
    if not mixers:
        return "?"
    groups: list[list[tuple[str, dict[str, Any]]]] = []
    for m in mixers:
        if groups and groups[-1][0][0] == m[0]:
            groups[-1].append(m)
        else:
            groups.append([m])
    parts = []
    for g in groups:
        name = g[0][0]
        keys = list(dict.fromkeys(k for _, a in g for k in a))
        args = []
        for k in keys:
            vals = [a.get(k) for _, a in g]
            args.append(f"{k}={vals[0]}" if len({canon(v) for v in vals}) == 1 else
                        f"{k}={'/'.join(str(v) for v in vals)}")
        text = f"{name}({', '.join(args)})" if args else name
        if len(groups) > 1 and len(g) > 1:
            text += f" ×{len(g)}"
        parts.append(text)
    return " → ".join(parts)


def parse_label(label: str) -> tuple[str, dict[str, Any]]:
    """A properties / dynconv row name, ``name`` or ``name(k=v, ...)`` (values as ``repr``), as (name, args).
    Arguments that do not parse are left out (the name still matches)."""
    if "(" not in label or not label.endswith(")"):
        return label.strip(), {}
    name, inner = label.split("(", 1)
    args: dict[str, Any] = {}
    try:
        call = ast.parse(f"f({inner[:-1]})", mode="eval").body
        assert isinstance(call, ast.Call)
        for kw in call.keywords:
            try:
                args[str(kw.arg)] = ast.literal_eval(kw.value)
            except ValueError:
                continue
    except SyntaxError:
        pass
    return name.strip(), args


def match_property(rows: list[dict[str, Any]], name: str, args: dict[str, Any]) -> dict[str, Any] | None:
    """The properties row of mixer ``name`` built with ``args``: rows match by the name before '('; among several,
    the first whose stated arguments all agree with ``args``, else the first."""
    same = [r for r in rows if parse_label(str(r.get("mixer", "")))[0] == name]
    for r in same:
        _, rargs = parse_label(str(r["mixer"]))
        if all(canon(args.get(k)) == canon(v) for k, v in rargs.items()):
            return r
    return same[0] if same else None


def threshold(d: dict[str, Any] | None, t: float) -> float | None:
    """The value of a dict keyed by threshold strings ('0.5', '0.50', ...) at threshold ``t``."""
    for k, v in (d or {}).items():
        try:
            if abs(float(k) - t) < 1e-9:
                return v
        except ValueError:
            continue
    return None


def first_epoch_at(epochs: list[dict[str, Any]], target: float) -> int | None:
    """The first evaluated epoch (1-based, epochs trained) whose eval top-1 is >= ``target``; None: never."""
    for row in epochs:
        t = row.get("eval_top1")
        if t is not None and float(t) >= target:
            return int(row["epoch"]) + 1
    return None


def run_name(run: dict[str, Any]) -> str:
    """A run as the failures list names it: model, arguments, seed; a sweep run adds optimiser, lr, wd, epochs."""
    text = run_label(str(run.get("model")), run.get("model_args") or {}, run.get("groups", []),
                     run.get("config") or {})
    return f"{text} (seed {run.get('seed')})"


def analysis_name(a: dict[str, Any]) -> str:
    if a.get("model"):
        seed = f" (seed {a['seed']})" if a.get("seed") is not None else ""
        return f"{a['name']}: {model_label(a['model'], a.get('model_args') or {})}" + seed
    extra = (a.get("args") or {}).get("group")
    return f"{a['name']}" + (f" ({extra})" if extra else "")


# ---- the model table ---------------------------------------------------------------------------------------------
@dataclass
class ModelRow:
    """One row of the model table (see the module docstring for what each number is)."""

    key: str
    label: str
    model: str
    model_args: dict[str, Any]
    groups: list[str]
    runs: list[dict[str, Any]] = field(default_factory=list)
    mixers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["status"] == "completed" and r.get("eval_top1") is not None]

    @property
    def run_ids(self) -> list[str]:
        return [r["id"] for r in self.runs]

    @property
    def attn_act(self) -> str | None:
        """The attention activation of the row's attention mixers (None when it has none)."""
        acts = {a.get("attn_act", "softmax") for n, a in self.mixers if n in ATTENTION_MIXERS}
        if "attn_act" in self.model_args:
            return str(self.model_args["attn_act"])
        return acts.pop() if len(acts) == 1 else None


ATTENTION_MIXERS = ("attention", "window", "halo", "sra", "dwattn")


def _recipe_key(run: dict[str, Any]) -> dict[str, Any]:
    c = {k: v for k, v in (run.get("config") or {}).items() if k not in NOT_RECIPE}
    return c


def _group_runs(data: StudyData) -> list[ModelRow]:
    rows: dict[str, ModelRow] = {}
    for run in data.table_runs:
        recipe = _recipe_key(run)
        key = canon({"model": run["model"], "args": run["model_args"], "recipe": recipe})
        if key not in rows:
            rows[key] = ModelRow(key=key, label="", model=run["model"], model_args=dict(run["model_args"] or {}),
                                 groups=[], recipe=recipe)
        row = rows[key]
        row.runs.append(run)
        row.groups += [g for g in run["groups"] if g not in row.groups and g != STABILITY]
        if not row.mixers and run.get("model_config"):
            row.mixers = mixer_list(run["model_config"])
    out = list(rows.values())
    # Label: model and its arguments, plus the recipe keys in which rows of the same model differ.
    for row in out:
        row.label = model_label(row.model, row.model_args)
    by_label: dict[str, list[ModelRow]] = {}
    for row in out:
        by_label.setdefault(row.label, []).append(row)
    for same in by_label.values():
        if len(same) > 1:
            keys = sorted(k for k in set().union(*(r.recipe for r in same))
                          if len({canon(r.recipe.get(k)) for r in same}) > 1)
            for r in same:
                r.label += " [" + ", ".join(f"{k}={arg_text(r.recipe.get(k))}" for k in keys) + "]"
    return out


def _record_for(rows: list[dict[str, Any]], row: ModelRow) -> dict[str, Any] | None:
    """An architecture record (complexity, bench) of ``row``: measured on one of its runs, else on the same model
    and arguments (one measurement applies to every seed and recipe of an architecture)."""
    ids = set(row.run_ids)
    for a in rows:
        if a["run_id"] in ids:
            return a["record"]
    for a in rows:
        if a["model"] == row.model and canon(a["model_args"]) == canon(row.model_args):
            return a["record"]
    return None


def _per_run(rows: list[dict[str, Any]], row: ModelRow) -> list[dict[str, Any]]:
    ids = set(r["id"] for r in row.completed)
    return [a["record"] for a in rows if a["run_id"] in ids]


def images_per_s(bench: dict[str, Any] | None, mode: str) -> float | None:
    try:
        return float(bench["results"][mode]["mixerlab"]["images_per_s"])  # type: ignore[index]
    except (KeyError, TypeError):
        return None


def translation_consistency(rec: dict[str, Any]) -> float | None:
    return mean(e.get("consistency") for e in rec.get("translation") or [] if e.get("shift"))


def rotation_consistency(rec: dict[str, Any]) -> float | None:
    return mean(e.get("consistency") for e in rec.get("rotation") or [] if e.get("angle"))


def targets(data: StudyData) -> dict[str, float]:
    """Target top-1 per group: the convergence record's (given or derived), else the spec's target."""
    out: dict[str, float] = {}
    for a in data.records("convergence"):
        g = (a["args"] or {}).get("group")
        if g is not None and a["record"].get("target_top1") is not None:
            out[g] = float(a["record"]["target_top1"])
    return out


def spec_target(data: StudyData) -> float | None:
    t = (data.spec().get("convergence") or {}).get("target_top1")
    return float(t) if t is not None else None


def _epochs_to_target(data: StudyData, row: ModelRow) -> tuple[list[int | None], float | None]:
    """Per completed run of ``row``, its epochs to the target (None: never), and the target used."""
    conv: dict[str, tuple[int | None, float]] = {}
    for a in data.records("convergence"):
        rec = a["record"]
        if (a["args"] or {}).get("group") not in row.groups:
            continue
        for r in rec.get("runs") or []:
            rid = Path(str(r.get("run_dir", ""))).name
            conv.setdefault(rid, (r.get("epochs_to_target"), float(rec["target_top1"])))
    target = spec_target(data)
    out: list[int | None] = []
    used: float | None = None
    for run in row.completed:
        if run["id"] in conv:
            ep, used = conv[run["id"]]
            out.append(ep)
        elif target is not None:
            used = target
            out.append(first_epoch_at(data.epochs.get(run["id"], []), target))
    return out, used


def model_rows(source: StudyData | Store | str | Path) -> list[ModelRow]:
    """The rows of the model table, in the order the study lists its models."""
    data = as_data(source)
    complexity, bench = data.records("complexity"), data.records("bench")
    erf, inv = data.records("erf"), data.records("invariance")
    props = [row for a in data.records("properties") for row in a["record"].get("rows") or []]
    rows = _group_runs(data)
    for row in rows:
        v = row.values
        top1 = [r["eval_top1"] for r in row.completed]
        v["top1_mean"], v["top1_std"] = mean_std(top1)
        v["top1"] = [float(t) for t in top1]
        v["n_seeds"] = len(top1)
        v["n_runs"] = len(row.runs)
        v["seeds"] = sorted(r["seed"] for r in row.completed)
        v["statuses"] = {s: sum(r["status"] == s for r in row.runs) for s in dict.fromkeys(r["status"]
                                                                                         for r in row.runs)}
        c = _record_for(complexity, row)
        rec0 = next((r["record"] for r in row.runs if r.get("record")), None) or {}
        v["params_m"] = c.get("params_m") if c else (rec0["params"] / 1e6 if rec0.get("params") else None)
        v["gmacs"] = c.get("gmacs") if c else None
        b = _record_for(bench, row)
        v["infer_ips"], v["train_ips"] = images_per_s(b, "infer"), images_per_s(b, "train")
        ept, target = _epochs_to_target(data, row)
        reached = [e for e in ept if e is not None]
        v["epochs_to_target"] = mean(reached) if reached else None
        v["epochs_to_target_runs"] = ept
        v["reached"] = len(reached)
        v["target_top1"] = target
        v["epochs"] = max((len(data.epochs.get(r["id"], [])) for r in row.completed), default=0)
        erfs = _per_run(erf, row)
        last = [e["stages"][-1] for e in erfs if e.get("stages")]
        v["erf50"] = mean(threshold(s.get("area_ratio"), 0.5) for s in last)
        v["erf99"] = mean(threshold(s.get("area_ratio"), 0.99) for s in last)
        v["erf_stage"] = (f"{last[0]['index'] + 1} of {len(erfs[0]['stages'])}" if last else None)
        invs = _per_run(inv, row)
        v["cons_translation"] = mean(translation_consistency(r) for r in invs)
        v["cons_rotation"] = mean(rotation_consistency(r) for r in invs)
        matched = [match_property(props, n, a) for n, a in distinct_mixers(row.mixers)]
        v["properties"] = matched
        for k, f in (("support_radius", "support_radius"), ("shared_positions", "shared_across_positions"),
                     ("shared_channels", "shared_across_channels"), ("dynamic", "dynamic")):
            v[k] = [m.get(f) if m else None for m in matched]
    return rows


def model_table(source: StudyData | Store | str | Path) -> list[dict[str, Any]]:
    """The model table as plain dicts, one per model + model_args (+ recipe), seeds aggregated; see the module
    docstring for the numbers. Per-stage values (``support_radius``, ``shared_positions``, ``shared_channels``,
    ``dynamic``) are lists, one entry per distinct stage mixer (``mixers``)."""
    out = []
    for row in model_rows(source):
        out.append({"label": row.label, "model": row.model, "model_args": row.model_args, "groups": row.groups,
                    "mixer": describe_mixers(row.mixers), "mixers": distinct_mixers(row.mixers),
                    "run_ids": row.run_ids, **{k: v for k, v in row.values.items() if k != "properties"}})
    return out


def bench_settings(data: StudyData) -> list[str]:
    """Sentences stating how throughput was measured (one per distinct setting among the bench records)."""
    seen: dict[str, str] = {}
    for a in data.records("bench"):
        s = a["record"].get("settings") or {}
        threads = (a["record"].get("machine") or {}).get("threads")
        text = (f"batch {s.get('batch_size')}, {s.get('img_size')}×{s.get('img_size')} px, {s.get('in_chans')} "
                f"channel(s), {s.get('precision')}, device {s.get('device')}"
                + (f", {threads} thread(s)" if threads else "")
                + f", channels_last {'on' if s.get('channels_last') else 'off'}"
                + f", torch.compile {'on' if s.get('compile') else 'off'}"
                + f", {s.get('warmup')} warm-up + {s.get('reps')} timed steps (median)"
                + (f", train step optimiser {s['optimizer']}" if s.get("optimizer") else ""))
        seen.setdefault(text, text)
    return list(seen)


def machine(data: StudyData) -> dict[str, Any] | None:
    for a in data.records("bench"):
        m = a["record"].get("machine")
        if m:
            return m
    return None


def stem_kind(data: StudyData, model: str) -> str:
    """'patchify' / 'conv' / the stem's name, from the resolved config of a run of ``model``."""
    for r in data.runs:
        if r["model"] == model and r.get("model_config"):
            name = (r["model_config"].get("stem") or {}).get("name")
            return {"patch": "patchify", "conv": "conv"}.get(name, str(name))
    return "?"
