"""The report's content, as a :class:`~.render.Document` of sections, tables, figures and findings.

Every section is built from what the store holds; a part that cannot be built (a record of an unexpected shape)
becomes a warning in the report instead of stopping it, and is listed under failures.
"""

from __future__ import annotations

import datetime as dt
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from . import figures as F
from .findings import HAN, PROP_NAMES, findings, han_row
from .render import Bullets, Document, Paragraph, Section, Table
from .tables import (
    FAILED,
    UNFINISHED,
    ModelRow,
    StudyData,
    analysis_name,
    bench_settings,
    describe_mixers,
    machine,
    model_rows,
    run_name,
    stem_kind,
)

T = TypeVar("T")
MAX_ERROR = 600  # characters of an error message shown in the failures table


def fmt(x: Any, spec: str = ".2f") -> str:
    """A number for a table cell; '—' when absent."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return format(x, spec)


def fmt_count(x: float | None) -> str:
    """An epoch count: integer-looking means without decimals."""
    if x is None:
        return "—"
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.2f}"


def fmt_ips(x: float | None) -> str:
    return "—" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.1f}")


def when(ts: float | None) -> str:
    return "—" if ts is None else dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class Builder:
    def __init__(self, data: StudyData) -> None:
        self.data = data
        self.problems: list[tuple[str, str]] = []  # (what, error) for parts of the report that could not be built

    def safe(self, what: str, fn: Callable[[], T], default: T) -> T:
        try:
            return fn()
        except Exception as e:  # a malformed record must not cost the whole report
            frame = traceback.extract_tb(e.__traceback__)[-1]
            self.problems.append((what, f"{type(e).__name__}: {e} (at {frame.filename.rsplit('/', 1)[-1]}:"
                                        f"{frame.lineno})"))
            return default

    # ---- sections --------------------------------------------------------------------------------------------
    def build(self) -> Document:
        data = self.data
        meta = data.meta
        name = meta.get("name") or data.directory.name
        doc = Document(f"Study report: {name}")
        rows = self.safe("model table", lambda: model_rows(data), [])
        doc.sections.append(self.overview())
        doc.sections.append(self.models(rows))
        doc.sections.append(self.findings(rows))
        for title, sid, make in (
                ("Accuracy vs cost", "cost", lambda: self.figs("accuracy vs cost", lambda: F.accuracy_cost(rows))),
                ("Learning curves", "curves", lambda: self.curves(rows)),
                ("Effective receptive fields", "erf", lambda: self.figs("ERF", lambda: F.erf_grid(data, rows))),
                ("Invariance", "invariance",
                 lambda: self.figs("invariance", lambda: F.invariance_curves(data, rows))),
                ("Measured mixer properties", "properties", self.properties),
                ("Attention as dynamic convolution", "dynconv", self.dynconv),
                ("Optimisation stability", "stability", self.stability)):
            blocks = self.safe(title, make, [])
            doc.sections.append(Section(title, sid, blocks or [Paragraph(self.absent(sid), "note")]))
        doc.sections.append(self.failures())
        return doc

    def absent(self, sid: str) -> str:
        """Why a section is empty: the analysis was not asked for, has not run yet, or failed."""
        names = {"cost": ("complexity", "bench"), "curves": ("train",), "erf": ("erf",),
                 "invariance": ("invariance",), "properties": ("properties",), "dynconv": ("dynconv",),
                 "stability": ("stability",)}[sid]
        if sid == "curves":
            return "No run has logged an evaluated epoch yet."
        rows = [a for a in self.data.analyses if a["name"] in names]
        if sid == "stability" and not rows and self.data.stability_runs:
            return "The stability sweep's runs are in the store but its aggregate is not (the runner writes it " \
                   "when the sweep's runs have finished)."
        if not rows:
            return f"Not in this study (the spec asks for no {' / '.join(names)} analysis)."
        st = {s: sum(a["status"] == s for a in rows) for s in dict.fromkeys(a["status"] for a in rows)}
        return (f"No completed {' / '.join(names)} record to show ("
                + ", ".join(f"{n} {s}" for s, n in st.items()) + "; see Failures).")

    def figs(self, what: str, fn: Callable[[], list[Any]]) -> list[Any]:
        return self.safe(f"figure: {what}", fn, [])

    def overview(self) -> Section:
        data, meta = self.data, self.data.meta
        spec = data.spec()
        runs = data.runs
        facts: list[list[str]] = [["Study", str(meta.get("name", "?"))]]
        if meta.get("description"):
            facts.append(["Description", str(meta["description"])])
        facts.append(["Profile", str(meta.get("profile") or "none (the spec as written)")])
        facts.append(["Budget (model table)", self.safe("budget", lambda: _budget(data), "?")])
        recipe = self.safe("recipe", lambda: _recipe(data), "")
        if recipe:
            facts.append(["Recipe", recipe])
        if spec.get("stability"):
            s = spec["stability"]
            facts.append(["Stability sweep", f"models {s.get('models')}, {s.get('n', 8)} (lr, wd) samples per model "
                          f"and optimiser, {s.get('epochs', 2)} epoch(s) each"])
        m = machine(data)
        if m:
            gpu = m.get("gpu") or "no GPU"
            facts.append(["Machine (bench)", f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {gpu}; Python "
                          f"{m.get('python', '?')}, torch {m.get('torch', '?')}, timm {m.get('timm', '?')}, "
                          f"mixerlab {m.get('mixerlab', '?')}"])
        devices = sorted({str((r.get("record") or {}).get("device")) for r in runs if r.get("record")})
        if devices:
            facts.append(["Training device", ", ".join(devices)])
        jobs = runs + data.analyses
        starts = [j["started_at"] for j in jobs if j.get("started_at")]
        ends = [j["finished_at"] for j in jobs if j.get("finished_at")]
        if starts or ends:
            span = f"{when(min(starts) if starts else None)} → {when(max(ends) if ends else None)}"
            if starts and ends:
                span += f" ({duration(max(ends) - min(starts))} wall)"
            facts.append(["Ran", span])
        facts.append(["Training runs", _counts(runs)])
        facts.append(["Analyses", _counts(data.analyses)])
        facts.append(["Report written", when(dt.datetime.now(tz=dt.UTC).timestamp())])
        blocks: list[Any] = []
        unfinished = [j for j in jobs if j["status"] in UNFINISHED]
        if unfinished:
            blocks.append(Paragraph(f"This study is not finished: {len(unfinished)} job(s) pending or running. The "
                                    "report shows what is recorded so far.", "warn"))
        blocks.append(Table(["", ""], facts, id="overview", align=["l", "l"]))
        return Section("Overview", "overview", blocks)

    def models(self, rows: list[ModelRow]) -> Section:
        if not rows:
            return Section("Models", "models", [Paragraph("No training run of the model table is in the store.",
                                                          "note")])
        targets = sorted({r.values["target_top1"] for r in rows if r.values.get("target_top1") is not None})
        tcol = f"Epochs to {targets[0]:g}%" if len(targets) == 1 else "Epochs to target"
        headers = ["Model", "Groups", "Mixer(s)", "Params (M)", "GMACs", "Train (img/s)", "Infer (img/s)",
                   "Top-1 (%)", "Seeds", tcol, "ERF area 50%", "ERF area 99%", "Transl. cons. (%)",
                   "Rot. cons. (%)", "Support radius", "Shared pos.", "Shared ch.", "Dynamic"]
        align = ["l", "l", "l"] + ["r"] * 11 + ["l"] * 4
        body = []
        for r in rows:
            v = r.values
            top1 = "—" if v["top1_mean"] is None else (
                f"{v['top1_mean']:.2f}" + (f" ± {v['top1_std']:.2f}" if v["top1_std"] is not None else ""))
            seeds = str(v["n_seeds"]) if v["n_seeds"] == v["n_runs"] else (
                f"{v['n_seeds']}/{v['n_runs']} (" + ", ".join(f"{n} {s}" for s, n in v["statuses"].items()
                                                              if s != "completed") + ")")
            n_t = len(v["epochs_to_target_runs"])
            if not n_t:
                ept = "—"
            elif not v["reached"]:
                ept = f"never in {v['epochs']}"
            else:
                ept = fmt_count(v["epochs_to_target"]) + ("" if v["reached"] == n_t else f" ({v['reached']}/{n_t})")
            body.append([r.label, ", ".join(r.groups), describe_mixers(r.mixers), fmt(v["params_m"]),
                         fmt(v["gmacs"], ".3f"), fmt_ips(v["train_ips"]), fmt_ips(v["infer_ips"]), top1, seeds, ept,
                         fmt(v["erf50"], ".3f"), fmt(v["erf99"], ".3f"), fmt(v["cons_translation"], ".1f"),
                         fmt(v["cons_rotation"], ".1f"), _per_mixer(v["support_radius"], ".2f"),
                         _per_mixer(v["shared_positions"]), _per_mixer(v["shared_channels"]),
                         _per_mixer(v["dynamic"])])
        notes = self._model_notes(rows, targets)
        return Section("Models", "models", [Table(headers, body, id="models", notes=notes, align=align)])

    def _model_notes(self, rows: list[ModelRow], targets: list[float]) -> list[str]:
        data = self.data
        notes = ["One row per model + arguments (+ recipe); seeds are aggregated. Top-1: final eval top-1 after the "
                 "last epoch, mean ± sample std over the completed seeds (Seeds: how many; no ± for one seed). "
                 "Stability-sweep runs are not rows (see Optimisation stability).",
                 "Params: 10⁶ parameters; GMACs: 10⁹ multiply-accumulates per image at the study's input size "
                 "(GFLOPs = 2 × GMACs), from the complexity record."]
        settings = bench_settings(data)
        if settings:
            m = machine(data) or {}
            notes.append("Throughput (bench record, images/s): inference = forward in inference mode; train = one "
                         "step (forward, loss, backward, optimiser). Settings: " + " | ".join(settings)
                         + (f". Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('gpu') or 'no GPU'}"
                            f", torch {m.get('torch', '?')}." if m else "."))
        if targets:
            src = "convergence records" if data.records("convergence") else "epochs table"
            notes.append(f"Epochs to target: mean over the seeds that reach it of the first epoch (1-based) whose eval "
                         f"top-1 ≥ the target ({', '.join(f'{t:g}%' for t in targets)}; from the {src}); "
                         "(k/n): only k of n seeds reach it.")
        stages = sorted({r.values["erf_stage"] for r in rows if r.values.get("erf_stage")})
        if stages:
            notes.append(f"ERF area: fraction of the input image covered by the smallest centred square holding 50% / "
                         f"99% of the effective receptive field of the last stage (stage {', '.join(stages)}), mean "
                         "over seeds.")
        inv = data.records("invariance")
        if inv:
            shifts = sorted({e["shift"] for a in inv for e in a["record"].get("translation") or [] if e.get("shift")})
            angles = sorted({e["angle"] for a in inv for e in a["record"].get("rotation") or [] if e.get("angle")})
            notes.append("Consistency: % of eval images whose prediction is unchanged by the transform; Transl.: mean "
                         f"over shifts {_range(shifts)} px (8 directions each); Rot.: mean over angles "
                         f"{_range(angles)}°; mean over seeds (0-shift / 0° excluded: 100% by definition).")
        if data.records("properties"):
            notes.append("Support radius (Chebyshev, tokens, 99% of the kernel mass), shared across positions / "
                         "channels, dynamic: measured by the properties probe on the model's mixer built alone "
                         "(see Measured mixer properties); per-stage mixers: one value per distinct mixer, in stage "
                         "order, separated by '/'; '—': mixer not probed.")
        return notes

    def findings(self, rows: list[ModelRow]) -> Section:
        items = self.safe("findings", lambda: findings(self.data, rows), [])
        blocks: list[Any] = [Paragraph(
            "Generated from the numbers in the store. A difference between two models counts only when both have "
            "two or more seeds and it exceeds the larger seed std; otherwise the finding says so and is "
            "inconclusive. Budgets here are tiny next to the papers' (ImageNet, hundreds of epochs): read agreement "
            "as 'consistent with', not as a reproduction.", "note")]
        blocks += items or [Paragraph("No finding: the store does not yet hold the data any finding needs.", "note")]
        return Section("Findings", "findings", blocks)

    def curves(self, rows: list[ModelRow]) -> list[Any]:
        blocks: list[Any] = self.figs("learning curves", lambda: F.learning_curves(self.data, rows))
        conv = self.data.records("convergence")
        if conv:
            body = []
            for a in conv:
                rec = a["record"]
                g = (a["args"] or {}).get("group", "?")
                for r in rec.get("runs") or []:
                    body.append([g, r["label"], r["status"], str(r.get("epochs_trained", "—")),
                                 fmt(r.get("final_top1")), fmt(r.get("best_top1")),
                                 "never" if r.get("epochs_to_target") is None else str(r["epochs_to_target"]),
                                 "never" if r.get("seconds_to_target") is None else f"{r['seconds_to_target']:.1f}",
                                 f"{rec['target_top1']:g}" + ("" if rec.get("target_source") == "given" else "*")])
            notes = ["Per run (seeds separately), from the convergence records. Epochs / seconds to target: first "
                     "evaluated epoch (1-based) with eval top-1 ≥ the target, and the cumulative train + eval "
                     "seconds to it."]
            if any(a["record"].get("target_source") != "given" for a in conv):
                notes.append("*: no target in the spec; the target is the highest top-1 every run of the group "
                             "reaches (min over runs of their best).")
            blocks.append(Table(["Group", "Run", "Status", "Epochs", "Final top-1", "Best top-1", "Epochs to target",
                                 "Seconds to target", "Target (%)"], body, id="convergence", notes=notes,
                                align=["l", "l", "l"] + ["r"] * 6))
        return blocks

    def properties(self) -> list[Any]:
        recs = self.data.records("properties")
        if not recs:
            return []
        body = []
        for a in recs:
            for r in a["record"].get("rows") or []:
                han = han_row(str(r["mixer"]))
                measured = tuple(bool(r.get(k)) for k in ("sparse", "shared_across_positions",
                                                          "shared_across_channels", "dynamic"))
                if han:
                    exp = HAN[han]
                    bad = [PROP_NAMES[i] for i in range(4) if exp[i] != measured[i]]
                    expect = "/".join("y" if e else "n" for e in exp)
                    match = "yes" if not bad else "no: " + ", ".join(bad)
                else:
                    han, expect, match = "—", "—", "—"
                group = r.get("channel_group")
                body.append([str(r["mixer"]), fmt(r.get("support_radius")), fmt(r.get("sparse")),
                             fmt(r.get("shared_across_positions")),
                             fmt(r.get("shared_across_channels")) + (f" ({group})" if r.get("shared_across_channels")
                                                                     else ""),
                             fmt(r.get("dynamic")), str(r.get("channel_coupling", "—")), han, expect, match])
        rec = recs[0]["record"]
        notes = [f"Measured (SPEC 8.4) on each mixer built alone at its initialisation, dim {rec.get('dim')}, "
                 f"{rec.get('num_heads')} heads, {'×'.join(map(str, rec.get('resolution') or []))} tokens, inputs: "
                 f"{(rec.get('inputs') or {}).get('kind', '?')}: from the Jacobian of the mixer's spatial aggregation. "
                 "Support radius: Chebyshev radius (tokens) holding 99% of the kernel mass; shared across channels "
                 "(size of the smallest group of channels sharing a kernel). Han et al. expects: sparse / shared pos. "
                 "/ shared ch. / dynamic, from their table (SPEC 2.4)."]
        return [Table(["Mixer", "Support radius", "Sparse", "Shared pos.", "Shared ch. (group)", "Dynamic",
                       "Channel coupling", "Han et al. row", "Han et al. expects", "Match"], body, id="properties",
                      notes=notes, align=["l", "r"] + ["l"] * 8)]

    def dynconv(self) -> list[Any]:
        recs = self.data.records("dynconv")
        if not recs:
            return []
        blocks: list[Any] = []
        for a in recs:
            rec = a["record"]
            body = [[str(r["mixer"]), str(r.get("attn_act") or "—"), str(r["form"]), f"{float(r['rel_error']):.2e}",
                     "×".join(map(str, r.get("kernels") or [])), fmt(r.get("kernel_size"), "d")]
                    for r in rec.get("rows") or []]
            body += [[str(s["mixer"]), "—", "skipped", "—", "—", s.get("reason", "")] for s in rec.get("skipped") or []]
            blocks.append(Table(["Mixer", "Activation", "Form", "Rel. error", "Kernels", "k"], body, id="dynconv",
                                notes=["Rel. error = ‖rebuilt − mixer(x)‖ / ‖mixer(x)‖ (SPEC 8.5). Kernels: shape of "
                                       "the extracted kernels (batch, queries, keys, groups) for a dynamic conv; k: "
                                       "side of the per-position taps re-applied."],
                                align=["l", "l", "l", "r", "l", "r"]))
            blocks += self.figs("dynconv", lambda rec=rec: F.dynconv_figures(rec))
            if not rec.get("panels"):
                blocks.append(Paragraph("The dynconv record stores no kernel values (only errors and shapes), so "
                                        "the kernels themselves are not drawn here.", "note"))
        return blocks

    def stability(self) -> list[Any]:
        data = self.data
        recs = data.records("stability")
        if not recs:
            return []
        rec = recs[0]["record"]
        refs = rec.get("references") or {}
        body = []
        for sw in rec.get("sweeps") or []:
            ref = refs.get(sw["opt"], {})
            body.append([f"{sw['model']} ({stem_kind(data, sw['model'])})", F.OPT_NAMES.get(sw["opt"], sw["opt"]),
                         fmt(ref.get("lr"), ".3g"), fmt(ref.get("wd"), ".3g"), str(len(sw.get("runs") or [])),
                         str(sw.get("failures", 0)), fmt(sw.get("best_error")), fmt(sw.get("median_error")),
                         fmt(sw.get("mean_error"))])
        s = rec.get("sampling") or {}
        blocks: list[Any] = [Table(
            ["Model (stem)", "Optimiser", "Ref. lr", "Ref. wd", "Runs", "Failed", "Best error (%)",
             "Median error (%)", "Mean error (%)"], body, id="stability-sweeps",
            notes=[f"{s.get('n', '?')} (lr, wd) multiplier pairs, log-uniform in {s.get('interval', '?')} × each "
                   f"optimiser's reference (sampling seed {s.get('seed', '?')}; the same pairs for every model), "
                   f"{(rec.get('spec') or {}).get('epochs', '?')} epoch(s) per run. Error = 100 − final eval top-1; "
                   "a diverged or failed run counts as error 100."],
            align=["l", "l", "r", "r", "r", "r", "r", "r", "r"])]
        gaps = rec.get("gaps") or {}
        if gaps:
            blocks.append(Table(["Model (stem)", "Gap best (pp)", "Gap median (pp)", "Gap area (pp)"],
                                [[f"{m} ({stem_kind(data, m)})", fmt(g.get("best"), "+.2f"),
                                  fmt(g.get("median"), "+.2f"), fmt(g.get("area"), "+.2f")] for m, g in gaps.items()],
                                id="stability-gaps",
                                notes=["AdamW–SGD gap = SGD error − AdamW error (positive: SGD worse): best = of the "
                                       "best runs, median = of the medians, area = mean SGD − mean AdamW error."],
                                align=["l", "r", "r", "r"]))
        blocks += self.figs("stability", lambda: F.stability_figures(data, rec))
        return blocks

    def failures(self) -> Section:
        data = self.data
        body = []
        for r in data.runs:
            if r["status"] in FAILED:
                body.append([run_name(r), "train", r["status"], _err(r.get("error"))])
        for a in data.analyses:
            if a["status"] in FAILED:
                body.append([analysis_name(a), "analysis", a["status"], _err(a.get("error"))])
        for what, err in self.problems:
            body.append([what, "report", "not drawn", _err(err)])
        blocks: list[Any] = []
        if body:
            blocks.append(Table(["Job", "Kind", "Status", "Error"], body, id="failures",
                                notes=["failed: an exception; diverged: non-finite loss (an outcome, kept on rerun); "
                                       "skipped: a job whose prerequisite did not complete. Rerunning the study "
                                       "retries failed and skipped jobs."]))
        else:
            blocks.append(Paragraph("No failed, diverged or skipped job.", "note"))
        pending = [run_name(r) for r in data.runs if r["status"] in UNFINISHED]
        pending += [analysis_name(a) for a in data.analyses if a["status"] in UNFINISHED]
        if pending:
            shown = pending[:40]
            blocks.append(Paragraph(f"Not finished ({len(pending)} pending or running):", "note"))
            blocks.append(Bullets(shown + ([f"… and {len(pending) - len(shown)} more"] if len(pending) > 40 else [])))
        return Section("Failures", "failures", blocks)


def _err(e: str | None) -> str:
    if not e:
        return "(no message)"
    e = " ".join(e.split())
    return e if len(e) <= MAX_ERROR else e[:MAX_ERROR] + " …"


def _per_mixer(values: list[Any], spec: str = "") -> str:
    if not values or all(v is None for v in values):
        return "—"
    return " / ".join(fmt(v, spec) if not isinstance(v, bool) else fmt(v) for v in values)


def _range(xs: list[Any]) -> str:
    if not xs:
        return "?"
    return f"{xs[0]:g}–{xs[-1]:g}" if len(xs) > 1 else f"{xs[0]:g}"


def _counts(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return "none"
    order = ("completed", "diverged", "failed", "skipped", "running", "pending")
    st = {s: sum(j["status"] == s for j in jobs) for s in order}
    return f"{len(jobs)}: " + ", ".join(f"{n} {s}" for s, n in st.items() if n)


def _budget(data: StudyData) -> str:
    from .findings import budget

    cfg = next(((r.get("config") or {}).get("data") or {} for r in data.table_runs), {})
    return budget(data) + (f", {cfg.get('in_chans')} input channel(s)" if cfg.get("in_chans") else "")


def _recipe(data: StudyData) -> str:
    runs = data.table_runs
    if not runs:
        return ""
    c = runs[0].get("config") or {}
    text = (f"{c.get('opt')} lr {c.get('lr')} wd {c.get('weight_decay')}, batch {c.get('batch_size')}, "
            f"{c.get('sched')} schedule, {c.get('warmup_epochs')} warm-up epoch(s), augment "
            f"{(c.get('data') or {}).get('augment')}, label smoothing {c.get('label_smoothing')}, AMP {c.get('amp')}")
    keys = ("opt", "lr", "weight_decay", "batch_size", "epochs", "sched")
    if len({tuple(str((r.get("config") or {}).get(k)) for k in keys) for r in runs}) > 1:
        text += " (of the first run; some models override it: see their labels)"
    return text


def build_document(source: StudyData) -> Document:
    """The report of ``source`` (a :class:`StudyData`) as a :class:`~.render.Document`."""
    return Builder(source).build()
