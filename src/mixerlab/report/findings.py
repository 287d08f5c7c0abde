"""Findings generated from the numbers, each beside the paper's claim and the evidence behind it.

A finding is only stated when its data is in the store. Differences are judged against the seed spread: with
``a`` and ``b`` the per-seed values of two models, a difference counts when both have at least two seeds and
``|mean(a) - mean(b)| > max(std(a), std(b))`` (sample stds); otherwise the finding says that it rests on one
seed, or that the difference is within the seed spread, and its verdict is *inconclusive*. Verdicts: *agrees* /
*disagrees* (with the paper's claim), *inconclusive*, or *info* (no claim to test).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any

from .render import Finding
from .tables import ModelRow, StudyData, canon, mean, mean_std, parse_label, stem_kind

# SPEC 2.2: STM-Evaluation's ImageNet-1k top-1 (micro / tiny / small / base) of the unified architecture.
STM_EVAL = {
    "halo": ("U-Halo", (75.8, 83.0, 84.0, 84.6)),
    "pvt": ("U-PVT", (72.8, 82.1, 83.2, 83.4)),
    "swin": ("U-Swin", (74.4, 82.3, 83.3, 83.7)),
    "convnext": ("U-ConvNeXt", (75.1, 82.2, 83.1, 83.7)),
    "dcn": ("U-DCNv3", (75.3, 83.3, 84.1, 84.5)),
}
SIZES = ("micro", "tiny", "small", "base")
# SPEC 2.4: Han et al.'s table as (sparse connectivity, shared across positions, shared across channels, dynamic).
HAN = {
    "local attention": (True, False, True, True),
    "global attention": (False, False, True, True),
    "depth-wise conv": (True, True, False, False),
    "dynamic depth-wise conv (homogeneous)": (True, True, False, True),
    "inhomogeneous dynamic dw conv": (True, False, True, True),
}
PROPS = ("sparse", "shared_across_positions", "shared_across_channels", "dynamic")
PROP_NAMES = ("sparse", "shared across positions", "shared across channels", "dynamic")
# Fewer sampled (lr, wd) pairs than this and an EDF comparison is too coarse to call (steps of 1/n).
MIN_SWEEP = 5


def han_row(label: str) -> str | None:
    """The row of Han et al.'s table a probed mixer belongs to (None: not in the table)."""
    name, args = parse_label(label)
    if name in ("window", "halo"):
        return "local attention"
    if name in ("attention", "sra"):
        return "global attention"
    if name == "dwconv":
        return "depth-wise conv"
    if name == "dynconv":
        return "dynamic depth-wise conv (homogeneous)"
    if name == "idynconv":
        return "inhomogeneous dynamic dw conv"
    if name == "dwnet":
        conv = args.get("conv", "static")
        return {"static": "depth-wise conv", "dynamic": "dynamic depth-wise conv (homogeneous)",
                "idynamic": "inhomogeneous dynamic dw conv"}.get(conv)
    return None


# ---- seed spread -------------------------------------------------------------------------------------------------
def compare(a: Sequence[float], b: Sequence[float]) -> tuple[str, str]:
    """('separated' | 'within' | 'one-seed', a clause saying so) for the per-seed values of two models."""
    ma, sa = mean_std(a)
    mb, sb = mean_std(b)
    if ma is None or mb is None:
        return "one-seed", "one side has no value"
    if min(len(a), len(b)) < 2:
        return "one-seed", "from a single seed, so not a finding"
    spread = max(sa or 0.0, sb or 0.0)
    if abs(ma - mb) > spread:
        return "separated", f"larger than the seed spread (std up to {spread:.2f})"
    return "within", f"within the seed spread (std up to {spread:.2f}), so not a finding"


def pm(values: Sequence[float], spec: str = ".2f") -> str:
    m, s = mean_std(values)
    if m is None:
        return "—"
    return f"{m:{spec}}" + (f" ± {s:{spec}}" if s is not None else "") + f" (n={len(values)})"


def _num(x: float) -> str:
    """A count-like mean: '2', '2.5', '2.33'."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


def seed_noise(rows: list[ModelRow]) -> float | None:
    """The median seed std of final top-1 over the rows with two or more seeds: this study's noise level."""
    stds = [r.values["top1_std"] for r in rows if r.values.get("top1_std") is not None]
    return statistics.median(stds) if stds else None


