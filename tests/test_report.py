"""The study report (mixerlab.report): a synthetic study store (no training: rows written through Store.sync and
Store.finish with made-up records), rendered to report.html / report.md, checked for content, honesty of the
findings, robustness to partial and failed studies, and, with headless Chromium, that the page loads."""

from __future__ import annotations

import hashlib
import html.parser
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from mixerlab.cli import main
from mixerlab.report import model_table, write_report
from mixerlab.report.browser import dump_dom, find_chromium, screenshot
from mixerlab.report.document import build_document
from mixerlab.report.figures import dynconv_figures
from mixerlab.report.findings import compare, findings, kendall_tau
from mixerlab.report.render import table_cells
from mixerlab.report.tables import StudyData, describe_mixers, match_property, model_rows, parse_label
from mixerlab.study import Store, build_study
from mixerlab.study.spec import Job
from mixerlab.train import TrainConfig
from mixerlab.zoo import model_config

TARGET = 60.0
SPEC: dict[str, Any] = {
    "name": "synthetic",
    "description": "Report test: three mixers, an attention-activation pair and a stem sweep.",
    "data": {"name": "fashion-mnist", "img_size": 32, "in_chans": 1, "train_subset": 300, "eval_subset": 200},
    "recipe": {"epochs": 4, "batch_size": 64},
    "models": {"mixers": ["u_convnext_micro", "u_swin_micro", "u_halo_micro"],
               "activations": [{"name": "u_swin_micro", "args": {"attn_act": ["softmax", "relu"]}}]},
    "seeds": [0, 1],
    "analyses": ["complexity", "bench", "erf", "invariance"],
    "mixer_analyses": ["properties", "dynconv"],
    "stability": {"models": ["vit_p_1gf", "vit_c_1gf"], "n": 6, "epochs": 1, "schedule": []},
    "convergence": {"target_top1": TARGET},
}
# Eval top-1 per epoch, per row label and seed. relu reaches 60% at epoch 2, softmax (the {} spelling) at 4.
CURVES = {
    "u_convnext_micro": ([50, 58, 63, 66], [51, 59, 62, 67]),
    "u_swin_micro": ([40, 50, 58, 61], [42, 52, 59, 62]),
    "u_halo_micro": ([55, 61, 65, 68], [54, 60, 66, 69]),
    "u_swin_micro attn_act=relu": ([52, 61, 64, 65], [53, 62, 64, 66]),
}
# Per label: params (M), GMACs, inference and train images/s, ERF 50% area of the last stage per seed,
# translation / rotation consistencies (shifts 1, 2; angles 10, 20).
ARCH = {
    "u_convnext_micro": (4.06, 0.0131, 1000.0, 300.0, (0.60, 0.62), (80, 60), (90, 70)),
    "u_swin_micro": (3.99, 0.0125, 800.0, 250.0, (0.50, 0.52), (70, 50), (80, 60)),
    "u_halo_micro": (4.21, 0.0152, 600.0, 200.0, (0.55, 0.57), (76, 56), (86, 66)),
    "u_swin_micro attn_act=relu": (3.98, 0.0126, 900.0, 280.0, (0.51, 0.53), (72, 52), (82, 62)),
}
# Stability: sampled errors per (model, optimiser); the conv stem narrows the AdamW-SGD gap and is more accurate.
SWEEP = {("vit_p_1gf", "adamw"): [40, 42, 45, 50, 55, 60], ("vit_p_1gf", "sgd"): [48, 52, 55, 60, 70, 80],
         ("vit_c_1gf", "adamw"): [37, 38, 40, 41, 44, 46], ("vit_c_1gf", "sgd"): [38, 39, 41, 43, 45, 50]}


def label(job: Job) -> str:
    return " ".join([job.model or "", *(f"{k}={v}" for k, v in sorted(job.model_args.items()))])


