"""Attention as a dynamic depth-wise convolution, and a depth-wise convolution as static attention. SPEC 8.5.

Zhou, Loy, Dai (2023, "Interpret Vision Transformers as ConvNets with Dynamic Convolutions") read the
attention-value product as a convolution whose kernel is computed from the input; Han et al. (2022, "On the
Connection between Local Attention and Dynamic Depth-wise Convolution") show local attention is a channel-wise
locally connected layer. Every attention mixer of mixerlab computes, for a grid ``x`` of shape ``(B, H, W, C)``::

    out = proj(y),    y[b, i, c] = sum_j A[b, g(c), i, j] v[b, j, c]                        (1)

with ``A = act(s q k^T + bias)`` its aggregation weights (``aggregation_weights(x)``, ``(B, G, Nq, Nk)``), ``v``
its value tensor ``(B, Hk, Wk, C)`` and ``g(c) = c // (C / G)`` the head of channel ``c`` (G = heads; G = C for
depth-wise attention, where every channel is a head). (1) is a depth-wise convolution whose kernel depends on
``x`` (dynamic), differs at every output position (inhomogeneous) and is shared by the ``C / G`` channels of a
head. :func:`as_dynamic_conv` returns it as a :class:`DynamicConv`:

* ``kernels`` ``(B, Nq, Nk, G)``: ``K[b, i, j, g] = A[b, g, i, j]`` (output position x input position x group);
* ``conv(v)`` re-applies them as an explicit convolution: per-position ``k x k`` taps (``local_kernels()``,
  ``(B, G, k*k, H, W)``, ``k = 2R + 1`` with R the largest Chebyshev offset holding a nonzero weight: 13 for
  7 x 7 windows, ``2H - 1`` for global attention) applied by mixerlab's inhomogeneous dynamic depth-wise
  convolution :func:`mixerlab.mixers.dynamic.inhomogeneous_depthwise_conv` (the ``idynconv`` operator, zero
  padding), so the attention output is reproduced by a convolution operator, not by another attention;
* ``aggregate(v)``: (1) as a dense contraction (the form the property probe differentiates).

Keys on a coarser grid (PVT's spatial-reduction attention, ratio r): key ``j`` stands for the ``r x r`` patch of
the bottom/right zero-padded map it was reduced from. On the map grid (1) is a convolution of the
nearest-upsampled value ``v_up[p] = v[j(p)]`` with key j's weight spread evenly over the ``n_j`` on-map positions
of its patch, ``K_map[i, p] = K[i, j(p)] / n_j`` (:func:`spread_keys`), so that
``sum_p K_map[i, p] v_up[p] = sum_j K[i, j] v[j]`` exactly.

No mixer has a value accessor, so the value tensor is rebuilt from its public pieces, in the layouts its
``aggregation_weights`` docstring states: ``attention`` / ``window``: ``qkv(x)[..., 2C:]``; ``halo``: the ``v`` half
of each head's ``[k | v]`` channels of ``kv(x)``; ``sra``: ``kv(LN(Conv_r(pad(x))))[..., C:]`` (``x`` plus the
position table first when ``pos_embed='input'``); ``dwattn``: ``v(x)``. All five project with ``proj``.

Conversely (:func:`as_attention`) a depth-wise convolution with kernels ``w_c`` (``k x k``, dilation d, zero padding
p, stride 1) is static attention with one ``N x N`` map per channel::

    A[c, i, j] = w_c[(r_j - r_i + p) / d, (c_j - c_i + p) / d]  where that tap exists, else 0;    y = A v + b

(taps that fall on the zero padding are simply missing from a border query's row). The analysis :func:`dynconv`
(``mixerlab analyze dynconv``) reconstructs every attention mixer x activation and the depth-wise convolution
mixers this way and records the relative errors; its figure draws the kernels of a few query positions.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..data import DataBundle, DataConfig
from ..errors import ConfigError, check_choice, check_int
from ..mixers import MIXERS, MixerContext, build_mixer
from ..mixers.attend import ATTN_ACTS
from ..mixers.attention import GlobalAttention
from ..mixers.conv import DWConv, DWNetConv
from ..mixers.dwattn import DepthwiseAttention
from ..mixers.dynamic import inhomogeneous_depthwise_conv
from ..mixers.halo import HaloAttention
from ..mixers.sra import SpatialReductionAttention
from ..mixers.window import WindowAttention, pad_to_multiple
from ..zoo import create_model
from .base import ModelSource, Record, resolve_model
from .cli import AnalysisCommand, add_model_options, cli_model, register
from .erf import check_in_chans, default_data, eval_images

Project = Callable[[Tensor], Tensor]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
INPUTS = ("fashion-mnist", "random")
# Mixer variants the analyses show besides each mixer's defaults (the issue: depth-wise attention windowed and
# global; its default is global, so these two rows replace the default one).
VARIANTS: dict[str, tuple[dict[str, Any], ...]] = {"dwattn": ({"window_size": 7}, {"window_size": None})}
FEATURE_MODEL = "u_convnext_micro"  # whose fresh stem turns images into token grids (STM-Eval's unified stem)
MixerSpec = str | tuple[str, dict[str, Any]]


# ---- shared by the mixer analyses (also used by mixerlab.analysis.properties) ----------------------------

def label(name: str, args: dict[str, Any]) -> str:
    """``name`` or ``name(k=v, ...)``: how records and tables name a mixer built with ``args``."""
    return name if not args else f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def mixer_specs(specs: Sequence[MixerSpec] | None, default: Sequence[tuple[str, dict[str, Any]]],
                where: str = "mixers") -> list[tuple[str, dict[str, Any]]]:
    """``(name, args)`` pairs from names (default args) or pairs; ``default`` when None. Names are checked."""
    if specs is None:
        return list(default)
    out = []
    for i, s in enumerate(specs):
        name, args = (s, {}) if isinstance(s, str) else s
        check_choice(f"{where}[{i}]", name, sorted(MIXERS))
        out.append((name, dict(args)))
    return out


def check_geometry(dim: Any, num_heads: Any, resolution: Any, min_side: int = 4) -> tuple[int, int]:
    check_int("dim", dim)
    check_int("num_heads", num_heads)
    if dim % num_heads:
        raise ConfigError(f"num_heads={num_heads} is invalid for dim={dim}: the heads must divide the width")
    if (not isinstance(resolution, (tuple, list)) or len(resolution) != 2
            or any(not isinstance(r, int) or isinstance(r, bool) or r < min_side for r in resolution)):
        raise ConfigError(f"resolution={resolution!r} is invalid: two integers (H, W), each >= {min_side}")
    return int(resolution[0]), int(resolution[1])


def feature_grids(n: int, dim: int, resolution: tuple[int, int], inputs: str = "fashion-mnist", *, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> tuple[Tensor, dict[str, Any]]:
    """``n`` token grids ``(n, H, W, dim)`` for probing a mixer alone, and a description for the record.

    ``'fashion-mnist'``: real feature maps, the stem output of a fresh ``u_convnext_micro`` (STM-Evaluation's
    unified stem at width ``dim``, its trunc-normal init, seeded by ``seed``) on ``n`` stratified Fashion-MNIST
    eval images resized to ``4 max(H, W)`` pixels (the stem's stride is 4), cropped to ``H x W`` tokens: what
    a mixer of the first stage sees (LayerNormed tokens with the spatial structure of real images).
    ``'random'``: i.i.d. standard-normal tokens."""
    check_choice("inputs", inputs, INPUTS)
    h, w = resolution
    if inputs == "random":
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, h, w, dim, generator=g, dtype=torch.float64).to(dtype)
        return x, {"kind": "random", "distribution": "standard normal", "seed": seed, "n": n}
    side = 4 * max(h, w)
    images, labels, bundle = eval_images(DataConfig(name="fashion-mnist", img_size=side, in_chans=1, seed=seed), n)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(FEATURE_MODEL, img_size=side, in_chans=1, num_classes=10,
                             dims=[dim, 2 * dim, 4 * dim, 8 * dim])
    with torch.no_grad():
        x = model.eval().stem(images)[:, :h, :w].to(dtype)
    return x, {"kind": "fashion-mnist stem features", "model": FEATURE_MODEL, "img_size": side, "n": n,
               "labels": labels.tolist(), "seed": seed, "data": bundle.source}


# ---- the stage mixers of a model, at the inputs they receive (shared with mixerlab.analysis.properties) ------

@dataclass(eq=False)
class StageMixer:
    """The mixer of the first block of one stage of a model and the real inputs it receives.

    ``label``: ``'<qualified name> (<registered mixer name>)'``; ``inputs`` ``(n, H, W, C)``: what the mixer got in
    ``model(images)`` (eval mode), captured by a forward pre-hook; ``notes``: how the inputs were read."""

    label: str
    mixer: nn.Module
    inputs: Tensor
    notes: dict[str, Any] = field(default_factory=dict)


def first_block_mixers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, mixer)`` of the first block of each stage: ``stages.i.blocks.0.mixer`` (hierarchical),
    ``blocks.0.mixer`` (isotropic: one stage)."""
    if hasattr(net, "stages"):
        return [(f"stages.{i}.blocks.0.mixer", s.blocks[0].mixer) for i, s in enumerate(net.stages)]
    if hasattr(net, "blocks"):
        return [("blocks.0.mixer", net.blocks[0].mixer)]
    raise ConfigError(f"model={type(net).__name__} is invalid: a MixerNet (stages[i].blocks or blocks)")


def mixer_name(mixer: nn.Module) -> str:
    """The registered name of ``mixer``'s class (its class name when unregistered)."""
    return next((n for n, cls in MIXERS.items() if type(mixer) is cls), type(mixer).__name__)


def stage_mixers(model: ModelSource, *, num_images: int = 2, data: DataConfig | DataBundle | None = None,
                 weights: str = "model", device: str = "cpu", **overrides: Any
                 ) -> tuple[list[StageMixer], dict[str, Any], dict[str, Any]]:
    """The first-block mixer of every stage of ``model`` (:func:`mixerlab.analysis.base.resolve_model`: a MixerNet,
    a registered name built with ``overrides``, or a run directory and its ``weights``) with the inputs it receives
    in a forward pass of ``num_images`` real eval images of ``data`` (default: the run's data, else Fashion-MNIST
    at the model's geometry, :func:`mixerlab.analysis.erf.default_data`), in eval mode (restored afterwards).
    Returns the stage mixers, the model's source and a description of the inputs.

    An isotropic model with a class token gives its sequence mixer ``(B, 1 + H W, C)`` tokens: the class token
    is dropped and the ``H x W`` grid part is what is probed (noted in each StageMixer's ``notes``)."""
    check_int("num_images", num_images)
    net, source = resolve_model(model, which=weights, device=device, **overrides)
    targets = first_block_mixers(net)
    data = default_data(net, source) if data is None else data
    if isinstance(data, DataConfig):
        check_in_chans(net, data.in_chans)
    images, labels, bundle = eval_images(data, num_images)
    check_in_chans(net, images.shape[1])
    captured: dict[str, Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, a, q=q: captured.setdefault(q, a[0].detach().clone()))
             for q, m in targets]
    ref = next(net.parameters())
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()(images.to(ref.device, ref.dtype))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    out = []
    for q, m in targets:
        x, notes = captured[q], {}
        if x.dim() == 3:  # isotropic sequence tokens: (B, prefix + H W, C)
            prefix = int(getattr(net, "num_prefix_tokens", 0))
            x = x[:, prefix:].unflatten(1, tuple(net.grid))
            if prefix:
                notes["class_token"] = ("dropped: the mixer is probed on the H x W grid tokens alone (in the model "
                                        "the class token is one more key)")
        notes["input"] = list(x.shape[1:])
        out.append(StageMixer(f"{q} ({mixer_name(m)})", m, x, notes))
    described = {"kind": "model forward: the input each mixer receives", "n": num_images,
                 "img_size": list(images.shape[-2:]), "labels": labels.tolist(), "data": bundle.source}
    return out, source, described


