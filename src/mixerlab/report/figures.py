"""The report's figures, drawn from the records alone (matplotlib's Agg canvas; no pyplot state, no model).

Every function returns :class:`~.render.Figure` objects (PNG bytes and a caption saying what is plotted and how it
was computed), or nothing when the store has no data for it. A model keeps its colour across figures (its row's
position in the model table).
"""

from __future__ import annotations

import io
import math
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .render import Figure
from .tables import ModelRow, StudyData, mean, stem_kind

DPI = 110
OPT_NAMES = {"adamw": "AdamW", "sgd": "SGD"}


def colour(i: int) -> str:
    return f"C{i % 10}"


def style(i: int) -> dict[str, Any]:
    """Colour plus a line style and marker that cycle at another period, so identical curves stay visible."""
    return {"color": colour(i), "linestyle": ("-", "--", ":", "-.")[i % 4], "marker": "osD^v"[i % 5]}


def _place_labels(ax: Any, points: list[tuple[float, float, str, str]], log_x: bool) -> None:
    """Label scatter points; labels of points in the right half go left of them, and labels of (nearly)
    coincident points are stacked instead of overprinted."""
    if not points:
        return
    xs = [math.log10(p[0]) if log_x else p[0] for p in points]
    ys = [p[1] for p in points]
    span_x = (max(xs) - min(xs)) or 1.0
    span_y = (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float, float, int]] = []  # label (left, right), y, stack level (data-span units)
    for (x, y, text, c), px in zip(points, xs, strict=True):
        u, v = (px - min(xs)) / span_x, (y - min(ys)) / span_y
        right = u > 0.5 and span_x > 0
        width = 0.016 * len(text)  # ~7.5 pt characters on a ~5 inch axis with 25% margins
        lo, hi = (u - width, u) if right else (u, u + width)
        stack = 0
        while any(abs(v - pv) < 0.07 and lo < phi and plo < hi and st == stack for plo, phi, pv, st in placed):
            stack += 1
        placed.append((lo, hi, v, stack))
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(-6 if right else 6, 4 - 10 * stack),
                    ha="right" if right else "left", fontsize=7.5, color=c)


def png(fig: MplFigure) -> bytes:
    FigureCanvasAgg(fig)  # the Agg canvas: rendering never depends on a GUI backend or pyplot
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _new(w: float, h: float) -> MplFigure:
    return MplFigure(figsize=(w, h), layout="constrained")