def budget(data: StudyData, rows: list[ModelRow] | None = None) -> str:
    """'E epochs, N training / M eval images of DATA at S×S px, seeds [...]' from the runs' configs and records."""
    runs = [r for row in rows for r in row.runs] if rows else data.table_runs
    epochs = sorted({(r.get("config") or {}).get("epochs") for r in runs} - {None})
    recs = [r["record"].get("data") or {} for r in runs if r.get("record")]
    n_train = sorted({d.get("num_train") for d in recs} - {None})
    n_eval = sorted({d.get("num_eval") for d in recs} - {None})
    cfg = next(((r.get("config") or {}).get("data") or {} for r in runs), {})
    if not n_train:
        n_train = [cfg.get("train_subset") or "all"]
        n_eval = [cfg.get("eval_subset") or "all"]
    seeds = sorted({r.get("seed") for r in runs} - {None})
    ep = "/".join(map(str, epochs)) or "?"
    return (f"{ep} epoch(s), {'/'.join(map(str, n_train))} training / {'/'.join(map(str, n_eval))} eval images of "
            f"{cfg.get('name', '?')} at {cfg.get('img_size', '?')}×{cfg.get('img_size', '?')} px, "
            f"seeds {seeds}")


# ---- Zhou et al.: attention activations --------------------------------------------------------------------------
def _activation_sets(rows: list[ModelRow]) -> list[list[ModelRow]]:
    sets: dict[str, list[ModelRow]] = {}
    for r in rows:
        if r.attn_act is None:
            continue
        key = canon({"m": r.model, "a": {k: v for k, v in r.model_args.items() if k != "attn_act"}, "r": r.recipe})
        sets.setdefault(key, []).append(r)
    return [s for s in sets.values() if len({r.attn_act for r in s}) > 1]


def _verdict(winner: str, status: str, has_softmax: bool) -> str:
    if not has_softmax:
        return "info"
    if status != "separated":
        return "inconclusive"
    return "agrees" if winner != "softmax" else "disagrees"


def _auc(data: StudyData, row: ModelRow) -> list[float]:
    """Per completed run, the mean eval top-1 over its evaluated epochs (area under the learning curve / epochs)."""
    out = []
    for run in row.completed:
        v = [float(e["eval_top1"]) for e in data.epochs.get(run["id"], []) if e.get("eval_top1") is not None]
        if v:
            out.append(sum(v) / len(v))
    return out


