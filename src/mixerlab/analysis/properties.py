"""Mixer properties, measured (Han et al., 2022, "On the Connection between Local Attention and Dynamic
Depth-wise Convolution", their table of sparse connectivity, weight sharing and dynamic weights; SPEC 2.4, 8.4).

Han et al. state the properties of a mixer's *spatial aggregation*: the map from its value tensor ``v`` (what
the kernel is applied to) to the aggregated output, with the kernel computed from the actual input ``x``. This
module builds each mixer alone (``build_mixer``, the init a model gives it, eval mode), computes that map at real
inputs and measures its Jacobian ``J[i, c, j, c'] = d agg[i, c] / d v[j, c']`` with vector-Jacobian products
(one-hot cotangents at an output position and channel; never a dense Jacobian of the layer).

What "the aggregation" is, per family (a design choice; every row says which in ``notes.aggregation``):

=================================  ===================================  ========================================
mixer                              value tensor v                       aggregation (kernel held at its x value)
=================================  ===================================  ========================================
attention, window, halo, sra,      the value heads (see                 ``y[i, c] = sum_j A[g(c), i, j] v[j, c]``,
dwattn                             :mod:`.dynconv`)                     ``A = aggregation_weights(x)``
dwconv, dynconv, idynconv          input of the depth-wise conv         the depth-wise conv (static weight,
                                   (``pw1(x)``)                         ``.kernel(v)`` for the dynamic ones)
dwnet                              ``ReLU(BN(conv0(x)))``               its (static or dynamic) depth-wise conv
dma                                ``x`` (input of the branches)        ``gate(x) * proj(sum_i DWConv_i(v))``: the
                                                                        gate acts after the 1x1 fusion, so the
                                                                        fusion belongs to the aggregation
dcn                                ``value_proj(x)``                    ``deform_aggregate`` with the offsets and
                                                                        point weights computed from x
pooling, identity                  ``x`` (they have no other)           the mixer
any other mixer (fallback)         ``x``                                the mixer: its full input Jacobian at x
=================================  ===================================  ========================================

The kernel of channel c is the diagonal block ``K_c[i, j] = J[i, c, j, c]`` (for every depth-wise aggregation the
other blocks are exactly zero, which is measured first, at the central query for every channel). Reduced keys (sra)
are spread over the map positions of their patches (:func:`mixerlab.analysis.dynconv.spread_keys`), so every
measure is in map tokens. Fields of a row, from the kernels of the query positions at least ``min(H, W) // 4``
from every border (all of them when the aggregation is depth-wise: one probe per query gives every channel's
kernel; else every other row and column of them, one probe per query and channel), at two inputs:

* ``support_radius``: the Chebyshev radius (tokens) around the query holding 99% of ``sum_c |K_c[i, .]|``, averaged
  over those queries and both inputs.
* ``sparse``: every such query reaches (a nonzero weight, any channel, either input) only part of the map.
  Zeros are structural: exactly zero in the VJP (masked keys, taps outside a kernel, channels never read).
* ``shared_across_positions``: the kernels of all those queries, as functions of the offset ``j - i``, agree with
  the central query's on the offsets valid for both (zero padding only removes taps, so convolutions agree;
  boundary effects beyond that are excluded by staying away from the borders).
* ``shared_across_channels`` / ``channel_group``: channels whose kernels (all queries, both inputs) agree form
  classes; ``channel_group`` is the size of the smallest class (1 = no sharing).
* ``dynamic``: the kernels differ between the two inputs. Gates count (DMA's ``sigmoid(FC(GAP(x)))`` rescales its
  channels per input).
* ``channel_coupling``: from the *full* mixer (projections and kernel generators included): the channel pairs
  that ``d mixer(x)[i, c] / d x[i, c']`` (same position: the central query, either input) connects, as a graph;
  'none' (no pair), 'dense' (one connected set of all channels) or 'group' (several sets).

"Agree" means a relative difference ``||a - b|| / max(||a||, ||b||)`` below 1e-5 in float32 (1e-10 in float64);
``notes.evidence`` gives the measured differences so the margins can be judged.

Weights must not hide a property: a zero-initialised layer (DCN's ``sampling_offsets`` and ``attention_weights``)
makes any dynamic operator look static (DCN starts as a fixed 3 x 3 average). Every Linear / Conv layer whose
weight is all zero after initialisation is therefore redrawn ``N(0, 1 / fan_in)`` (``randomise=True``) and listed
in ``notes.randomised``. Small inits (std .02) do not hide anything: the effects are small but far above float
noise. Inputs: real token grids (the stem features of Fashion-MNIST images, :func:`.dynconv.feature_grids`) or
random normal ones, as the record's ``inputs`` says.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..data import DataBundle, DataConfig
from ..errors import ConfigError, check_choice
from ..mixers import MIXERS, MixerContext, build_mixer
from ..mixers.conv import DWConv, DWNetConv
from ..mixers.deformable import DeformableConv, deform_aggregate
from ..mixers.dma import DMA
from ..mixers.dynamic import (
    DynamicDWConv,
    DynamicDWConv2d,
    IDynamicDWConv,
    IDynamicDWConv2d,
    dynamic_depthwise_conv,
    inhomogeneous_depthwise_conv,
)
from ..mixers.pooling import Identity, Pooling
from .base import ModelSource, Record
from .cli import AnalysisCommand, add_model_options, register
from .dynconv import (
    DTYPES,
    EXTRACTORS,
    VARIANTS,
    MixerSpec,
    _trained,
    add_geometry_options,
    as_dynamic_conv,
    check_geometry,
    check_model_mode,
    feature_grids,
    label,
    mixer_specs,
    model_args,
    spread_keys,
    stage_mixers,
)

MASS = 0.99  # fraction of |J| mass the support radius holds
SAME = {"float32": 1e-5, "float64": 1e-10}  # relative difference below which two kernels are the same
ZERO = 1e-30  # relative magnitude below which a Jacobian entry is a structural zero
PROBE_CHUNK = 16  # VJPs per backward pass (the probed map replicated along the batch)


@dataclass
class PropertyRow:
    """One mixer's measured properties (module docstring); ``mixer`` is ``name`` or ``name(arg=value, ...)``."""

    mixer: str
    support_radius: float
    sparse: bool
    shared_across_positions: bool
    shared_across_channels: bool
    channel_group: int
    dynamic: bool
    channel_coupling: str
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class PropertiesRecord(Record):
    """The rows of :func:`properties` and how they were measured (geometry, dtype, inputs, mass fraction of the
    support radius, relative tolerance of "the same kernel")."""

    dim: int = 0
    num_heads: int = 0
    resolution: list[int] = field(default_factory=list)
    dtype: str = "float32"
    inputs: dict[str, Any] = field(default_factory=dict)
    mass: float = MASS
    tolerance: float = 0.0
    rows: list[PropertyRow] = field(default_factory=list)