def train_result(job: Job, curve: list[float], status: str = "completed", error: str | None = None) -> dict[str, Any]:
    cfg = TrainConfig.from_dict({k: v for k, v in job.payload.items() if k != "run_dir"})
    mc = model_config(cfg.model, **cfg.model_overrides(num_classes=10)).to_dict()
    epochs = [{"epoch": e, "step": 5 * (e + 1), "train_loss": 2.0 - 0.1 * e, "eval_top1": float(t), "epoch_s": 1.5}
              for e, t in enumerate(curve)]
    final = epochs[-1] if epochs else {}
    record = {"status": status, "model": cfg.model, "params": 4_000_000, "epochs": cfg.epochs,
              "epochs_completed": len(epochs), "best_top1": max(curve, default=None), "final": final,
              "epoch_times": [1.5] * len(epochs), "error": error, "device": "cpu", "model_config": mc,
              "data": {"num_train": 300, "num_eval": 200, "num_classes": 10}}
    return {"status": status, "error": error, "wall_s": 6.0, "record": record, "epochs": epochs,
            "run_dir": f"/study/runs/{job.id}"}


def erf_record(area50: float) -> dict[str, Any]:
    stages = []
    for i in range(4):
        a50 = area50 if i == 3 else area50 * (i + 1) / 8
        ratios = {"0.2": a50 / 3, "0.3": a50 / 2, "0.5": a50, "0.99": min(1.0, 2 * a50)}
        side = [[0.0] * 8 for _ in range(8)]
        for r in range(4 - i // 2 - 1, 4 + i // 2 + 1):
            for c in range(4 - i // 2 - 1, 4 + i // 2 + 1):
                side[r][c] = 1.0 / (1 + abs(r - 4) + abs(c - 4))
        stages.append({"index": i, "grid": [8 >> i, 8 >> i], "side": {}, "side_ratio": {}, "area_ratio": ratios,
                       "map": side})
    return {"source": {"kind": "run"}, "input_size": [1, 32, 32], "num_images": 4, "stages": stages}


def invariance_record(trans: tuple[int, int], rot: tuple[int, int]) -> dict[str, Any]:
    return {"num_images": 50, "top1": 60.0,
            "translation": [{"shift": s, "top1": 60.0, "consistency": c, "soft_ce": 2.0}
                            for s, c in zip((0, 1, 2), (100, *trans), strict=True)],
            "rotation": [{"angle": a, "top1": 60.0, "consistency": c, "soft_ce": 2.0}
                         for a, c in zip((0, 10, 20), (100, *rot), strict=True)],
            "scale": [{"ratio": r, "top1": 60.0, "consistency": c, "soft_ce": 2.0}
                      for r, c in zip((0.5, 1.0, 1.5), (50, 100, 60), strict=True)]}


def bench_record(infer: float, train: float) -> dict[str, Any]:
    res = {m: {"mixerlab": {"images_per_s": v, "ms_per_step": {"median": 16000 / v}}}
           for m, v in (("infer", infer), ("train", train))}
    return {"settings": {"batch_size": 16, "img_size": 32, "in_chans": 1, "precision": "fp32", "device": "cpu",
                         "channels_last": False, "compile": False, "warmup": 1, "reps": 3},
            "machine": {"cpu": "Synthetic CPU", "cores": 2, "threads": 2, "gpu": None, "torch": "2.x"},
            "results": res}


PROPERTIES = {"dim": 32, "num_heads": 4, "resolution": [14, 14], "inputs": {"kind": "random normal", "n": 2},
              "tolerance": 1e-5, "rows": [
                  {"mixer": "dwconv", "support_radius": 3.0, "sparse": True, "shared_across_positions": True,
                   "shared_across_channels": False, "channel_group": 1, "dynamic": False, "channel_coupling": "dense"},
                  {"mixer": "window", "support_radius": 5.1, "sparse": True, "shared_across_positions": False,
                   "shared_across_channels": True, "channel_group": 8, "dynamic": True, "channel_coupling": "dense"},
                  {"mixer": "halo", "support_radius": 6.0, "sparse": True, "shared_across_positions": False,
                   "shared_across_channels": True, "channel_group": 8, "dynamic": True, "channel_coupling": "dense"}]}
DYNCONV = {"dtype": "float32", "rows": [
    {"mixer": "window", "attn_act": "softmax", "form": "dynamic conv", "rel_error": 2e-7, "kernels": [2, 196, 196, 4],
     "kernel_size": 13},
    {"mixer": "dwconv", "attn_act": None, "form": "static attention", "rel_error": 3e-8, "kernels": [32, 196, 196],
     "kernel_size": None}], "skipped": []}


def stability_record() -> dict[str, Any]:
    sweeps = []
    for (m, opt), errs in SWEEP.items():
        best = min(errs)
        xs = sorted({e - best for e in errs})
        sweeps.append({"model": m, "opt": opt, "runs": [{"lr": 1e-3 * (i + 1), "wd": 0.05, "lr_mult": 0.25 * (i + 1),
                                                          "wd_mult": 1.0, "error": e, "status": "completed"}
                                                         for i, e in enumerate(errs)],
                       "best_error": best, "median_error": statistics.median(errs),
                       "mean_error": statistics.fmean(errs), "failures": 0,
                       "edf": [[x, sum(e - best <= x for e in errs) / len(errs)] for x in xs]})
    gaps = {}
    for m in ("vit_p_1gf", "vit_c_1gf"):
        a, s = SWEEP[(m, "adamw")], SWEEP[(m, "sgd")]
        gaps[m] = {"best": min(s) - min(a), "median": statistics.median(s) - statistics.median(a),
                   "area": statistics.fmean(s) - statistics.fmean(a)}
    return {"spec": {"epochs": 1, "n": 6}, "sampling": {"n": 6, "interval": [0.125, 4.0], "seed": 0},
            "references": {"adamw": {"lr": 2e-3, "wd": 0.05}, "sgd": {"lr": 0.05, "wd": 5e-5}},
            "sweeps": sweeps, "gaps": gaps, "schedule": []}


def make_study(root: Path, spec: dict[str, Any] = SPEC, *, curves: dict[str, tuple[list[float], ...]] = CURVES,
               fail: dict[tuple[str, int], str] | None = None, finish_train: int | None = None,
               analyses: bool = True, derived: bool = True) -> Path:
    """A study directory whose store holds ``spec``'s jobs and synthetic outcomes. ``fail``: (label, seed) ->
    error of training runs that fail (their per-run analyses are skipped); ``finish_train``: finish only the first
    that many training runs of the table (the rest stay pending); ``analyses`` / ``derived``: record analyses /
    the runner's convergence and stability records."""
    fail = fail or {}
    study = build_study(spec)
    store = Store(root)
    store.sync(study)
    status: dict[str, str] = {}
    table = [j for j in study.train_jobs if "stability" not in j.groups]
    for i, job in enumerate(table):
        if finish_train is not None and i >= finish_train:
            continue
        store.start(job)
        err = fail.get((label(job), job.seed))
        res = train_result(job, [] if err else curves[label(job)][job.seed or 0], "failed" if err else "completed",
                           err)
        store.finish(job, res)
        status[job.id] = res["status"]
    sweep = [j for j in study.train_jobs if "stability" in j.groups]
    if finish_train is None:
        counters: dict[tuple[str, str], int] = {}
        for job in sweep:
            key = (job.model or "", job.payload["opt"])
            k = counters[key] = counters.get(key, -1) + 1
            store.start(job)
            store.finish(job, train_result(job, [100.0 - SWEEP[key][k]]))
    if analyses:
        for job in (j for j in study.jobs if j.kind == "analysis"):
            run = job.payload["run"]
            if run is not None and status.get(run) != "completed":
                if run in status:
                    store.finish(job, {"status": "skipped", "error": f"needs run {run}, which {status[run]}"})
                continue
            arch = ARCH.get(label(job))
            seed = job.seed or 0
            rec = {"complexity": lambda a=arch: {"params_m": a[0], "gmacs": a[1], "params": int(a[0] * 1e6)},
                   "bench": lambda a=arch: bench_record(a[2], a[3]),
                   "erf": lambda a=arch, s=seed: erf_record(a[4][s]),
                   "invariance": lambda a=arch: invariance_record(a[5], a[6]),
                   "properties": lambda: PROPERTIES, "dynconv": lambda: DYNCONV}[job.name]()
            store.start(job)
            store.finish(job, {"status": "completed", "record": rec, "wall_s": 1.0})
    if derived:
        runs = {r["id"]: r for r in store.runs()}
        for group in ("mixers", "activations"):
            members = [j for j in table if group in j.groups and status.get(j.id) == "completed"]
            conv_runs = []
            for j in members:
                top1 = curves[label(j)][j.seed or 0]
                hit = next((k + 1 for k, t in enumerate(top1) if t >= TARGET), None)
                conv_runs.append({"run_dir": f"/study/runs/{j.id}", "label": label(j), "model": j.model,
                                  "model_args": j.model_args, "status": runs[j.id]["status"],
                                  "epochs_trained": len(top1), "epochs": list(range(1, len(top1) + 1)),
                                  "top1": top1, "best_top1": max(top1), "final_top1": top1[-1],
                                  "epochs_to_target": hit, "seconds_to_target": None if hit is None else 1.5 * hit})
            if conv_runs:
                store.put_derived(f"d-convergence-{group}", "convergence", {"group": group, "target_top1": TARGET},
                                  {"target_top1": TARGET, "target_source": "given", "runs": conv_runs})
        if finish_train is None and sweep:
            store.put_derived("d-stability", "stability", {}, stability_record())
    store.close()
    return root


# ---- parsing the rendered forms ----------------------------------------------------------------------------------
class _Tables(html.parser.HTMLParser):
    """Body cells of every <table id=...> and the <body> attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.body: dict[str, str] = {}
        self._id: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None
        self.img_src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = {k: v or "" for k, v in a.items()}
        elif tag == "table":
            self._id = a.get("id") or f"anon{len(self.tables)}"
            self.tables[self._id] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._id:
            self.tables[self._id].append([])
        elif tag == "td" and self._in_body:
            self._cell = []
        elif tag == "img":
            self.img_src.append(a.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._id:
            self.tables[self._id][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse_html(text: str) -> _Tables:
    p = _Tables()
    p.feed(text)
    return p


def md_table(text: str, section: str) -> list[list[str]]:
    """Body cells of the first table under ``## section`` of a markdown report."""
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in part.splitlines() if ln.startswith("|")]
    return [[c.strip().replace("\\|", "|").replace("\\\\", "\\") for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
            for ln in lines[2:]]


# ---- the full synthetic study, rendered once ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = make_study(tmp_path_factory.mktemp("study"))
    db = (d / "study.db").read_bytes()
    paths = write_report(d)
    return {"dir": d, "paths": paths, "html": paths[0].read_text(), "md": paths[1].read_text(), "db": db}


def test_model_table_one_row_per_model_seeds_aggregated(full: dict[str, Any]) -> None:
    rows = {r["label"]: r for r in model_table(full["dir"])}
    assert list(rows) == list(CURVES)  # spec order; stability models are not rows; {} and softmax are one run
    assert rows["u_swin_micro"]["groups"] == ["mixers", "activations"]
    for lab, (s0, s1) in CURVES.items():
        r = rows[lab]
        assert r["n_seeds"] == 2 and r["seeds"] == [0, 1]
        assert r["top1_mean"] == pytest.approx((s0[-1] + s1[-1]) / 2)
        assert r["top1_std"] == pytest.approx(statistics.stdev([s0[-1], s1[-1]]))
        params, gmacs, infer, train, erf50, trans, rot = ARCH[lab]
        assert (r["params_m"], r["gmacs"], r["infer_ips"], r["train_ips"]) == (params, gmacs, infer, train)
        assert r["erf50"] == pytest.approx(sum(erf50) / 2)  # the last stage's, mean over seeds
        assert r["erf99"] == pytest.approx(min(1.0, 2 * erf50[0]) / 2 + min(1.0, 2 * erf50[1]) / 2)
        assert r["cons_translation"] == pytest.approx(sum(trans) / 2)  # shift 0 (100%) left out
        assert r["cons_rotation"] == pytest.approx(sum(rot) / 2)
        assert r["target_top1"] == TARGET
    assert rows["u_swin_micro attn_act=relu"]["epochs_to_target"] == 2
    assert rows["u_swin_micro"]["epochs_to_target"] == 4
    assert rows["u_convnext_micro"]["epochs_to_target"] == 3
    # Properties by the model's mixer name: dwconv is position-shared and static, window attention dynamic.
    assert rows["u_convnext_micro"]["shared_positions"] == [True]
    assert rows["u_convnext_micro"]["dynamic"] == [False]
    assert rows["u_swin_micro"]["dynamic"] == [True] and rows["u_swin_micro"]["support_radius"] == [5.1]
    assert rows["u_halo_micro"]["mixer"] == "halo(block_size=7, halo_size=3)"


def test_report_files_self_contained_and_md_html_agree(full: dict[str, Any]) -> None:
    d, text, md = full["dir"], full["html"], full["md"]
    assert full["paths"] == [d / "report.html", d / "report.md"]
    assert (d / "study.db").read_bytes() == full["db"]  # opened read-only: the store is untouched
    assert not list(d.glob(".*.tmp")) and not list((d / "figures").glob(".*.tmp"))  # atomic writes left no temp
    page = parse_html(text)
    assert page.img_src and all(s.startswith("data:image/png;base64,") for s in page.img_src)
    assert not re.search(r"""(src|href)=["'](https?:|//|file:)""", text) and "<link" not in text
    figs = re.findall(r"\]\((figures/[a-z0-9_-]+\.png)\)", md)
    assert len(figs) == len(page.img_src) >= 8 and all((d / f).is_file() for f in figs)
    for table in ("models", "stability-sweeps", "stability-gaps", "properties", "dynconv", "convergence"):
        assert table in page.tables, table
    cells = page.tables["models"]
    assert [r[0] for r in cells] == list(CURVES)
    assert cells == md_table(md, "Models")
    assert page.tables["properties"] == md_table(md, "Measured mixer properties")
    doc_cells = table_cells(build_document(StudyData.load(d)), "models")
    assert doc_cells is not None and [r[1:] for r in doc_cells] == [r[1:] for r in cells]
    row = dict(zip(["label", "groups", "mixer", "params", "gmacs", "train", "infer", "top1", "seeds", "ept"],
                   cells[0], strict=False))
    assert row["top1"] == "66.50 ± 0.71" and row["seeds"] == "2" and row["ept"] == "3"
    assert row["gmacs"] == "0.013" and row["infer"] == "1,000" and row["train"] == "300"
    for section in ("Overview", "Models", "Findings", "Accuracy vs cost", "Learning curves",
                    "Effective receptive fields", "Invariance", "Measured mixer properties",
                    "Attention as dynamic convolution", "Optimisation stability", "Failures"):
        assert f"## {section}\n" in md and f">{section}</h2>" in text
    assert "batch 16, 32×32 px" in md and "Synthetic CPU" in md  # bench settings and machine stated
    assert "Epochs to 60%" in md and "No failed, diverged or skipped job." in md


def test_findings_from_the_numbers(full: dict[str, Any]) -> None:
    data = StudyData.load(full["dir"])
    items = {f.title: f for f in findings(data, model_rows(data))}
    conv = items["Attention activation, convergence (u_swin_micro)"]
    assert "relu converges fastest" in conv.result and conv.verdict == "agrees"
    assert "2 epoch(s) before softmax" in conv.result and "larger than the seed spread" in conv.result
    final = items["Attention activation, final accuracy (u_swin_micro)"]
    assert "relu ends best" in final.result and final.verdict == "agrees" and "Zhou" in (final.claim or "")
    assert "seeds [0, 1]" in final.basis and "4 epoch(s)" in final.basis
    gap = items["Conv stem and the AdamW–SGD gap (Xiao et al.)"]
    assert gap.verdict == "agrees" and "vit_p_1gf (patchify) +8.00 pp" in gap.result
    assert items["Conv stem and accuracy (Xiao et al.)"].verdict == "agrees"
    props = items["Measured mixer properties vs Han et al."]
    assert props.verdict == "agrees" and "reproduces 3 of 3 mixers" in props.result
    stm = items["Ranking of the STM-Eval mixers (micro)"]
    assert stm.verdict == "agrees" and "Kendall tau between the two orders: +1.00" in stm.result
    assert "U-Halo 75.8" in (stm.claim or "")
    assert "**Attention activation, convergence (u_swin_micro)** — *agrees*" in full["md"]


def test_findings_say_when_a_difference_is_not_a_finding(tmp_path: Path) -> None:
    one_seed = {**SPEC, "seeds": [0], "models": {"activations": SPEC["models"]["activations"]},
                "analyses": [], "mixer_analyses": [], "stability": None}
    one_seed.pop("stability")
    pair = {"u_swin_micro attn_act=softmax": CURVES["u_swin_micro"],
            "u_swin_micro attn_act=relu": CURVES["u_swin_micro attn_act=relu"]}
    d = make_study(tmp_path / "one", one_seed, curves=pair)
    data = StudyData.load(d)
    items = {f.title: f for f in findings(data, model_rows(data))}
    conv = items["Attention activation, convergence (u_swin_micro)"]
    assert conv.verdict == "inconclusive" and "from a single seed, so not a finding" in conv.result
    assert "relu converges fastest" in conv.result
    assert not any("Xiao" in t or "Han" in t for t in items)  # no sweep, no probe: no such finding
    # Two seeds whose spread swamps the difference.
    noisy = {"u_swin_micro attn_act=softmax": ([40, 50, 58, 60], [42, 52, 59, 70]),
             "u_swin_micro attn_act=relu": ([52, 61, 64, 62], [53, 62, 64, 69])}
    spec = {**one_seed, "seeds": [0, 1]}
    d = make_study(tmp_path / "noisy", spec, curves=noisy)
    data = StudyData.load(d)
    items = {f.title: f for f in findings(data, model_rows(data))}
    final = items["Attention activation, final accuracy (u_swin_micro)"]
    assert final.verdict == "inconclusive" and "within the seed spread" in final.result
    assert compare([1.0, 2.0], [5.0, 6.0])[0] == "separated" and compare([1.0], [5.0])[0] == "one-seed"
    assert kendall_tau([3, 2, 1], [30, 20, 10]) == 1.0 and kendall_tau([1, 2], [2, 1]) == -1.0


def test_the_identity_floor_finding(tmp_path: Path) -> None:
    spec = {**SPEC, "models": {"mixers": ["u_convnext_micro", "u_identity_micro"]}, "analyses": [],
            "mixer_analyses": []}
    spec.pop("stability")
    curves = {"u_convnext_micro": CURVES["u_convnext_micro"], "u_identity_micro": ([40, 45, 48, 50], [41, 46, 49, 52])}
    data = StudyData.load(make_study(tmp_path / "floor", spec, curves=curves))
    (floor,) = [f for f in findings(data, model_rows(data)) if f.title.startswith("What the macro-architecture")]
    assert floor.verdict == "agrees" and "u_convnext_micro, 66.50 ± 0.71 (n=2): +15.50 pp" in floor.result
    assert "1 of 1 mixers end above the identity floor" in floor.result and "STM-Evaluation" in (floor.claim or "")


def test_failed_run_and_analysis_in_failures(tmp_path: Path) -> None:
    d = make_study(tmp_path, fail={("u_halo_micro", 1): "RuntimeError: synthetic out of memory | at step 3"})
    write_report(d)
    text, md = (d / "report.html").read_text(), (d / "report.md").read_text()
    page = parse_html(text)
    fails = page.tables["failures"]
    assert ["u_halo_micro (seed 1)", "train", "failed", "RuntimeError: synthetic out of memory | at step 3"] in fails
    skipped = [r for r in fails if r[2] == "skipped"]
    assert {r[0].split(":")[0] for r in skipped} == {"erf", "invariance"}
    assert all("which failed" in r[3] for r in skipped)
    assert fails == md_table(md, "Failures")  # the '|' in the error survives markdown escaping
    halo = next(r for r in page.tables["models"] if r[0] == "u_halo_micro")
    assert halo[7] == "68.00" and halo[8] == "1/2 (1 failed)"  # the mean is of the completed seed only


def test_partial_study_renders(tmp_path: Path) -> None:
    # A study still running: 3 of 8 table runs done, no analysis, no derived record, sweep runs pending.
    d = make_study(tmp_path / "partial", finish_train=3, analyses=False, derived=False)
    paths = write_report(d)
    text, md = paths[0].read_text(), paths[1].read_text()
    assert "This study is not finished" in text and "Not finished (" in md
    page = parse_html(text)
    assert [r[0] for r in page.tables["models"]] == list(CURVES)
    assert page.tables["models"][3][7] == "—"  # the relu run has not finished: no top-1
    assert "Not in this study" not in md.split("## Effective receptive fields", 1)[1].split("##", 1)[0]
    assert "No completed erf record to show (8 pending; see Failures)." in md
    assert "its aggregate is not" in md  # sweep runs in the store, no stability record yet
    # Epochs to target from the epochs table when no convergence record exists yet.
    rows = {r["label"]: r for r in model_table(d)}
    assert rows["u_convnext_micro"]["epochs_to_target"] == 3
    # An empty study: nothing finished at all.
    d = make_study(tmp_path / "empty", finish_train=0, analyses=False, derived=False)
    assert main(["report", str(d)]) == 0
    assert "No finding" in (d / "report.md").read_text()


def test_helpers() -> None:
    assert parse_label("dwattn(window_size=7)") == ("dwattn", {"window_size": 7})
    assert parse_label("dwnet(conv='dynamic', kernel_size=7)") == ("dwnet", {"conv": "dynamic", "kernel_size": 7})
    assert parse_label("window") == ("window", {})
    rows = [{"mixer": "dwattn(window_size=None)", "x": 1}, {"mixer": "dwattn(window_size=7)", "x": 2},
            {"mixer": "window", "x": 3}]
    assert match_property(rows, "dwattn", {"window_size": 7})["x"] == 2  # type: ignore[index]
    assert match_property(rows, "dwattn", {"window_size": 5})["x"] == 1  # type: ignore[index]  # none agree: first
    assert match_property(rows, "window", {"window_size": 7})["x"] == 3  # type: ignore[index]
    assert match_property(rows, "dwconv", {}) is None
    hybrid = [("dwconv", {"kernel_size": 7})] * 2 + [("window", {"window_size": 7})] * 2
    assert describe_mixers(hybrid) == "dwconv(kernel_size=7) ×2 → window(window_size=7) ×2"
    pvt = [("sra", {"sr_ratio": r}) for r in (8, 4, 2, 1)]
    assert describe_mixers(pvt) == "sra(sr_ratio=8/4/2/1)"
    # Kernel maps, drawn when a dynconv record carries them (the current record stores errors and shapes only).
    maps = [[[float(i == q and j == q) for j in range(5)] for i in range(5)] for q in range(3)]
    figs = dynconv_figures({"rows": [], "panels": [{"label": "window\nsoftmax", "maps": maps}]})
    assert [f.name for f in figs] == ["dynconv_kernels"] and figs[0].png[:4] == b"\x89PNG"


# ---- headless Chromium -------------------------------------------------------------------------------------------
def test_report_loads_in_chromium(full: dict[str, Any], tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    dom = dump_dom(full["paths"][0])
    page = parse_html(dom)
    total = int(page.body["data-images-total"])
    assert total == len(parse_html(full["html"]).img_src) >= 8
    assert page.body["data-images-loaded"] == str(total) and page.body["data-images-failed"] == "0"
    assert len(page.tables["models"]) == len(CURVES)
    shot = screenshot(full["paths"][0], tmp_path / "shot.png", width=1400, height=1200)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_store_digest_unchanged_by_second_render(full: dict[str, Any]) -> None:
    before = hashlib.sha256((full["dir"] / "study.db").read_bytes()).hexdigest()
    write_report(full["dir"])  # rerendering replaces the files in place
    assert hashlib.sha256((full["dir"] / "study.db").read_bytes()).hexdigest() == before
    assert sorted(p.name for p in (full["dir"] / "figures").iterdir()) == sorted(
        re.findall(r"figures/([a-z0-9_-]+\.png)\)", (full["dir"] / "report.md").read_text()))