def activation_findings(data: StudyData, rows: list[ModelRow]) -> list[Finding]:
    claim = ("Zhou et al. (2023): softmax is only the activation of attention's dynamic kernel; replacing it by "
             "ConvNet modules (ReLU, LayerNorm) converges faster and gives better accuracy.")
    out = []
    for s in _activation_sets(rows):
        s = [r for r in s if r.completed]
        if len(s) < 2:
            continue
        base = s[0].model + "".join(f" {k}={v}" for k, v in sorted(s[0].model_args.items()) if k != "attn_act")
        has_softmax = any(r.attn_act == "softmax" for r in s)
        basis = f"{budget(data, s)}; final top-1 = eval top-1 after the last epoch"
        # Final accuracy.
        ranked = sorted(s, key=lambda r: -(r.values["top1_mean"] or -1))
        a, b = ranked[0], ranked[1]
        status, clause = compare(a.values["top1"], b.values["top1"])
        tie = a.values["top1_mean"] == b.values["top1_mean"]
        listing = "; ".join(f"{r.attn_act} {pm(r.values['top1'])}" for r in ranked)
        if tie:
            text = f"Final eval top-1 (%): {listing}. {a.attn_act} and {b.attn_act} tie."
            status = "within"
        else:
            text = (f"Final eval top-1 (%): {listing}. {a.attn_act} ends best, "
                    f"{a.values['top1_mean'] - b.values['top1_mean']:.2f} pp above {b.attn_act}: {clause}.")
        out.append(Finding(f"Attention activation, final accuracy ({base})", text, claim,
                           _verdict(str(a.attn_act), "within" if tie else status, has_softmax), basis))
        # Convergence: epochs to the target; never-reaching seeds rank last (counted as one epoch past the budget).
        target = next((r.values["target_top1"] for r in s if r.values.get("target_top1") is not None), None)
        if target is None:
            continue

        def censored(r: ModelRow) -> list[float]:
            horizon = (r.values.get("epochs") or 0) + 1
            return [float(e) if e is not None else float(horizon) for e in r.values["epochs_to_target_runs"]]

        ranked = sorted(s, key=lambda r: (mean(censored(r)) or 1e9))
        a, b = ranked[0], ranked[1]

        def ep(r: ModelRow) -> str:
            v = r.values
            n = len(v["epochs_to_target_runs"])
            if not v["reached"]:
                return f"{r.attn_act} never (n={n})"
            m, sd = mean_std([e for e in v["epochs_to_target_runs"] if e is not None])
            return (f"{r.attn_act} {_num(m)}" + (f" ± {_num(sd)}" if sd is not None else "")
                    + f" epochs ({v['reached']}/{n} seeds reach it)")

        listing = "; ".join(ep(r) for r in ranked)
        ca, cb = censored(a), censored(b)
        if mean(ca) == mean(cb):
            # Same epoch count: the curves' mean top-1 over the epochs separates a faster rise.
            ua, ub = _auc(data, a), _auc(data, b)
            status, clause = compare(ua, ub)
            lead, other = (a, b) if (mean(ua) or 0) >= (mean(ub) or 0) else (b, a)
            if mean(ua) == mean(ub):
                text = (f"Epochs to {target:g}% top-1: {listing}. A tie, and the learning curves' mean top-1 over "
                        f"the epochs ties too ({mean(ua):.2f}%).")
                verdict = "inconclusive" if has_softmax else "info"
            else:
                text = (f"Epochs to {target:g}% top-1: {listing}: a tie at this resolution. Over the epochs, "
                        f"{lead.attn_act}'s curve is higher (mean top-1 {pm(_auc(data, lead))} vs "
                        f"{pm(_auc(data, other))}): {clause}.")
                verdict = _verdict(str(lead.attn_act), status, has_softmax)
        else:
            status, clause = compare(ca, cb)
            text = (f"Epochs to {target:g}% eval top-1: {listing}. {a.attn_act} converges fastest, "
                    f"{_num(mean(cb) - mean(ca))} epoch(s) before {b.attn_act}: {clause}.")  # type: ignore[operator]
            verdict = _verdict(str(a.attn_act), status, has_softmax)
        out.append(Finding(f"Attention activation, convergence ({base})", text, claim, verdict,
                           f"{basis}; epochs to target = first epoch (1-based) with eval top-1 ≥ {target:g}%"))
    return out