# ---- the aggregation of each family ---------------------------------------------------------------------------

@dataclass(eq=False)
class Aggregation:
    """A mixer's aggregation at one input: ``apply`` maps value grids ``(P, Hk, Wk, C)`` to ``(P, H, W, C)`` with the
    kernel computed from that input (so it is linear in v, except for the fallback); ``value`` ``(1, Hk, Wk, C)`` is
    the value tensor at the input, the point where the Jacobian is taken."""

    value: Tensor
    apply: Callable[[Tensor], Tensor]
    what: str
    key_stride: int = 1


def _cl(t: Tensor) -> Tensor:
    return t.permute(0, 2, 3, 1)


def _nchw(t: Tensor) -> Tensor:
    return t.permute(0, 3, 1, 2)


def _depthwise_op(op: nn.Module, v: Tensor) -> tuple[Callable[[Tensor], Tensor], str]:
    """A depth-wise conv module of the conv families as a map of channels-last grids, its kernel computed from
    ``v`` (NCHW, the op's actual input) for the dynamic ones."""
    if isinstance(op, DynamicDWConv2d):
        k = op.kernel(v)  # (1, C, K, K)
        return (lambda u: _cl(dynamic_depthwise_conv(_nchw(u), k.expand(u.shape[0], -1, -1, -1), op.bias)),
                "dynamic depth-wise conv, kernel = .kernel(v)")
    if isinstance(op, IDynamicDWConv2d):
        k = op.kernel(v)  # (1, G, K*K, H, W), broadcast over the probes
        return lambda u: _cl(inhomogeneous_depthwise_conv(_nchw(u), k)), "inhomogeneous dynamic conv, .kernel(v)"
    return lambda u: _cl(op(_nchw(u))), "static depth-wise conv"