# ---- accuracy vs cost --------------------------------------------------------------------------------------------
def accuracy_cost(rows: list[ModelRow]) -> list[Figure]:
    """Top-1 (mean over seeds, bars: ± one sample std) against GMACs, inference and training throughput."""
    panels = [("gmacs", "GMACs per image (10⁹ multiply-accumulates)"),
              ("infer_ips", "inference throughput (images/s)"), ("train_ips", "training throughput (images/s)")]
    panels = [(k, x) for k, x in panels if any(r.values.get(k) and r.values["top1_mean"] is not None for r in rows)]
    if not panels:
        return []
    fig = _new(5.0 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, xlabel) in zip(axes, panels, strict=True):
        points = []
        for i, r in enumerate(rows):
            x, y = r.values.get(key), r.values["top1_mean"]
            if not x or y is None:
                continue
            points.append((x, y, r.label, colour(i)))
            ax.errorbar([x], [y], yerr=[r.values["top1_std"] or 0.0], fmt=style(i)["marker"], color=colour(i),
                        capsize=3, markersize=6)
        xs = [p[0] for p in points]
        log_x = bool(xs) and max(xs) / max(min(xs), 1e-12) > 8  # an order of magnitude: a log axis reads better
        if log_x:
            ax.set_xscale("log")
        _place_labels(ax, points, log_x)
        ax.set(xlabel=xlabel, ylabel="eval top-1 (%)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.15)
    fig.suptitle("Accuracy vs cost (one point per model; bars: ± 1 std over seeds)", fontsize=11)
    return [Figure("accuracy_cost", png(fig), title="Accuracy vs GMACs and throughput", caption=
                   "Final eval top-1 (mean over seeds; error bars ± one sample std, absent for one seed) against "
                   "GMACs at the study's input size (complexity record) and against inference / training-step "
                   "throughput (bench record, settings under the model table).")]


# ---- learning curves ---------------------------------------------------------------------------------------------
def _curve(data: StudyData, row: ModelRow) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per epoch (1-based) the mean, min and max eval top-1 over the row's runs that logged it."""
    by_epoch: dict[int, list[float]] = {}
    for run in row.runs:
        for e in data.epochs.get(run["id"], []):
            if e.get("eval_top1") is not None and math.isfinite(float(e["eval_top1"])):
                by_epoch.setdefault(int(e["epoch"]) + 1, []).append(float(e["eval_top1"]))
    eps = sorted(by_epoch)
    return (eps, [sum(by_epoch[k]) / len(by_epoch[k]) for k in eps], [min(by_epoch[k]) for k in eps],
            [max(by_epoch[k]) for k in eps])


def learning_curves(data: StudyData, rows: list[ModelRow]) -> list[Figure]:
    """Eval top-1 vs epoch, one figure per group; seeds averaged (band: min..max over seeds)."""
    out = []
    groups = list(dict.fromkeys(g for r in rows for g in r.groups))
    for g in groups:
        members = [(i, r) for i, r in enumerate(rows) if g in r.groups]
        curves = [(i, r, _curve(data, r)) for i, r in members]
        curves = [c for c in curves if c[2][0]]
        if not curves:
            continue
        fig = _new(7.5, 4.3)
        ax = fig.subplots()
        target = None
        # A group comparing attention activations names each curve's, also where it is the default (no argument).
        acts = {r.attn_act for _, r, _ in curves}
        for i, r, (eps, mu, lo, hi) in curves:
            n = len(r.completed) or len(r.runs)
            act = f" [{r.attn_act}]" if len(acts) > 1 and r.attn_act and "attn_act" not in r.model_args else ""
            ax.plot(eps, mu, markersize=4, label=f"{r.label}{act} (n={n})", **style(i))
            if any(a != b for a, b in zip(lo, hi, strict=True)):
                ax.fill_between(eps, lo, hi, color=colour(i), alpha=0.15, linewidth=0)
            target = target or r.values.get("target_top1")
        if target is not None:
            ax.axhline(target, color="0.4", linestyle="--", linewidth=1)
            ax.annotate(f"target {target:g}%", (ax.get_xlim()[0], target), textcoords="offset points",
                        xytext=(4, 3), fontsize=8, color="0.3")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel="eval top-1 (%)", title=f"Learning curves: group '{g}'")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        out.append(Figure(f"curves_{_slug(g)}", png(fig), title=f"Learning curves: {g}", caption=
                          f"Group '{g}': eval top-1 after each epoch (mean over the seeds that logged it; shaded: "
                          "min to max over seeds; n = completed seeds)"
                          + (f"; dashed: the convergence target {target:g}%." if target is not None else ".")))
    return out


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s.lower())


# ---- effective receptive fields ------------------------------------------------------------------------------
def _mean_maps(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[list[float]] | None]]:
    """Per stage of the first record, the stage and its map averaged over the records (seeds), renormalised."""
    first = records[0]["stages"]
    out = []
    for k, st in enumerate(first):
        maps = [r["stages"][k].get("map") for r in records if len(r.get("stages", [])) > k]
        maps = [m for m in maps if m]
        if not maps:
            out.append((st, None))
            continue
        h, w = len(maps[0]), len(maps[0][0])
        avg = [[sum(m[i][j] for m in maps) / len(maps) for j in range(w)] for i in range(h)]
        top = max(max(r) for r in avg) or 1.0
        out.append((st, [[x / top for x in r] for r in avg]))
    return out