# ---- Xiao et al.: the convolutional stem and optimiser stability -------------------------------------------------
def stability_findings(data: StudyData, rows: list[ModelRow]) -> list[Finding]:
    recs = data.records("stability")
    if not recs:
        return []
    rec = recs[0]["record"]
    gaps = rec.get("gaps") or {}
    stems = {m: stem_kind(data, m) for m in gaps}
    patch = [m for m, s in stems.items() if s == "patchify"]
    conv = [m for m, s in stems.items() if s == "conv"]
    spec = rec.get("spec") or {}
    n = (rec.get("sampling") or {}).get("n", 0)
    noise = seed_noise(rows)
    runs = data.stability_runs
    basis = (f"{n} sampled (lr, wd) pairs per model and optimiser, {spec.get('epochs', '?')} epoch(s) each, one "
             f"training seed per pair, {budget(data, None) if not runs else _sweep_budget(runs)}; "
             + (f"this study's seed spread of final top-1 is about {noise:.2f} pp (median std over the model table)"
                if noise is not None else "no seed spread measured in this study (one seed per model)"))
    claim = ("Xiao et al. (2021): replacing the patchify stem by a few stacked stride-2 3×3 convolutions makes ViTs "
             "far less sensitive to the optimiser (AdamW vs SGD), lr and wd, and improves top-1 by 1-2 points.")
    out = []
    if not patch or not conv:
        listing = "; ".join(f"{m} ({stems[m]} stem): best {g['best']:+.2f}, median {g['median']:+.2f} pp"
                            for m, g in gaps.items())
        if listing:
            out.append(Finding("AdamW–SGD gap", f"SGD − AdamW error: {listing}. The sweep lacks a patchify / conv "
                               "stem pair, so the stem comparison cannot be made.", claim, "info", basis))
        return out
    p, c = patch[0], conv[0]
    gp, gc = gaps[p], gaps[c]
    narrowed_best = abs(gc["best"]) < abs(gp["best"])
    narrowed_median = abs(gc["median"]) < abs(gp["median"])
    diff = abs(abs(gp["best"]) - abs(gc["best"]))
    text = (f"SGD − AdamW error, best of each sweep: {p} (patchify) {gp['best']:+.2f} pp, {c} (conv stem) "
            f"{gc['best']:+.2f} pp; median: {gp['median']:+.2f} vs {gc['median']:+.2f} pp. The conv stem "
            + ("narrows" if narrowed_best else "does not narrow") + " the gap at the best setting and "
            + ("narrows" if narrowed_median else "does not narrow") + " it at the median.")
    if n < MIN_SWEEP:
        verdict = "inconclusive"
        text += f" With {n} samples per sweep (EDF steps of {1 / max(n, 1):.2f}) this is not a finding."
    elif noise is not None and diff <= noise:
        verdict = "inconclusive"
        text += f" The change in the best gap ({diff:.2f} pp) is within the seed spread ({noise:.2f})."
    elif narrowed_best and narrowed_median:
        verdict = "agrees"
    elif not narrowed_best and not narrowed_median:
        verdict = "disagrees"
    else:
        verdict = "inconclusive"
        text += " Best and median disagree."
    if noise is None and verdict != "inconclusive":
        text += " (Each error is one training run: its seed-to-seed noise is not measured here.)"
    out.append(Finding("Conv stem and the AdamW–SGD gap (Xiao et al.)", text, claim, verdict, basis))
    sweeps = {(sw["model"], sw["opt"]): sw for sw in rec.get("sweeps") or []}
    if (p, "adamw") in sweeps and (c, "adamw") in sweeps:
        ep, ec = sweeps[(p, "adamw")]["best_error"], sweeps[(c, "adamw")]["best_error"]
        better = ec < ep
        text = (f"Best AdamW error of the sweep: {p} {ep:.2f}%, {c} {ec:.2f}%: the conv stem is "
                f"{abs(ep - ec):.2f} pp {'better' if better else 'worse'}.")
        if n < MIN_SWEEP:
            verdict, text = "inconclusive", text + f" With {n} samples the best of a sweep is a noisy estimate."
        elif noise is not None and abs(ep - ec) <= noise:
            verdict, text = "inconclusive", text + f" Within the seed spread ({noise:.2f} pp)."
        else:
            verdict = "agrees" if better else "disagrees"
        out.append(Finding("Conv stem and accuracy (Xiao et al.)", text, claim, verdict, basis))
    return out


def _sweep_budget(runs: list[dict[str, Any]]) -> str:
    recs = [r["record"].get("data") or {} for r in runs if r.get("record")]
    n_train = sorted({d.get("num_train") for d in recs} - {None})
    n_eval = sorted({d.get("num_eval") for d in recs} - {None})
    cfg = (runs[0].get("config") or {}).get("data") or {}
    return (f"{'/'.join(map(str, n_train)) or '?'} training / {'/'.join(map(str, n_eval)) or '?'} eval images of "
            f"{cfg.get('name', '?')} at {cfg.get('img_size', '?')}×{cfg.get('img_size', '?')} px")


# ---- Han et al.: measured mixer properties -------------------------------------------------------------------
def property_checks(data: StudyData) -> list[dict[str, Any]]:
    """Per probed mixer in Han et al.'s table: its row, the expected and measured properties, and mismatches."""
    out = []
    for a in data.records("properties"):
        for row in a["record"].get("rows") or []:
            han = han_row(str(row.get("mixer", "")))
            measured = tuple(bool(row.get(k)) for k in PROPS)
            if han is None:
                out.append({"mixer": row["mixer"], "han": None, "measured": measured, "mismatch": []})
                continue
            exp = HAN[han]
            bad = [PROP_NAMES[i] for i in range(4) if exp[i] != measured[i]]
            out.append({"mixer": row["mixer"], "han": han, "expected": exp, "measured": measured, "mismatch": bad})
    return out