def _attention(m: nn.Module, x: Tensor) -> Aggregation:
    dc = as_dynamic_conv(m, x)
    return Aggregation(dc.value, dc.aggregate, "A v, A = aggregation_weights(x), v = the value heads", dc.key_stride)


def _projected(m: DWConv | DynamicDWConv | IDynamicDWConv, x: Tensor) -> Aggregation:
    v = m.pw1(_nchw(x))
    fn, what = _depthwise_op(m.dw, v)
    return Aggregation(_cl(v), fn, f"pw1(x) -> {what}")


def _dwnet(m: DWNetConv, x: Tensor) -> Aggregation:
    v = m.act(m.bn0(m.conv0(_nchw(x))))
    fn, what = _depthwise_op(m.conv, v)
    return Aggregation(_cl(v), fn, f"ReLU(BN(conv0(x))) -> {what}")


def _dma(m: DMA, x: Tensor) -> Aggregation:
    gate = m.gate(x)[:, None, None, :]

    def apply(u: Tensor) -> Tensor:
        uc = _nchw(u)
        fused = m.branches[0](uc)
        for branch in m.branches[1:]:
            fused = fused + branch(uc)
        return _cl(m.proj(fused)) * gate

    return Aggregation(x, apply, "x -> gate(x) * proj(sum of depth-wise branches) (the gate acts after the fusion)")


def _dcn(m: DeformableConv, x: Tensor) -> Aggregation:
    g, p = m.groups, m.points.shape[0]
    q = m.act(m.dw_norm(_cl(m.dw_conv(_nchw(x)))))
    offsets = m.sampling_offsets(q).unflatten(-1, (g, p, 2))
    weights = m.attention_weights(q).unflatten(-1, (g, p)).softmax(-1)

    def apply(u: Tensor) -> Tensor:
        n = u.shape[0]
        return deform_aggregate(u, offsets.expand(n, *offsets.shape[1:]), weights.expand(n, *weights.shape[1:]),
                                m.points, m.offset_scale)

    return Aggregation(m.value_proj(x), apply, "value_proj(x) -> deform_aggregate, offsets / weights from x")


def _whole(m: nn.Module, x: Tensor) -> Aggregation:
    return Aggregation(x, m, "the mixer (its value tensor is its input)")


# Families with a known aggregation (first match by isinstance); anything else gets the fallback.
AGGREGATIONS: dict[type[nn.Module], Callable[[Any, Tensor], Aggregation]] = {
    **dict.fromkeys(EXTRACTORS, _attention),
    DWConv: _projected,
    DynamicDWConv: _projected,
    IDynamicDWConv: _projected,
    DWNetConv: _dwnet,
    DMA: _dma,
    DeformableConv: _dcn,
    Pooling: _whole,
    Identity: _whole,
}
FALLBACK = "fallback, no aggregation accessor: the full mixer's Jacobian w.r.t. its input"


def aggregation(mixer: nn.Module, x: Tensor) -> Aggregation:
    """The aggregation of ``mixer`` at one input ``x`` ``(1, H, W, C)`` (module docstring), kernel tensors computed
    without gradient (the probe differentiates with respect to the value tensor only)."""
    with torch.no_grad():
        for cls, fn in AGGREGATIONS.items():
            if isinstance(mixer, cls):
                return fn(mixer, x)
    return Aggregation(x, mixer, FALLBACK)


# ---- probing ------------------------------------------------------------------------------------------------------

Probe = tuple[int, int, int | None]  # output row, column, channel (None: every channel at once)


def vjp_rows(fn: Callable[[Tensor], Tensor], at: Tensor, probes: Sequence[Probe], chunk: int = PROBE_CHUNK) -> Tensor:
    """Jacobian rows of ``fn`` (grids ``(P, Hk, Wk, C) -> (P, H, W, C)``, batch-independent) at ``at``
    ``(1, Hk, Wk, C)``: row k is ``u_k^T J`` for the one-hot cotangent ``u_k`` of probe k; ``(len(probes), Hk, Wk, C)``.
    The probes of a chunk run as one batch of copies of ``at``, so one backward pass gives ``chunk`` VJPs."""
    rows = []
    for start in range(0, len(probes), chunk):
        part = probes[start:start + chunk]
        v = at.expand(len(part), *at.shape[1:]).clone().requires_grad_(True)
        with torch.enable_grad():
            y = fn(v)
            cot = torch.zeros_like(y)
            for k, (r, c, ch) in enumerate(part):
                cot[k, r, c, slice(None) if ch is None else ch] = 1
            (g,) = torch.autograd.grad(y, v, cot)
        rows.append(g)
    return torch.cat(rows)