def check_model_mode(mixers: Any, inputs: str, where: str) -> None:
    """With a model, the mixers and their inputs are the model's: the mixer-name options are refused."""
    if mixers is not None:
        raise ConfigError(f"{where}={mixers!r} is invalid with model=...: the model's stage mixers are probed")
    if inputs != "fashion-mnist":
        raise ConfigError(f"inputs={inputs!r} is invalid with model=...: the inputs are what each mixer receives "
                          "in the model's forward pass")


def model_args(args: argparse.Namespace) -> tuple[ModelSource | None, dict[str, Any]]:
    """``(model source, overrides)`` from the options of :func:`add_model_options`; ``(None, {})`` when neither
    ``--model`` nor ``--run`` is given (geometry options then are an error)."""
    if args.model is None and args.run is None:
        given = [o for o, v in (("--img-size", args.img_size), ("--in-chans", args.in_chans),
                                ("--num-classes", args.num_classes)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} {'need' if len(given) > 1 else 'needs'} --model NAME or --run DIR")
        return None, {}
    return cli_model(args)


def relative_error(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||`` (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    den, num = b.norm(), (a - b).norm()
    return float(num / den) if den > 0 else float(num)


# ---- attention -> dynamic depth-wise convolution -----------------------------------------------------------

def spread_keys(t: Tensor, stride: int, grid: tuple[int, int]) -> Tensor:
    """Weights on a key grid reduced by ``stride`` ``(..., Hr, Wr)`` -> the map grid ``(..., H, W)``: each key's
    weight divided evenly among the on-map positions of its ``stride x stride`` patch (the module docstring)."""
    if stride == 1:
        return t
    h, w = grid
    on_map = torch.zeros(h + -h % stride, w + -w % stride, dtype=t.dtype, device=t.device)
    on_map[:h, :w] = 1
    counts = on_map.unflatten(0, (-1, stride)).unflatten(2, (-1, stride)).sum((1, 3))  # (Hr, Wr)
    return upsample_keys(t / counts, stride, grid)


def upsample_keys(t: Tensor, stride: int, grid: tuple[int, int], dims: tuple[int, int] = (-2, -1)) -> Tensor:
    """Nearest upsampling of key-grid axes ``dims`` by ``stride``, cropped to ``grid``: ``t_up[p] = t[j(p)]``."""
    t = t.repeat_interleave(stride, dims[0]).repeat_interleave(stride, dims[1])
    return t.narrow(dims[0], 0, grid[0]).narrow(dims[1], 0, grid[1])


@dataclass(eq=False)
class DynamicConv:
    """An attention mixer's aggregation at one input as a dynamic depth-wise convolution (module docstring).

    ``kernels`` ``(B, Nq, Nk, G)``: output positions (the ``H x W`` map, row-major) x input positions (the key
    grid ``value.shape[1:3]``, row-major; ``key_stride`` map tokens per key step) x channel groups; channel c
    uses group ``c // (C / G)``. ``value`` ``(B, Hk, Wk, C)``: the value tensor at that input. ``project``: the
    mixer's output projection, so ``project(conv(value)) == mixer(x)``."""

    kernels: Tensor
    value: Tensor
    grid: tuple[int, int]
    key_stride: int = 1
    project: Project | None = field(default=None, repr=False)

    @property
    def groups(self) -> int:
        return self.kernels.shape[-1]

    def _check_value(self, v: Tensor) -> None:
        if v.dim() != 4 or v.shape[1:] != self.value.shape[1:]:
            raise ConfigError(f"v of shape {tuple(v.shape)} is invalid: the value tensor (B, Hk, Wk, C) = "
                              f"(B, {', '.join(map(str, self.value.shape[1:]))}) these kernels apply to")
        if self.kernels.shape[0] not in (1, v.shape[0]):
            raise ConfigError(f"v with batch {v.shape[0]} is invalid for kernels of batch {self.kernels.shape[0]}")

    def aggregate(self, v: Tensor) -> Tensor:
        """(1) as a dense contraction: ``(B, Hk, Wk, C) -> (B, H, W, C)``; kernels of batch 1 apply to every v."""
        self._check_value(v)
        vg = v.flatten(1, 2).unflatten(-1, (self.groups, -1))  # (B, Nk, G, C/G)
        k = self.kernels.to(v.dtype)
        y = torch.einsum("ijg,bjgd->bigd", k[0], vg) if k.shape[0] == 1 else torch.einsum("bijg,bjgd->bigd", k, vg)
        return y.flatten(2).unflatten(1, self.grid)

    def map_kernels(self) -> Tensor:
        """``(B, N, N, G)`` kernels over map positions (reduced keys spread over their patches, :func:`spread_keys`)."""
        if self.key_stride == 1:
            return self.kernels
        k = self.kernels.unflatten(2, self.value.shape[1:3]).movedim(-1, 2)  # (B, Nq, G, Hr, Wr)
        return spread_keys(k, self.key_stride, self.grid).flatten(-2).movedim(2, -1)

    def radius(self) -> int:
        """Largest Chebyshev offset (in map tokens) between a query and a key it gives a nonzero weight."""
        nz = (self.map_kernels() != 0).any(0).any(-1)  # (Nq, N)
        qi, kj = nz.nonzero(as_tuple=True)
        if qi.numel() == 0:
            return 0
        w = self.grid[1]
        return int(torch.maximum((qi // w - kj // w).abs(), (qi % w - kj % w).abs()).max())

    def local_kernels(self) -> Tensor:
        """Per-position taps ``(B, G, k*k, H, W)``, ``k = 2 radius() + 1``, tap ``(a, b)`` (row-major) at offset
        ``(a - R, b - R)`` from the query (the layout of :func:`inhomogeneous_depthwise_conv`); taps off the map
        are zero (they meet its zero padding)."""
        km = self.map_kernels()
        b, n, _, g = km.shape
        h, w = self.grid
        r = self.radius()
        offs = torch.arange(-r, r + 1, device=km.device)
        rows = torch.arange(h, device=km.device)[:, None, None, None] + offs[None, None, :, None]  # (h, 1, k, 1)
        cols = torch.arange(w, device=km.device)[None, :, None, None] + offs[None, None, None, :]  # (1, w, 1, k)
        valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        key = torch.where(valid, rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1), n).reshape(n, -1)  # (N, k*k)
        padded = torch.cat([km, km.new_zeros(b, n, 1, g)], dim=2)  # key index n reads a zero
        taps = padded.gather(2, key[None, :, :, None].expand(b, -1, -1, g))  # (B, N, k*k, G)
        return taps.permute(0, 3, 2, 1).reshape(b, g, -1, h, w)

    def conv(self, v: Tensor) -> Tensor:
        """The kernels re-applied to ``v`` ``(B, Hk, Wk, C)`` as an inhomogeneous dynamic depth-wise convolution
        (mixerlab's ``idynconv`` operator on the map grid; reduced keys nearest-upsampled first)."""
        self._check_value(v)
        vm = upsample_keys(v, self.key_stride, self.grid, dims=(1, 2)) if self.key_stride > 1 else v
        y = inhomogeneous_depthwise_conv(vm.permute(0, 3, 1, 2), self.local_kernels().to(v.dtype))
        return y.permute(0, 2, 3, 1)

    def output(self) -> Tensor:
        """``project(conv(value))``: the mixer's output rebuilt from the convolution."""
        if self.project is None:
            raise ConfigError("project=None: this DynamicConv was built without the mixer's output projection")
        return self.project(self.conv(self.value))


def _width(mixer: nn.Module) -> int:
    return mixer.proj.in_features


def _grid(x: Tensor) -> tuple[int, int]:
    return int(x.shape[1]), int(x.shape[2])


def _qkv_value(m: GlobalAttention | WindowAttention, x: Tensor) -> DynamicConv:
    c = _width(m)
    return DynamicConv(m.aggregation_weights(x).permute(0, 2, 3, 1), m.qkv(x)[..., 2 * c:], _grid(x), 1, m.proj)


def _halo(m: HaloAttention, x: Tensor) -> DynamicConv:
    kv = m.kv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).unflatten(-1, (m.num_heads, 2, m.head_dim))
    return DynamicConv(m.aggregation_weights(x).permute(0, 2, 3, 1), kv[..., 1, :].flatten(-2), _grid(x), 1, m.proj)


def _sra(m: SpatialReductionAttention, x: Tensor) -> DynamicConv:
    c, r = _width(m), m.sr_ratio
    xin = m.add_pos_embed(x) if m.pos_mode == "input" else x
    if m.sr is not None:
        xr = m.norm(m.sr(pad_to_multiple(xin, r, r).permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    else:
        xr = xin
    return DynamicConv(m.aggregation_weights(x).permute(0, 2, 3, 1), m.kv(xr)[..., c:], _grid(x), r, m.proj)


def _dwattn(m: DepthwiseAttention, x: Tensor) -> DynamicConv:
    return DynamicConv(m.aggregation_weights(x).permute(0, 2, 3, 1), m.v(x), _grid(x), 1, m.proj)


# The attention family: class -> reader of its kernels and value tensor (a new attention mixer needs a line here;
# tests/test_analysis_dynconv.py fails for any mixer with aggregation_weights that is missing).
EXTRACTORS: dict[type[nn.Module], Callable[[Any, Tensor], DynamicConv]] = {
    GlobalAttention: _qkv_value,
    WindowAttention: _qkv_value,
    HaloAttention: _halo,
    SpatialReductionAttention: _sra,
    DepthwiseAttention: _dwattn,
}


def _check_grid(x: Any, width: int, what: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[-1] != width:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"x of shape {shape} is invalid for {what}: a channels-last grid (B, H, W, {width})")


def as_dynamic_conv(mixer: nn.Module, x: Tensor) -> DynamicConv:
    """The aggregation of attention mixer ``mixer`` at input ``x`` ``(B, H, W, C)`` as a :class:`DynamicConv`
    (kernels, value tensor, output projection; the module docstring gives the maths). Runs in the mixer's
    mode; put it in eval mode for a mixer that has dropout or batch statistics."""
    extract = next((f for cls, f in EXTRACTORS.items() if isinstance(mixer, cls)), None)
    if extract is None:
        raise ConfigError(f"mixer={type(mixer).__name__} is invalid for as_dynamic_conv: one of the attention "
                          f"mixers {[c.__name__ for c in EXTRACTORS]} (a depth-wise convolution goes the other way: "
                          "as_attention)")
    _check_grid(x, _width(mixer), type(mixer).__name__)
    return extract(mixer, x)


# ---- depth-wise convolution -> static attention ------------------------------------------------------------

@dataclass(eq=False)
class StaticAttention:
    """A depth-wise convolution as static attention: ``y[b, i, c] = sum_j attention[c, i, j] v[b, j, c] + bias[c]``.

    ``attention`` ``(C, N, N)`` over map positions (row-major); ``value`` ``(B, H, W, C)`` the conv's input at the
    given x; ``project`` what the mixer applies after the conv, so ``project(attend(value)) == mixer(x)``."""

    attention: Tensor
    bias: Tensor | None
    value: Tensor
    grid: tuple[int, int]
    project: Project | None = field(default=None, repr=False)

    def attend(self, v: Tensor) -> Tensor:
        if v.dim() != 4 or v.shape[1:] != self.value.shape[1:]:
            raise ConfigError(f"v of shape {tuple(v.shape)} is invalid: the conv's input grid "
                              f"(B, {', '.join(map(str, self.value.shape[1:]))})")
        y = torch.einsum("cij,bjc->bic", self.attention.to(v.dtype), v.flatten(1, 2))
        if self.bias is not None:
            y = y + self.bias.to(v.dtype)
        return y.unflatten(1, self.grid)

    def output(self) -> Tensor:
        if self.project is None:
            raise ConfigError("project=None: this StaticAttention was built without the mixer's projection")
        return self.project(self.attend(self.value))


def depthwise_attention_map(conv: nn.Conv2d, grid: tuple[int, int]) -> Tensor:
    """``(C, N, N)`` static attention of depth-wise ``conv`` on an ``H x W`` map (zero padding: missing taps)."""
    c = conv.in_channels
    if conv.groups != c or conv.out_channels != c or conv.stride != (1, 1) or conv.padding_mode != "zeros" \
            or isinstance(conv.padding, str):
        raise ConfigError(f"conv={conv} is invalid: a depth-wise Conv2d (groups = in = out channels), stride 1, "
                          "explicit zero padding")
    (kh, kw), (dh, dw), (ph, pw) = conv.kernel_size, conv.dilation, conv.padding
    if (kh - 1) * dh != 2 * ph or (kw - 1) * dw != 2 * pw:
        raise ConfigError(f"conv padding={conv.padding} is invalid: a same-size depth-wise conv "
                          f"(padding = dilation (k - 1) / 2 = {((kh - 1) * dh // 2, (kw - 1) * dw // 2)})")
    h, w = grid
    dev = conv.weight.device
    a, b = torch.meshgrid(torch.arange(kh, device=dev), torch.arange(kw, device=dev), indexing="ij")
    qr, qc = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    kr = qr.flatten()[:, None] + (a.flatten() * dh - ph)[None]  # (N, taps) key row of every tap of every query
    kc = qc.flatten()[:, None] + (b.flatten() * dw - pw)[None]
    valid = (kr >= 0) & (kr < h) & (kc >= 0) & (kc < w)
    q = torch.arange(h * w, device=dev)[:, None].expand_as(kr)[valid]
    tap = torch.arange(kh * kw, device=dev)[None].expand_as(kr)[valid]
    attn = conv.weight.new_zeros(c, h * w, h * w)
    attn[:, q, (kr * w + kc)[valid]] = conv.weight.detach().flatten(1)[:, tap]  # distinct taps hit distinct keys
    return attn


def _cl(t: Tensor) -> Tensor:
    return t.permute(0, 2, 3, 1)


def _nchw(t: Tensor) -> Tensor:
    return t.permute(0, 3, 1, 2)


def as_attention(mixer: nn.Module, x: Tensor) -> StaticAttention:
    """A depth-wise convolution mixer as static attention at input ``x`` ``(B, H, W, C)``: ``dwconv`` (value
    ``pw1(x)``, projection ``pw2``), ``dwnet`` with ``conv='static'`` (value ``ReLU(BN(conv0(x)))``, projection
    ``BN(conv2(ReLU(BN(.))))``) or a bare depth-wise ``nn.Conv2d`` on NCHW maps (value x as a grid)."""
    if isinstance(mixer, DWConv):
        c = mixer.dw.in_channels
        _check_grid(x, c, "DWConv")
        return StaticAttention(depthwise_attention_map(mixer.dw, _grid(x)), mixer.dw.bias, _cl(mixer.pw1(_nchw(x))),
                               _grid(x), lambda y: _cl(mixer.pw2(_nchw(y))))
    if isinstance(mixer, DWNetConv) and isinstance(mixer.conv, nn.Conv2d):
        m = mixer
        _check_grid(x, m.conv.in_channels, "DWNetConv")
        value = _cl(m.act(m.bn0(m.conv0(_nchw(x)))))
        return StaticAttention(depthwise_attention_map(m.conv, _grid(x)), m.conv.bias, value, _grid(x),
                               lambda y: _cl(m.bn2(m.conv2(m.act(m.bn(_nchw(y)))))))
    if isinstance(mixer, nn.Conv2d):
        _check_grid(x, mixer.in_channels, "a depth-wise Conv2d")
        return StaticAttention(depthwise_attention_map(mixer, _grid(x)), mixer.bias, x, _grid(x), lambda y: y)
    raise ConfigError(f"mixer={type(mixer).__name__} is invalid for as_attention: a static depth-wise convolution "
                      "(DWConv, DWNetConv with conv='static', or a depth-wise nn.Conv2d); attention mixers go the "
                      "other way: as_dynamic_conv")


# ---- the analysis --------------------------------------------------------------------------------------------

@dataclass
class Reconstruction:
    """One mixer rebuilt through the other form: ``rel_error = ||rebuilt - mixer(x)|| / ||mixer(x)||``.

    ``form``: 'dynamic conv' (attention re-applied as an inhomogeneous dynamic depth-wise conv; ``attn_act`` its
    activation, ``kernel_size`` the k of its per-position taps) or 'static attention' (a depth-wise conv as
    N x N maps; ``attn_act`` None). ``kernels``: the shape of the extracted kernels."""

    mixer: str
    attn_act: str | None
    form: str
    rel_error: float
    kernels: list[int]
    kernel_size: int | None = None


@dataclass
class DynConvRecord(Record):
    """The reconstructions of :func:`dynconv` (one row per mixer and activation) and the probing geometry."""

    dim: int = 0
    num_heads: int = 0
    resolution: list[int] = field(default_factory=list)
    dtype: str = "float32"
    inputs: dict[str, Any] = field(default_factory=dict)
    rows: list[Reconstruction] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # model mode: stage mixers not converted, and why
    # What the ``kernels`` figure draws, as data (reports draw their own): per panel its label and the kernels
    # (group 0) of the :func:`figure_queries` positions, ``maps`` (queries, H, W).
    panels: list[dict[str, Any]] = field(default_factory=list)


def attention_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every registered attention-family mixer (a class with an extractor), with :data:`VARIANTS`."""
    return [(n, a) for n, cls in MIXERS.items() if issubclass(cls, tuple(EXTRACTORS)) for a in VARIANTS.get(n, ({},))]


def conv_specs() -> list[tuple[str, dict[str, Any]]]:
    """The registered static depth-wise convolution mixers :func:`as_attention` reads (default arguments)."""
    return [(n, {}) for n, cls in MIXERS.items() if issubclass(cls, (DWConv, DWNetConv))]


def figure_queries(grid: tuple[int, int]) -> list[tuple[int, int]]:
    """Three query positions in different windows / blocks of a 14 x 14 map (scaled to others)."""
    h, w = grid
    return [(h // 7, w // 5), (h // 2 - 1, 2 * w // 3), (4 * h // 5, w // 3)]


QUERY_COLOURS = ((1.0, 0.25, 0.2), (0.2, 0.9, 0.3), (0.3, 0.5, 1.0))  # one RGB colour per figure query


def kernel_figure(panels: Sequence[tuple[str, Tensor]], grid: tuple[int, int] | None, title: str = "") -> Figure:
    """One panel per mixer: ``(name, maps (Q, H, W))`` the kernels (group 0) of the queries of
    :func:`figure_queries` on the map grid, each ``|weight| / max |weight|`` in its own colour (added, so where two
    kernels overlap the colours mix), the query positions marked in the same colours. ``grid`` None: each
    panel's own map grid (the stages of a model)."""
    fig = Figure(figsize=(2.1 * len(panels), 2.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = torch.tensor(QUERY_COLOURS, dtype=torch.float64)
    for ax, (name, maps) in zip(axes, panels, strict=True):
        a = maps.abs().double()
        a = a / a.flatten(1).amax(1).clamp_min(1e-300)[:, None, None]
        rgb = torch.einsum("qhw,qk->hwk", a, colours[: a.shape[0]]).clamp(0, 1)
        ax.imshow(rgb.numpy(), interpolation="nearest")
        for (r, c), colour in zip(figure_queries(grid or tuple(maps.shape[-2:])), QUERY_COLOURS, strict=False):
            ax.plot(c, r, marker="x", color="white", markersize=6, mew=2.5)
            ax.plot(c, r, marker="x", color=colour, markersize=5, mew=1.2)
        ax.set_title(name, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    return fig


def dynconv(mixers: Sequence[MixerSpec] | None = None, *, acts: Sequence[str] = ATTN_ACTS, dim: int = 32,
            num_heads: int = 4, resolution: tuple[int, int] = (14, 14), inputs: str = "fashion-mnist",
            dtype: str = "float32", seed: int = 0, model: ModelSource | None = None, weights: str = "model",
            data: DataConfig | DataBundle | None = None, device: str = "cpu", **overrides: Any) -> DynConvRecord:
    """Rebuild attention mixers as dynamic depth-wise convolutions and depth-wise convolutions as static attention.

    ``model`` (a MixerNet, a registered name built with ``overrides`` such as ``img_size=32, in_chans=1``, or a run
    directory and its ``weights``): instead of mixers built alone, the first-block mixer of each stage of that
    model (:func:`stage_mixers`), with its own weights and activation, at the inputs it receives in a forward pass
    of two real eval images of ``data`` (default: the run's data, else Fashion-MNIST); only the attention-family
    mixers are converted (rows labelled ``'stages.i.blocks.0.mixer (name)'``), the others are listed in
    ``skipped``. ``mixers`` / ``acts`` / ``dim`` / ``num_heads`` / ``resolution`` then do not apply.

    ``mixers``: names or ``(name, args)``; default every attention mixer of ``MIXERS`` (depth-wise attention
    windowed and global) and the static depth-wise conv mixers. Each attention mixer is built once per activation
    in ``acts`` (``build_mixer`` at ``dim`` / ``num_heads`` / ``resolution``, eval mode) and applied to two grids
    of :func:`feature_grids` (``inputs``); the rows hold the relative error of ``DynamicConv.output()`` (or
    ``StaticAttention.output()``) against ``mixer(x)``. Figure ``kernels``: the softmax kernels of three query
    positions per mixer on the map grid."""
    check_choice("dtype", dtype, DTYPES)
    if model is not None:
        check_model_mode(mixers, inputs, "mixers")
        return _model_dynconv(model, dtype=dtype, weights=weights, data=data, device=device, overrides=overrides)
    if overrides:
        raise ConfigError(f"overrides {sorted(overrides)} are invalid without model=...")
    grid = check_geometry(dim, num_heads, resolution)
    for i, a in enumerate(acts):
        check_choice(f"acts[{i}]", a, ATTN_ACTS)
    specs = mixer_specs(mixers, attention_specs() + conv_specs())
    x, described = feature_grids(2, dim, grid, inputs, seed=seed, dtype=DTYPES[dtype])
    ctx = MixerContext(dim=dim, num_heads=num_heads, resolution=grid)
    rows: list[Reconstruction] = []
    panels: list[tuple[str, Tensor]] = []
    q_index = [r * grid[1] + c for r, c in figure_queries(grid)]
    for name, args in specs:
        cls = MIXERS[name]
        if issubclass(cls, tuple(EXTRACTORS)):
            for act in acts:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    m = build_mixer(name, ctx, **{**args, "attn_act": act}).to(DTYPES[dtype]).eval()
                with torch.no_grad():
                    dc = as_dynamic_conv(m, x)
                    err = relative_error(dc.output(), m(x))
                    rows.append(Reconstruction(label(name, args), act, "dynamic conv", err, list(dc.kernels.shape),
                                               2 * dc.radius() + 1))
                    if act == "softmax" or (act == acts[0] and "softmax" not in acts):
                        maps = dc.map_kernels()[0, q_index, :, 0].unflatten(-1, grid)
                        panels.append((f"{label(name, args)}\n{act}", maps))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                m = build_mixer(name, ctx, **args).to(DTYPES[dtype]).eval()
            with torch.no_grad():
                sa = as_attention(m, x)
                rows.append(Reconstruction(label(name, args), None, "static attention",
                                           relative_error(sa.output(), m(x)), list(sa.attention.shape)))
                panels.append((f"{label(name, args)}\nstatic", sa.attention[0, q_index].unflatten(-1, grid)))
    record = DynConvRecord(source={"kind": "mixers", "init": "trunc_normal (build_mixer)", "mode": "eval"},
                           dim=dim, num_heads=num_heads, resolution=list(grid), dtype=dtype, inputs=described,
                           rows=rows, panels=[{"label": n, "maps": m.tolist()} for n, m in panels])
    if panels:
        record.figures["kernels"] = kernel_figure(
            panels, grid, f"aggregation kernels of 3 queries (x, one colour each; |weight| / max), head / channel 0, "
                          f"{grid[0]}x{grid[1]} map, {described['kind']}")
    return record


def _model_dynconv(model: ModelSource, *, dtype: str, weights: str, data: DataConfig | DataBundle | None,
                   device: str, overrides: dict[str, Any]) -> DynConvRecord:
    stages, source, described = stage_mixers(model, data=data, weights=weights, device=device, **overrides)
    rows: list[Reconstruction] = []
    skipped: list[dict[str, str]] = []
    panels: list[tuple[str, Tensor]] = []
    for st in stages:
        if not isinstance(st.mixer, tuple(EXTRACTORS)):
            skipped.append({"mixer": st.label, "reason": f"{type(st.mixer).__name__} is not an attention mixer"})
            continue
        m = copy.deepcopy(st.mixer).to(DTYPES[dtype]).eval()
        x = st.inputs.to(DTYPES[dtype])
        with torch.no_grad():
            dc = as_dynamic_conv(m, x)
            rows.append(Reconstruction(st.label, getattr(m, "attn_act", None), "dynamic conv",
                                       relative_error(dc.output(), m(x)), list(dc.kernels.shape), 2 * dc.radius() + 1))
            grid = _grid(x)
            q_index = [r * grid[1] + c for r, c in figure_queries(grid)]
            panels.append((f"{st.label}\n{rows[-1].attn_act}", dc.map_kernels()[0, q_index, :, 0].unflatten(-1, grid)))
    record = DynConvRecord(source={**source, "mode": "eval", "probed": "the mixer of the first block of each stage"},
                           dtype=dtype, inputs=described, rows=rows, skipped=skipped,
                           panels=[{"label": n, "maps": m.tolist()} for n, m in panels])
    if panels:
        record.figures["kernels"] = kernel_figure(
            panels, None, f"aggregation kernels of 3 queries, head 0, {source.get('model', '')}: "
                          f"{described['kind']}")
    return record


# ---- mixerlab analyze dynconv --------------------------------------------------------------------------------

def add_geometry_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the mixer analyses (``properties``, ``dynconv``)."""
    p.add_argument("--mixers", nargs="+", default=None, help="mixer names (default: all the analysis covers)")
    p.add_argument("--dim", type=int, default=32, help="channels of the probed mixers (default 32)")
    p.add_argument("--heads", type=int, default=4, help="heads / groups context (default 4)")
    p.add_argument("--resolution", type=int, nargs=2, default=[14, 14], metavar=("H", "W"))
    p.add_argument("--inputs", default="fashion-mnist", choices=INPUTS,
                   help="token grids: real stem features of Fashion-MNIST images (default) or random normal")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--seed", type=int, default=0)


def _run(args: argparse.Namespace) -> DynConvRecord:
    model, overrides = model_args(args)
    if model is not None:
        return dynconv(args.mixers, inputs=args.inputs, dtype=args.dtype, model=model, weights=args.weights,
                       **overrides)
    return dynconv(args.mixers, dim=args.dim, num_heads=args.heads, resolution=tuple(args.resolution),
                   inputs=args.inputs, dtype=args.dtype, seed=args.seed)


def _table(record: Record) -> str:
    assert isinstance(record, DynConvRecord)
    n = max([26] + [len(r.mixer) for r in record.rows] + [len(s["mixer"]) for s in record.skipped])
    head = f"{'mixer':<{n}} {'act':<15} {'form':<17} {'rel. error':>10}  kernels            k"
    lines = [head, "-" * len(head)]
    for r in record.rows:
        k = "-" if r.kernel_size is None else str(r.kernel_size)
        lines.append(f"{r.mixer:<{n}} {r.attn_act or '-':<15} {r.form:<17} {r.rel_error:>10.2e}  "
                     f"{'x'.join(map(str, r.kernels)):<17}  {k}")
    for s in record.skipped:
        lines.append(f"{s['mixer']:<{n}} skipped: {s['reason']}")
    if record.resolution:
        h, w = record.resolution
        where = f"{h}x{w} map, dim {record.dim}, {record.num_heads} heads"
    else:
        where = f"model {record.source.get('model')} ({_trained(record.source)})"
    lines.append(f"rel. error = ||rebuilt - mixer(x)|| / ||mixer(x)|| ({record.dtype}); kernels: attention (B, Nq, Nk, "
                 f"groups) re-applied as per-position k x k depth-wise taps, convs as (C, N, N) static attention; "
                 f"{where}, {record.inputs.get('kind')}")
    return "\n".join(lines)


def _trained(source: dict[str, Any]) -> str:
    """'trained run DIR' / 'fresh' / 'given module' for a table's footer."""
    if source.get("trained"):
        return f"trained run {source.get('run_dir')}, {source.get('weights')} weights"
    return "fresh" if source.get("trained") is False else "given module"


def _configure(p: argparse.ArgumentParser) -> None:
    add_geometry_options(p)
    add_model_options(p)


register(AnalysisCommand("dynconv", "attention as dynamic depth-wise convolution and back (Zhou et al., SPEC 8.5)",
                         _configure, _run, _table, needs_model=False))