def property_findings(data: StudyData) -> list[Finding]:
    recs = data.records("properties")
    checks = property_checks(data)
    if not checks:
        return []
    rec = recs[0]["record"]
    inputs = rec.get("inputs") or {}
    basis = (f"mixers built alone at their initialisation (untrained), dim {rec.get('dim')}, {rec.get('num_heads')} "
             f"heads, {'×'.join(map(str, rec.get('resolution') or []))} token map, {inputs.get('n', 2)} inputs "
             f"({inputs.get('kind', '?')}), float tolerance {rec.get('tolerance')}; Jacobian probe, deterministic "
             "(no seeds involved)")
    rows = [r for a in recs for r in a["record"].get("rows") or []]
    dyn = [r["mixer"] for r in rows if r.get("dynamic")]
    pos = [r["mixer"] for r in rows if r.get("shared_across_positions")]
    ch = [f"{r['mixer']} (groups of {r.get('channel_group')})" for r in rows if r.get("shared_across_channels")]
    measured = (f"Dynamic: {', '.join(dyn) or 'none'}. Shared across positions: {', '.join(pos) or 'none'}. "
                f"Shared across channels: {', '.join(ch) or 'none'}.")
    in_table = [c for c in checks if c["han"]]
    bad = [c for c in in_table if c["mismatch"]]
    if in_table:
        text = (f"{measured} Against Han et al.'s table the probe reproduces {len(in_table) - len(bad)} of "
                f"{len(in_table)} mixers ({', '.join(c['mixer'] + ' = ' + c['han'] for c in in_table)})")
        text += (". Differences: " + "; ".join(f"{c['mixer']}: {', '.join(c['mismatch'])}" for c in bad) + "."
                 if bad else ".")
        verdict = "disagrees" if bad else "agrees"
    else:
        text, verdict = measured + " None of the probed mixers is in Han et al.'s table.", "info"
    others = [c["mixer"] for c in checks if not c["han"]]
    if others:
        text += f" Not in the table (no claim to check): {', '.join(others)}."
    claim = ("Han et al. (2021/22), SPEC 2.4: local attention is sparse, not shared across positions, shared across "
             "the channels of a head, dynamic; global attention the same but dense; depth-wise conv sparse, shared "
             "across positions, per channel, static; dynamic dw conv the same but dynamic; inhomogeneous dynamic dw "
             "conv sparse, per position, shared within a group, dynamic.")
    return [Finding("Measured mixer properties vs Han et al.", text, claim, verdict, basis)]