def randomise_zero_layers(mixer: nn.Module, generator: torch.Generator) -> list[str]:
    """Redraw ``N(0, 1 / fan_in)`` every Linear / Conv weight of ``mixer`` that is all zero; return their names."""
    names = []
    for name, mod in mixer.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)) and not mod.weight.any():
            w = mod.weight
            with torch.no_grad():
                w.copy_(torch.randn(w.shape, generator=generator, dtype=torch.float64) * w[0].numel() ** -0.5)
            names.append(name)
    return names


def central_queries(grid: tuple[int, int]) -> list[tuple[int, int]]:
    """Positions at least ``min(H, W) // 4`` tokens from every border (row-major)."""
    h, w = grid
    m = min(h, w) // 4
    return [(r, c) for r in range(m, h - m) for c in range(m, w - m)]


def _rel(a: Tensor, b: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``||a - b|| / max(||a||, ||b||)`` over ``dims`` (0 where both are zero)."""
    norm = torch.linalg.vector_norm
    num = norm((a - b).double(), dim=dims)
    den = torch.maximum(norm(a.double(), dim=dims), norm(b.double(), dim=dims))
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def chebyshev_radius(mass: Tensor, query: tuple[int, int], frac: float = MASS) -> int:
    """Smallest r such that the square of Chebyshev radius r around ``query`` holds ``frac`` of ``mass`` (H, W)."""
    h, w = mass.shape
    rr = torch.arange(h, device=mass.device)[:, None]
    cc = torch.arange(w, device=mass.device)[None, :]
    dist = torch.maximum((rr - query[0]).abs(), (cc - query[1]).abs())
    per_ring = torch.zeros(int(dist.max()) + 1, dtype=torch.float64).index_add_(
        0, dist.flatten(), mass.double().flatten())
    total = per_ring.sum()
    if total <= 0:
        return 0
    return int((per_ring.cumsum(0) >= frac * total * (1 - 1e-12)).nonzero()[0])


def position_difference(kernels: Tensor, queries: Sequence[tuple[int, int]], ref: tuple[int, int]) -> float:
    """Largest relative difference between query kernels ``(Q, C, H, W)`` and the kernel of query ``ref`` (one of
    ``queries``), as functions of the offset ``j - i``, on the offsets valid for both; per channel."""
    k0 = kernels[list(queries).index(ref)]
    _, h, w = k0.shape
    worst = 0.0
    for kq, (r, c) in zip(kernels, queries, strict=True):
        dr, dc = r - ref[0], c - ref[1]
        rows, cols = slice(max(0, -dr), min(h, h - dr)), slice(max(0, -dc), min(w, w - dc))
        shifted = kq[:, max(0, dr):min(h, h + dr), max(0, dc):min(w, w + dc)]
        worst = max(worst, float(_rel(k0[:, rows, cols], shifted, (1, 2)).max()))
    return worst


def channel_classes(kernels: Tensor, same: float) -> tuple[list[list[int]], float, float | None]:
    """Classes of channels with the same kernels ``(C, L)`` (greedy, in channel order), the largest difference
    within a class and the smallest between a class representative and a channel outside it (None: one class)."""
    c = kernels.shape[0]
    diff = torch.stack([_rel(kernels[i][None], kernels, (1,)) for i in range(c)])  # (C, C), a row at a time
    left, classes = list(range(c)), []
    while left:
        rep = left[0]
        members = [k for k in left if diff[rep, k] <= same]
        classes.append(members)
        left = [k for k in left if k not in members]
    within = max((float(diff[m][:, m].max()) for m in classes), default=0.0)
    between = min((float(diff[m[0]][[k for k in range(c) if k not in m]].min()) for m in classes if len(m) < c),
                  default=None)
    return classes, within, between


def coupling(matrix: Tensor) -> tuple[str, int]:
    """'none' / 'group' / 'dense' from a ``(C, C)`` same-position coupling magnitude (module docstring), and the
    number of connected channel sets."""
    c = matrix.shape[0]
    linked = matrix > ZERO * matrix.max()
    linked = linked | linked.T
    parent = list(range(c))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in linked.nonzero().tolist():
        parent[find(a)] = find(b)
    sets = len({find(a) for a in range(c)})
    if sets == c:
        return "none", sets
    return ("dense" if sets == 1 else "group"), sets


def _sig(v: float | None) -> float | None:
    return None if v is None else float(f"{v:.3g}")


def probe_mixer(name: str, args: dict[str, Any], ctx: MixerContext, inputs: Tensor, *, dtype: str = "float32",
                randomise: bool = True, seed: int = 0) -> PropertyRow:
    """Measure one mixer's row at the token grids ``inputs`` ``(2, H, W, C)`` (module docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mixer = build_mixer(name, ctx, **args)
    return measure_mixer(mixer, inputs, label(name, args), dtype=dtype, randomise=randomise, seed=seed)


def measure_mixer(mixer: nn.Module, inputs: Tensor, name: str, *, dtype: str = "float32", randomise: bool = True,
                  seed: int = 0) -> PropertyRow:
    """The row (labelled ``name``) of ``mixer`` at the token grids ``inputs`` ``(2, H, W, C)``; ``mixer`` is modified
    (zero layers redrawn when ``randomise``, cast to ``dtype``, eval mode): pass a copy of a model's mixer."""
    inputs = inputs.to(DTYPES[dtype])
    randomised = randomise_zero_layers(mixer, torch.Generator().manual_seed(seed)) if randomise else []
    mixer = mixer.to(DTYPES[dtype]).eval().requires_grad_(False)
    grid = (int(inputs.shape[1]), int(inputs.shape[2]))
    c = inputs.shape[-1]
    queries = central_queries(grid)
    centre = (grid[0] // 2, grid[1] // 2)  # where the channel structure (aggregation, full mixer) is measured
    same = SAME[dtype]

    aggs = [aggregation(mixer, x) for x in inputs.split(1)]
    cross = 0.0  # share of the aggregation's |J| mass between different channels, at the centre
    for agg in aggs:
        per = vjp_rows(agg.apply, agg.value, [(*centre, ch) for ch in range(c)]).abs().double().sum((1, 2))
        total = per.sum()  # per: (C_out, C_in) mass of each output channel's row per input channel
        off = per.fill_diagonal_(0).sum()  # summed directly, so structural zeros stay exactly zero
        cross = max(cross, float(off / total) if total > 0 else 0.0)
    depthwise = cross <= ZERO
    if not depthwise:  # a probe per query and channel: every other row and column of the central queries
        first = queries[0]
        queries = [(r, cc) for r, cc in queries if (r - first[0]) % 2 == 0 and (cc - first[1]) % 2 == 0]
    kernels, couplings = [], []
    for x, agg in zip(inputs.split(1), aggs, strict=True):
        if depthwise:  # one probe per query gives every channel's kernel
            rows = vjp_rows(agg.apply, agg.value, [(r, cc, None) for r, cc in queries]).permute(0, 3, 1, 2)
        else:
            full = vjp_rows(agg.apply, agg.value, [(r, cc, ch) for r, cc in queries for ch in range(c)])
            rows = full.unflatten(0, (len(queries), c)).diagonal(dim1=1, dim2=4).permute(0, 3, 1, 2)
        kernels.append(spread_keys(rows, agg.key_stride, grid))  # (Q, C, H, W) on the map grid
        couplings.append(vjp_rows(mixer, x, [(*centre, ch) for ch in range(c)])[:, centre[0], centre[1]].abs())
    k = torch.stack(kernels)  # (2 inputs, Q, C, H, W)

    mass = k.abs().sum(2)  # (2, Q, H, W)
    radius = sum(chebyshev_radius(mass[i, q], query) for i in range(k.shape[0])
                 for q, query in enumerate(queries)) / (k.shape[0] * len(queries))
    reach = (k.abs() > ZERO * k.abs().max()).any(2).any(0)  # (Q, H, W): nonzero for some channel and input
    coverage = reach.flatten(1).double().mean(1)
    ref = min(queries, key=lambda q: (q[0] - centre[0]) ** 2 + (q[1] - centre[1]) ** 2)
    pos_diff = max(position_difference(k[i], queries, ref) for i in range(k.shape[0]))
    classes, within, between = channel_classes(k.permute(2, 0, 1, 3, 4).flatten(1), same)
    group = min(len(m) for m in classes)
    input_diff = float(_rel(k[0], k[1], (0, 2, 3)).max())
    kind, sets = coupling(torch.stack(couplings).amax(0))  # (C_out, C_in), either input

    notes: dict[str, Any] = {"aggregation": aggs[0].what}
    if randomised:
        notes["randomised"] = randomised
    notes["evidence"] = {"coverage": _sig(float(coverage.max())), "position_diff": _sig(pos_diff),
                         "channel_diff_within": _sig(within), "channel_diff_between": _sig(between),
                         "input_diff": _sig(input_diff), "aggregation_cross_channel": _sig(cross),
                         "coupled_sets": sets, "queries": len(queries)}
    if len({len(m) for m in classes}) > 1:
        notes["channel_classes"] = [len(m) for m in classes]
    return PropertyRow(mixer=name, support_radius=round(radius, 2), sparse=bool(coverage.max() < 1),
                       shared_across_positions=pos_diff <= same, shared_across_channels=group > 1,
                       channel_group=group, dynamic=input_diff > same, channel_coupling=kind, notes=notes)


def default_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every mixer of ``MIXERS`` at its defaults, depth-wise attention as its windowed and global variants."""
    return [(n, a) for n in MIXERS for a in VARIANTS.get(n, ({},))]


def properties(mixer_names: Sequence[MixerSpec] | None = None, *, dim: int = 32, num_heads: int = 4,
               resolution: tuple[int, int] = (14, 14), inputs: str = "fashion-mnist", dtype: str = "float32",
               randomise: bool | None = None, seed: int = 0, model: ModelSource | None = None,
               weights: str = "model", data: DataConfig | DataBundle | None = None, device: str = "cpu",
               **overrides: Any) -> PropertiesRecord:
    """Measured Han et al. properties of each mixer (module docstring), one :class:`PropertyRow` per mixer.

    ``model`` (a MixerNet, a registered name built with ``overrides`` such as ``img_size=32, in_chans=1``, or a run
    directory and its ``weights``): instead of mixers built alone, a copy of the mixer of the first block of each
    stage of that model (:func:`.dynconv.stage_mixers`), with the model's weights, probed at the inputs it
    receives in a forward pass (eval mode) of two real eval images of ``data`` (default: the run's data, else
    Fashion-MNIST at the model's geometry); rows are labelled ``'stages.i.blocks.0.mixer (name)'`` and note their
    ``input`` ``[H, W, C]``. ``mixer_names`` / ``dim`` / ``num_heads`` / ``resolution`` / ``inputs`` then do not
    apply. ``randomise`` None (default): redraw zero layers except in a trained run (``source['trained']``),
    whose weights are measured as they are.

    ``mixer_names``: names (default arguments) or ``(name, args)`` pairs; None: :func:`default_specs`. Each mixer
    is built by ``build_mixer(name, MixerContext(dim, num_heads, resolution=resolution))`` (seeded by ``seed``), its
    zero-initialised layers redrawn when ``randomise``, and probed at two token grids of
    :func:`.dynconv.feature_grids` (``inputs``) in ``dtype``."""
    check_choice("dtype", dtype, DTYPES)
    if model is not None:
        check_model_mode(mixer_names, inputs, "mixer_names")
        stages, source, described = stage_mixers(model, data=data, weights=weights, device=device, **overrides)
        redraw = not source.get("trained") if randomise is None else randomise
        rows = []
        for st in stages:
            row = measure_mixer(copy.deepcopy(st.mixer), st.inputs, st.label, dtype=dtype, randomise=redraw, seed=seed)
            row.notes = {**st.notes, **row.notes}
            rows.append(row)
        return PropertiesRecord(source={**source, "mode": "eval", "randomise_zero_layers": redraw,
                                        "probed": "the mixer of the first block of each stage"},
                                dtype=dtype, inputs=described, tolerance=SAME[dtype], rows=rows)
    if overrides:
        raise ConfigError(f"overrides {sorted(overrides)} are invalid without model=...")
    randomise = True if randomise is None else randomise
    grid = check_geometry(dim, num_heads, resolution, min_side=8)
    specs = mixer_specs(mixer_names, default_specs(), "mixer_names")
    x, described = feature_grids(2, dim, grid, inputs, seed=seed, dtype=DTYPES[dtype])
    ctx = MixerContext(dim=dim, num_heads=num_heads, resolution=grid)
    rows = [probe_mixer(name, args, ctx, x, dtype=dtype, randomise=randomise, seed=seed) for name, args in specs]
    return PropertiesRecord(source={"kind": "mixers", "init": "trunc_normal (build_mixer)", "mode": "eval",
                                    "randomise_zero_layers": randomise},
                            dim=dim, num_heads=num_heads, resolution=list(grid), dtype=dtype, inputs=described,
                            tolerance=SAME[dtype], rows=rows)


# ---- mixerlab analyze properties ------------------------------------------------------------------------------

def _run(args: argparse.Namespace) -> PropertiesRecord:
    model, overrides = model_args(args)
    if model is not None:
        return properties(args.mixers, inputs=args.inputs, dtype=args.dtype, randomise=False if args.no_randomise
                          else None, seed=args.seed, model=model, weights=args.weights, **overrides)
    return properties(args.mixers, dim=args.dim, num_heads=args.heads, resolution=tuple(args.resolution),
                      inputs=args.inputs, dtype=args.dtype, randomise=not args.no_randomise, seed=args.seed)


def _yes(v: bool) -> str:
    return "yes" if v else "no"


def _table(record: Record) -> str:
    assert isinstance(record, PropertiesRecord)
    n = max([25] + [len(r.mixer) for r in record.rows])
    head = (f"{'mixer':<{n}} {'radius':>6}  {'sparse':<6}  {'shared:pos':<10}  {'shared:ch':<9}  {'group':>5}  "
            f"{'dynamic':<7}  coupling")
    lines = [head, "-" * len(head)]
    for r in record.rows:
        lines.append(f"{r.mixer:<{n}} {r.support_radius:>6.2f}  {_yes(r.sparse):<6}  "
                     f"{_yes(r.shared_across_positions):<10}  {_yes(r.shared_across_channels):<9}  "
                     f"{r.channel_group:>5}  {_yes(r.dynamic):<7}  {r.channel_coupling}")
    randomised = [f"{r.mixer}: {', '.join(r.notes['randomised'])}" for r in record.rows if r.notes.get("randomised")]
    fallback = [r.mixer for r in record.rows if r.notes.get("aggregation") == FALLBACK]
    if record.resolution:
        h, w = record.resolution
        away = f">= {min(h, w) // 4}"
        where = f"{h}x{w} map, dim {record.dim}, {record.num_heads} heads"
    else:  # a model's stage mixers: each its own map
        away = "min(H, W) // 4 or more"
        maps = ", ".join("x".join(map(str, r.notes.get("input", []))) for r in record.rows)
        where = f"model {record.source.get('model')} ({_trained(record.source)}), inputs (H x W x C) {maps}"
    lines.append(f"radius: Chebyshev radius (tokens) holding {record.mass:.0%} of the aggregation's |Jacobian|, mean "
                 f"over queries {away} from the borders; group: channels per shared kernel; coupling: "
                 f"the full mixer's channels at one position")
    lines.append(f"{where}, {record.dtype}, inputs: "
                 f"{record.inputs.get('kind')}; randomised zero-initialised layers: {'; '.join(randomised) or 'none'}"
                 + (f"; full-mixer fallback: {', '.join(fallback)}" if fallback else ""))
    return "\n".join(lines)


def _json(record: Record) -> list[dict[str, Any]]:
    assert isinstance(record, PropertiesRecord)
    return record.to_dict()["rows"]


def _configure(p: argparse.ArgumentParser) -> None:
    add_geometry_options(p)
    add_model_options(p)
    p.add_argument("--no-randomise", action="store_true",
                   help="keep zero-initialised layers (DCN then measures as a static 3x3 average; a trained "
                        "--run keeps them by default)")


register(AnalysisCommand("properties", "measured mixer properties: Han et al.'s table (SPEC 2.4, 8.4)",
                         _configure, _run, _table, needs_model=False, as_json=_json))