def erf_grid(data: StudyData, rows: list[ModelRow]) -> list[Figure]:
    """ERF heatmaps: models (rows) x stages (columns), from the stored normalised maps."""
    from .tables import threshold

    erfs = data.records("erf")
    items = []
    for i, r in enumerate(rows):
        ids = {x["id"] for x in r.completed}
        recs = [a["record"] for a in erfs if a["run_id"] in ids and a["record"].get("stages")]
        if recs:
            items.append((i, r, _mean_maps(recs), len(recs)))
    if not items:
        return []
    ncol = max(len(m) for _, _, m, _ in items)
    fig = _new(2.15 * ncol + 0.9, 2.25 * len(items) + 0.5)
    axes = fig.subplots(len(items), ncol, squeeze=False)
    im = None
    for k, (i, r, maps, n) in enumerate(items):
        for j in range(ncol):
            ax = axes[k][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(maps) or maps[j][1] is None:
                ax.axis("off")
                continue
            st, m = maps[j]
            im = ax.imshow(m, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            a50, a99 = threshold(st.get("area_ratio"), 0.5), threshold(st.get("area_ratio"), 0.99)
            ax.set_title(f"stage {st['index'] + 1}: area 50% {_f(a50)} · 99% {_f(a99)}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{r.label}\n(n={n})", fontsize=7.5, color=colour(i))
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="log10(grad + 1), normalised")
    fig.suptitle("Effective receptive fields (input-gradient of each stage's central output)", fontsize=10)
    return [Figure("erf", png(fig), title="Effective receptive fields", caption=
                   "Effective receptive field per model (rows) and stage (columns), RepLKNet / STM-Eval method: "
                   "gradient of the summed ReLU'd central feature of each stage w.r.t. the input, ReLU, summed over "
                   "channels, averaged over images, log10(x + 1), normalised by the max (maps averaged over seeds "
                   "and renormalised). Titles: area ratio of the smallest centred square holding 50% / 99% of the "
                   "total (mean over seeds).")]


def _f(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


# ---- invariance ----------------------------------------------------------------------------------------------
SWEEPS = (("translation", "shift", "shift (pixels, mean of 8 directions)"),
          ("rotation", "angle", "rotation (degrees)"), ("scale", "ratio", "crop ratio"))


def invariance_curves(data: StudyData, rows: list[ModelRow]) -> list[Figure]:
    """Consistency vs shift / angle / crop ratio, one line per model (mean over seeds)."""
    inv = data.records("invariance")
    items = []
    for i, r in enumerate(rows):
        ids = {x["id"] for x in r.completed}
        recs = [a["record"] for a in inv if a["run_id"] in ids]
        if recs:
            items.append((i, r, recs))
    sweeps = [s for s in SWEEPS if any(rec.get(s[0]) for _, _, recs in items for rec in recs)]
    if not sweeps:
        return []
    fig = _new(4.6 * len(sweeps), 4.0)
    axes = fig.subplots(1, len(sweeps), squeeze=False)[0]
    for ax, (sweep, key, xlabel) in zip(axes, sweeps, strict=True):
        for i, r, recs in items:
            xs = sorted({e[key] for rec in recs for e in rec.get(sweep) or []})
            ys = [mean(e.get("consistency") for rec in recs for e in rec.get(sweep) or [] if e[key] == x) for x in xs]
            if xs:
                ax.plot(xs, ys, markersize=3, label=f"{r.label} (n={len(recs)})", **style(i))
        ax.set(xlabel=xlabel, ylabel="consistency (%)", title=sweep, ylim=(0, 102))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7.5, loc="lower left")
    n_img = {rec.get("num_images") for _, _, recs in items for rec in recs}
    return [Figure("invariance", png(fig), title="Invariance curves", caption=
                   "Invariance (STM-Eval protocol): consistency = % of eval images whose prediction equals the one on "
                   "the untransformed image, per translation (crop shifted by s pixels in 8 directions, averaged), "
                   f"rotation and crop-ratio setting; mean over seeds; {_join(n_img)} images per setting.")]


def _join(values: set[Any]) -> str:
    vals = sorted(v for v in values if v is not None)
    return "/".join(str(v) for v in vals) if vals else "?"


# ---- stability ---------------------------------------------------------------------------------------------------
def _step(points: list[list[float]]) -> tuple[list[float], list[float]]:
    xs, ys = [0.0], [0.0]
    for x, f in points:
        xs += [x, x]
        ys += [ys[-1], f]
    return xs, ys


def stability_figures(data: StudyData, record: dict[str, Any]) -> list[Figure]:
    """EDFs of error - best error per optimiser (one line per model), the AdamW-SGD gap bars, and error vs
    schedule length when the sweep has one."""
    sweeps = record.get("sweeps") or []
    if not sweeps:
        return []
    out = []
    models = list(dict.fromkeys(s["model"] for s in sweeps))
    opts = list(dict.fromkeys(s["opt"] for s in sweeps))
    names = {m: f"{m} ({stem_kind(data, m)} stem)" for m in models}
    n = (record.get("sampling") or {}).get("n", "?")
    epochs = (record.get("spec") or {}).get("epochs", "?")
    fig = _new(4.8 * len(opts) + 4.8, 4.0)
    axes = fig.subplots(1, len(opts) + 1, squeeze=False)[0]
    for ax, opt in zip(axes, opts, strict=False):
        for k, m in enumerate(models):
            sw = next((s for s in sweeps if s["model"] == m and s["opt"] == opt), None)
            if not sw or not sw.get("edf"):
                continue
            xs, ys = _step(sw["edf"])
            xs.append(max(xs[-1] * 1.05, xs[-1] + 1))
            ys.append(ys[-1])
            ax.plot(xs, ys, color=f"C{k}", linewidth=1.8,
                    label=f"{names[m]}: best {sw['best_error']:.1f}%, {sw['failures']} failed")
        ax.set(xlabel="error − best error (pp)", ylabel="fraction of runs (EDF)",
               title=f"{OPT_NAMES.get(opt, opt)}: {n} sampled (lr, wd)", ylim=(0, 1.04))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right")
    ax = axes[-1]  # every run: error against its lr multiplier
    for k, m in enumerate(models):
        for sw in (s for s in sweeps if s["model"] == m):
            runs = sw.get("runs") or []
            ax.scatter([r["lr_mult"] for r in runs], [r["error"] for r in runs], color=f"C{k}",
                       marker="o" if sw["opt"] == "adamw" else "^", s=28, alpha=0.8,
                       label=f"{m} {OPT_NAMES.get(sw['opt'], sw['opt'])}")
    ax.set_xscale("log")
    low, high = (record.get("sampling") or {}).get("interval") or (1 / 8, 4.0)
    ticks = [2.0 ** k for k in range(math.floor(math.log2(low)), math.ceil(math.log2(high)) + 1)]
    ax.set_xticks(ticks, [f"1/{round(1 / t)}" if t < 1 else f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="lr multiplier (× reference lr)", ylabel="error (%)", title="error of every sampled run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    fig.suptitle(f"Optimisation stability (Xiao et al.): {epochs} epoch(s) per run", fontsize=11)
    out.append(Figure("stability_edf", png(fig), title="Stability EDFs", caption=
                      f"Left: per optimiser, the empirical distribution of error − best error over the {n} sampled "
                      "(lr, wd) pairs (log-uniform multipliers of each optimiser's reference; the same pairs for every "
                      "model), error = 100 − final eval top-1, a diverged / failed run counts as error 100. A curve "
                      "that rises fast means most settings land near the best. Right: every run's error against its "
                      "lr multiplier (circles AdamW, triangles SGD)."))
    gaps = record.get("gaps") or {}
    if gaps:
        fig = _new(1.9 * len(gaps) + 3.6, 3.8)
        ax = fig.subplots()
        kinds = ("best", "median", "area")
        width = 0.8 / len(kinds)
        for j, kind in enumerate(kinds):
            xs = [k + (j - 1) * width for k in range(len(gaps))]
            vals = [g.get(kind) or 0.0 for g in gaps.values()]
            ax.bar(xs, vals, width=width, label=kind, color=f"C{j + 3}")
            for x, v in zip(xs, vals, strict=True):
                ax.annotate(f"{v:+.1f}", (x, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=7.5)
        ax.axhline(0, color="0.2", linewidth=0.8)
        ax.set_xticks(range(len(gaps)), [names.get(m, m) for m in gaps], fontsize=8)
        ax.set(ylabel="SGD − AdamW error (pp)", title="AdamW–SGD gap (> 0: SGD worse)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        out.append(Figure("stability_gap", png(fig), title="AdamW-SGD gap", caption=
                          "AdamW–SGD gap per model, percentage points (positive: SGD worse): best = min SGD error − "
                          "min AdamW error; median = median SGD error − median AdamW error; area = signed area "
                          "between the two raw-error EDFs (= mean SGD − mean AdamW error)."))
    sched = record.get("schedule") or []
    if sched:
        fig = _new(6.0, 3.8)
        ax = fig.subplots()
        for k, m in enumerate(models):
            for opt in opts:
                pts = sorted((r["epochs"], r["error"]) for r in sched if r["model"] == m and r["opt"] == opt)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{k}",
                            linestyle="-" if opt == "adamw" else "--", marker="o",
                            label=f"{m} {OPT_NAMES.get(opt, opt)}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="schedule length (epochs)", ylabel="error (%)", title="error vs schedule length")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.append(Figure("stability_schedule", png(fig), title="Error vs schedule length", caption=
                          "Error (100 − final eval top-1) at each optimiser's reference (lr, wd) against the schedule "
                          "length (solid AdamW, dashed SGD)."))
    return out


# ---- attention as dynamic convolution ------------------------------------------------------------------------
def dynconv_figures(record: dict[str, Any]) -> list[Figure]:
    """Relative reconstruction error of every converted mixer (log scale); the kernels when the record has them
    (``panels``: ``[{"label", "maps": (queries, H, W)}]``, the arrays the analysis's own figure draws)."""
    out = []
    rows = record.get("rows") or []
    if rows:
        fig = _new(max(6.0, 0.32 * len(rows) + 2.5), 4.0)
        ax = fig.subplots()
        labels = [f"{r['mixer']} · {r.get('attn_act') or 'static'}" for r in rows]
        vals = [max(float(r["rel_error"]), 1e-18) for r in rows]
        ax.bar(range(len(rows)), vals, color=["C0" if r["form"] == "dynamic conv" else "C2" for r in rows])
        ax.set_yscale("log")
        ax.axhline(1e-5, color="C3", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
        ax.set(ylabel="‖rebuilt − mixer(x)‖ / ‖mixer(x)‖", title="Mixers rebuilt through the other form")
        ax.legend(handles=[Patch(color="C0", label="attention as a dynamic depth-wise conv"),
                           Patch(color="C2", label="depth-wise conv as static attention"),
                           Line2D([], [], color="C3", linestyle="--", label="1e-5")], fontsize=7.5)
        ax.grid(alpha=0.3, axis="y")
        out.append(Figure("dynconv_error", png(fig), title="Dynamic-conv reconstruction error", caption=
                          "Relative error of each mixer rebuilt through the other form (Zhou et al.: attention is a "
                          "dynamic convolution): attention mixers' aggregation kernels extracted and re-applied as an "
                          "explicit inhomogeneous dynamic depth-wise convolution; depth-wise convs as static N×N "
                          f"attention maps. Dashed: 1e-5. Probed in {record.get('dtype', '?')}."))
    panels = [p for p in record.get("panels") or [] if p.get("maps")]
    if panels:
        colours = ((1.0, 0.25, 0.2), (0.2, 0.9, 0.3), (0.3, 0.5, 1.0))
        fig = _new(2.1 * len(panels), 2.7)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, p in zip(axes, panels, strict=True):
            maps = p["maps"]
            h, w = len(maps[0]), len(maps[0][0])
            rgb = [[[0.0, 0.0, 0.0] for _ in range(w)] for _ in range(h)]
            for q, m in enumerate(maps[:3]):
                top = max(abs(x) for r in m for x in r) or 1.0
                for i in range(h):
                    for j in range(w):
                        for c in range(3):
                            rgb[i][j][c] = min(1.0, rgb[i][j][c] + abs(m[i][j]) / top * colours[q][c])
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(str(p.get("label", "")), fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        out.append(Figure("dynconv_kernels", png(fig), title="Attention kernels as dynamic convolutions", caption=
                          "Aggregation kernels of three query positions (one colour each, |weight| / max) of each "
                          "attention mixer, read as a dynamic convolution."))
    return out
