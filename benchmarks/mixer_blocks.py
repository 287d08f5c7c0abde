"""Per mixer: achieved GFLOP/s and the fraction of this machine's fp32 matmul peak, measured in the same run.

    python benchmarks/mixer_blocks.py [--threads 2] [--repeats 5] [--only window halo] [--skip-models] [--csv out.csv]

Three measurements per mixer, each a training step (forward, loss, backward; the models also take an AdamW step),
timed as the median of ``--repeats`` after one warm-up, on random input:

* ``block``: one ``MetaBlock`` (pre-norm mixer + MLP, LayerScale) built alone at the tiny scale's stage-1 shape,
  B 8, C 96, 56x56, 3 heads (``build_mixer``, as a model builds it);
* ``micro@32``: the unified micro model with that mixer (U-<mixer>-micro) at 1x32x32, batch 128, 10 classes;
* ``micro@224``: the same model at 3x224x224, batch 8, 1000 classes.

FLOPs of a step = 3 x 2 x the forward MACs that ``mixerlab.complexity`` counts (backward ~ 2x forward, the usual
convention; elementwise ops, norms and the optimiser are not counted), so GFLOP/s is *useful* work per second.
The peak is the GFLOP/s of a 2048 x 2048 fp32 product (2 n^3 FLOPs; median of 10) at the same thread count, the
faster of torch's ``mm`` (its BLAS) and oneDNN's (``mixerlab.linear``; 2.2x the BLAS on AMD Zen 5), measured before
and after the mixers (the table shows both). Prints a Markdown table with machine and settings.
"""

from __future__ import annotations

import argparse
import csv
import statistics

import torch
import torch.nn.functional as F
from common import DIM, machine_line, median_time, stage1_block

from mixerlab import complexity, create_model
from mixerlab.linear import linear

# mixer -> its unified micro model (the arguments at the stage-1 shape are common.STAGE1_ARGS)
MODELS: dict[str, str] = {
    "attention": "u_swin_micro",  # the model with mixer={'name': 'attention'}
    "window": "u_swin_micro",
    "halo": "u_halo_micro",
    "sra": "u_pvt_micro",
    "dwconv": "u_convnext_micro",
    "dynconv": "u_dynconv_micro",
    "idynconv": "u_idynconv_micro",
    "dma": "u_dma_micro",
    "dcn": "u_dcn_micro",
    "dwattn": "u_dwattn_micro",
    "dwnet": "dwnet_tiny",
    "pooling": "u_pool_micro",
    "identity": "u_identity_micro",
}


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    products = [lambda: torch.mm(a, b)]
    if torch.backends.mkldnn.is_available():
        products.append(lambda: linear(a, b, None))  # a @ b.T on oneDNN
    return max(2 * n**3 / median_time(f, repeats) / 1e9 for f in products)


def block_case(name: str, repeats: int) -> tuple[float, int]:
    b, s = 8, 56
    block = stage1_block(name, s)
    x = torch.randn(b, s, s, DIM, requires_grad=True)
    macs = complexity(block, input_size=(s, s, DIM)).macs * b
    return median_time(lambda: block(x).square().mean().backward(), repeats), macs


def model_case(name: str, mixer: str, img: int, chans: int, batch: int, classes: int,
               repeats: int) -> tuple[float, int]:
    kw = {"img_size": img, "in_chans": chans, "num_classes": classes}
    if mixer == "attention":
        kw["mixer"] = {"name": "attention"}
    model = create_model(name, **kw)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, chans, img, img), torch.randint(0, classes, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    macs = complexity(name, input_size=(chans, img, img), num_classes=classes,
                      **{k: v for k, v in kw.items() if k == "mixer"}).macs * batch
    return median_time(step, repeats), macs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", nargs="*", help="subset of mixer names")
    p.add_argument("--skip-models", action="store_true", help="only the block measurement")
    p.add_argument("--csv")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    peak0 = matmul_peak()
    rows = []
    for mixer, model in MODELS.items():
        if a.only and mixer not in a.only:
            continue
        cases = {"block": lambda mixer=mixer: block_case(mixer, a.repeats)}
        if not a.skip_models and model.startswith("u_"):
            cases["micro@32"] = lambda model=model, mixer=mixer: model_case(model, mixer, 32, 1, 128, 10, a.repeats)
            cases["micro@224"] = lambda model=model, mixer=mixer: model_case(model, mixer, 224, 3, 8, 1000, a.repeats)
        row: dict = {"mixer": mixer, "model": model}
        for case, run in cases.items():
            seconds, macs = run()
            row[f"{case} s"] = round(seconds, 4)
            row[f"{case} GFLOP/s"] = round(6 * macs / seconds / 1e9, 2)
        rows.append(row)
        print(row, flush=True)
    peak1 = matmul_peak()
    peak = statistics.mean([peak0, peak1])
    print(f"\nmachine: {machine_line(a.threads)}; "
          f"fp32 matmul peak (2048^3, faster of BLAS and oneDNN): {peak0:.1f} GFLOP/s before, {peak1:.1f} after; "
          f"training step = fwd + loss + bwd (models: + AdamW), median of {a.repeats} after 1 warm-up; "
          "GFLOP/s = 6 x counted forward MACs / s; % = of the mean peak")
    cases = ["block", "micro@32", "micro@224"]
    print("| mixer | " + " | ".join(f"{c} s | {c} GFLOP/s (% peak)" for c in cases) + " |")
    print("|---|" + "---:|---:|" * len(cases))
    for r in rows:
        cells = [f"{r[f'{c} s']:.3f} | {r[f'{c} GFLOP/s']:.1f} ({100 * r[f'{c} GFLOP/s'] / peak:.0f}%)"
                 if f"{c} s" in r else "- | -" for c in cases]
        print(f"| {r['mixer']} | " + " | ".join(cells) + " |")
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}, key=str))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