# ---- STM-Evaluation: ranking of the unified-architecture mixers ----------------------------------------------
def stm_rows(rows: list[ModelRow]) -> dict[str, list[tuple[ModelRow, str, float]]]:
    """Per size, the rows that are STM-Eval's published models (no overrides): (row, paper name, paper top-1)."""
    out: dict[str, list[tuple[ModelRow, str, float]]] = {}
    for r in rows:
        m = re.fullmatch(r"u_(halo|pvt|swin|convnext|dcn)_(micro|tiny|small|base)", r.model)
        if not m or r.model_args or not r.completed:
            continue
        name, nums = STM_EVAL[m.group(1)]
        out.setdefault(m.group(2), []).append((r, name, nums[SIZES.index(m.group(2))]))
    return out


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a between two score lists (pairs tied in either count as 0)."""
    n = len(a)
    s = 0
    for i in range(n):
        for j in range(i + 1, n):
            x, y = a[i] - a[j], b[i] - b[j]
            s += (x > 0 and y > 0) or (x < 0 and y < 0)
            s -= (x > 0 and y < 0) or (x < 0 and y > 0)
    pairs = n * (n - 1) / 2
    return s / pairs if pairs else 0.0


def stm_findings(data: StudyData, rows: list[ModelRow]) -> list[Finding]:
    out = []
    for size, items in stm_rows(rows).items():
        if len(items) < 2:
            continue
        ours = sorted(items, key=lambda t: -(t[0].values["top1_mean"] or 0))
        paper = sorted(items, key=lambda t: -t[2])
        tau = kendall_tau([t[0].values["top1_mean"] for t in items], [t[2] for t in items])
        agree = disagree = unresolved = 0
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                (ri, _, pi), (rj, _, pj) = items[i], items[j]
                status, _ = compare(ri.values["top1"], rj.values["top1"])
                same = (ri.values["top1_mean"] - rj.values["top1_mean"]) * (pi - pj) > 0
                if status != "separated":
                    unresolved += 1
                elif same:
                    agree += 1
                else:
                    disagree += 1
        text = (f"{size} models, top-1 here: " + " > ".join(f"{n} {pm(r.values['top1'])}" for r, n, _ in ours)
                + ". Published (ImageNet-1k): " + " > ".join(f"{n} {p}" for _, n, p in paper)
                + f". Kendall tau between the two orders: {tau:+.2f}. Of the {agree + disagree + unresolved} pairs, "
                f"{agree} keep the published order beyond the seed spread, {disagree} reverse it beyond the spread, "
                f"{unresolved} are within the spread or rest on one seed.")
        verdict = ("inconclusive" if unresolved or (agree and disagree) else
                   "agrees" if agree and not disagree else "disagrees")
        claim = ("STM-Evaluation (2022), SPEC 2.2: with one unified architecture and recipe, ImageNet-1k top-1 "
                 f"({size}): " + ", ".join(f"{n} {p}" for _, n, p in paper)
                 + ". Engineering explains much of the claimed gains, but gaps between STMs remain.")
        basis = (f"{budget(data, [t[0] for t in items])}, versus 300 epochs of ImageNet-1k at 224 px in the paper: "
                 "a check of the ranking, not of the numbers")
        out.append(Finding(f"Ranking of the STM-Eval mixers ({size})", text, claim, verdict, basis))
    return out


# ---- the best model ----------------------------------------------------------------------------------------------
def best_model_finding(data: StudyData, rows: list[ModelRow]) -> list[Finding]:
    done = [r for r in rows if r.values["top1_mean"] is not None]
    if len(done) < 2:
        return []
    ranked = sorted(done, key=lambda r: -r.values["top1_mean"])
    a, b = ranked[0], ranked[1]
    _, clause = compare(a.values["top1"], b.values["top1"])
    text = (f"Highest final eval top-1: {a.label} {pm(a.values['top1'])}, then {b.label} {pm(b.values['top1'])}: "
            f"a lead of {a.values['top1_mean'] - b.values['top1_mean']:.2f} pp, {clause}.")
    return [Finding("Best model in the table", text, None, "info", budget(data, rows))]


# ---- what the macro-architecture does alone ----------------------------------------------------------------------
BASELINE_CLAIM = ("STM-Evaluation (2022): with one macro-architecture and recipe, engineering explains much of the "
                  "gains claimed for new mixers, but gaps between mixers remain; the identity mixer (no spatial "
                  "mixing, SPEC 5.8) is the floor that measures what the architecture does alone.")


def baseline_finding(data: StudyData, rows: list[ModelRow]) -> list[Finding]:
    """How far the best spatial mixer is above the identity mixer in the same macro-architecture."""
    done = [r for r in rows if r.values["top1_mean"] is not None]
    floor = [r for r in done if r.mixers and all(n == "identity" for n, _ in r.mixers)]
    mixers = [r for r in done if not any(n == "identity" for n, _ in r.mixers)]
    if not floor or not mixers:
        return []
    base = floor[0]
    best = max(mixers, key=lambda r: r.values["top1_mean"])
    status, clause = compare(best.values["top1"], base.values["top1"])
    gap = best.values["top1_mean"] - base.values["top1_mean"]
    above = sum(r.values["top1_mean"] > base.values["top1_mean"] for r in mixers)
    text = (f"Identity (no spatial mixing) {pm(base.values['top1'])}; the best mixer, {best.label}, "
            f"{pm(best.values['top1'])}: {gap:+.2f} pp, {clause}. {above} of {len(mixers)} mixers end above "
            "the identity floor.")
    areas = {round(r.values["erf99"], 3) for r in done if r.values.get("erf99") is not None}
    areas50 = {round(r.values["erf50"], 3) for r in done if r.values.get("erf50") is not None}
    if len(done) > 2 and len(areas50) == 1 and len(areas) == 1:
        text += (" Every model has the same last-stage ERF area (50% / 99%), so at this budget the receptive "
                 "field is set by the shared skeleton (stem and downsampling), not by the mixers.")
    # "gaps between mixers remain": a mixer above the floor beyond the seed spread agrees; all below it disagrees
    verdict = "inconclusive" if status != "separated" else "agrees" if gap > 0 else "disagrees"
    return [Finding("What the macro-architecture does alone (identity floor)", text, BASELINE_CLAIM, verdict,
                    budget(data, rows))]


def findings(data: StudyData, rows: list[ModelRow]) -> list[Finding]:
    """Every finding the store supports, in the report's order."""
    return (best_model_finding(data, rows) + baseline_finding(data, rows) + activation_findings(data, rows)
            + stability_findings(data, rows) + property_findings(data) + stm_findings(data, rows))
