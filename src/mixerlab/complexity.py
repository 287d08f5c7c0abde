"""Model complexity without running the model: parameters, MACs and activations (SPEC 8.1).

``complexity(model_or_name, input_size)`` builds the model on PyTorch's ``meta`` device (tensors
with shapes but no storage), runs one forward pass on a meta input of batch 1 under a
``TorchDispatchMode`` that sees every ATen op, and adds up a formula per op. Nothing is
allocated, so a 36-GMAC ViT counts in one or two seconds on a 2-core CPU.

Counting convention (the quantity the papers call "FLOPs" and SPEC calls GMACs; their counters
add small extras -- pycls bias additions, fvcore and Swin's / DWNet's ``flops()`` norms -- worth
under 2% of these models' totals):

* **MACs** = multiply-accumulates of convolutions (grouped and depth-wise included:
  ``out_elements * C_in/groups * prod(kernel)``; transposed: ``in_elements * C_out/groups * prod(kernel)``),
  matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``, hence every ``nn.Linear``, ``matmul`` and
  ``einsum``) and attention: ``q k^T`` and ``A v`` each cost ``B h Nq Nk d`` whether they run as two
  explicit matmuls or inside one fused ``scaled_dot_product_attention`` kernel.
  ``grid_sampler_2d`` (deformable convolution) costs one MAC per sampled input value:
  4 per output element (bilinear), 1 (nearest), 16 (bicubic).
* **Not counted**: bias additions, norms, activations, softmax, pooling, residual additions,
  LayerScale and every other elementwise op.
* **GFLOPs** = 2 x GMACs.
* **Activations** = output elements of every counted op (pycls' "acts"; Radosavovic et al.,
  2020): conv / linear / matmul outputs; for attention both the ``Nq x Nk`` kernel and the output.
* **Params** = elements of the unique parameters (a shared parameter counts once); buffers
  (BatchNorm statistics, index tables) are not parameters.

Ops torch does not know can be given a formula with :func:`register_formula`. Modules that multiply
with elementwise ops (per-position kernels of ``idynconv``, the point weights of ``dcn``) declare
those MACs with a method ``elementwise_macs(output) -> int``, added to their cost. The per-module
breakdown maps every qualified module name (``stages.2.blocks.5.mixer``) to its own params, MACs
and activations; a module's cost includes its children, and ops a module runs itself (functional
attention inside a mixer) count towards it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry as _TORCH_FLOP_FORMULAS

from .archs import build_model
from .config import ConfigError, ModelConfig
from .zoo import apply_overrides, named_config

aten = torch.ops.aten

#: A formula receives the op's arguments (meta tensors and Python values) plus ``out=`` (the op's
#: result) and returns its MACs, or ``(MACs, activations)`` when the activations are not simply
#: the elements of the output.
Formula = Callable[..., int | tuple[int, int]]

# ---- formulas ------------------------------------------------------------------------------------


def _matmul(a: Tensor, _b: Tensor, *, out: Tensor, **_: Any) -> int:
    # mm / bmm: output elements x inner dimension.
    return out.numel() * a.shape[-1]


def _add_matmul(_bias: Tensor, a: Tensor, _b: Tensor, *, out: Tensor, **_: Any) -> int:
    # addmm / baddbmm: the bias addition is not counted.
    return out.numel() * a.shape[-1]


def _convolution(x: Tensor, w: Tensor, _bias: Any, _stride: Any, _padding: Any, _dilation: Any,
                 transposed: bool, *_: Any, out: Tensor, **__: Any) -> int:
    # w is (C_out, C_in/groups, *k) (transposed: (C_in, C_out/groups, *k)), so groups are built in.
    per_element = math.prod(w.shape[1:])
    return (x.numel() if transposed else out.numel()) * per_element


def _attention(q: Tensor, k: Tensor, v: Tensor, *_: Any, out: Any, **__: Any) -> tuple[int, int]:
    # Fused SDPA kernels: the same work as q @ k^T and A @ v (k/v heads may be shared, GQA).
    rows = math.prod(q.shape[:-1])  # B * h * Nq
    nk, dq, dv = k.shape[-2], q.shape[-1], v.shape[-1]
    return rows * nk * (dq + dv), rows * (nk + dv)


def _grid_sampler(x: Tensor, _grid: Tensor, interpolation_mode: int, *_: Any, out: Tensor, **__: Any) -> int:
    # interpolation_mode 0 bilinear, 1 nearest, 2 bicubic: input values read per output element.
    return out.numel() * {0: 4, 1: 1, 2: 16}[interpolation_mode]


# mixerlab.mlp's chunked MLP kernels (custom ops, registered when .archs imports the blocks; a dispatch mode sees
# them whole, not the products inside): the plain MLP's fc1 and fc2, and in backward each linear's input and
# weight gradients, with the plain path's MACs and activations.
def _chunked_mlp(x: Tensor, w1: Tensor, _b1: Tensor, w2: Tensor, *_: Any, out: Any, **__: Any) -> int:
    return x.shape[0] * (w1.numel() + w2.numel())


def _chunked_mlp_backward(_g: Tensor, x: Tensor, w1: Tensor, w2: Tensor, *_: Any, out: Any,
                          **__: Any) -> tuple[int, int]:
    return 2 * x.shape[0] * (w1.numel() + w2.numel()), x.shape[0] * (w1.shape[0] + x.shape[1]) + 2 * w1.numel()


# mixerlab.linear's oneDNN products (custom ops): the Linear's matrix product, and in backward the input and weight
# gradients' products, each counted only when computed (a flag off returns an empty tensor).
def _linear(x: Tensor, *_: Any, out: Tensor, **__: Any) -> int:
    return out.numel() * x.shape[-1]


def _linear_backward(g: Tensor, *_: Any, out: tuple[Tensor, Tensor], **__: Any) -> int:
    # grad x (M, K) = g (M, N) @ W: N per element; grad W (N, K) = g^T @ x: M per element.
    return out[0].numel() * g.shape[-1] + out[1].numel() * (g.numel() // g.shape[-1])


#: Formulas by op (an ``OpOverloadPacket`` such as ``torch.ops.aten.mm``). Ops without an entry
#: fall back to torch's FLOP formulas (halved), then count nothing.
FORMULAS: dict[Any, Formula] = {
    aten.mm: _matmul,
    aten.addmm: _add_matmul,
    aten.bmm: _matmul,
    aten.baddbmm: _add_matmul,
    aten.convolution: _convolution,
    aten._convolution: _convolution,
    # On meta SDPA decomposes into two bmm; on CPU / GPU it runs one of these fused ops.
    aten._scaled_dot_product_flash_attention_for_cpu: _attention,
    aten._scaled_dot_product_flash_attention: _attention,
    aten._scaled_dot_product_efficient_attention: _attention,
    aten._scaled_dot_product_cudnn_attention: _attention,
    aten.grid_sampler_2d: _grid_sampler,
    torch.ops.mixerlab.chunked_mlp: _chunked_mlp,
    torch.ops.mixerlab.chunked_mlp_train: _chunked_mlp,
    torch.ops.mixerlab.chunked_mlp_backward: _chunked_mlp_backward,
    torch.ops.mixerlab.linear: _linear,
    torch.ops.mixerlab.linear_gelu: _linear,
    torch.ops.mixerlab.linear_backward: _linear_backward,
}


def register_formula(op: Any, fn: Formula) -> None:
    """Count op ``op`` (e.g. ``torch.ops.aten.grid_sampler_2d``) with ``fn``; see :data:`Formula`.

    A later registration for the same op replaces the earlier one.
    """
    packet = getattr(op, "overloadpacket", op)
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        raise TypeError(f"op={op!r} is invalid: an ATen op such as torch.ops.aten.grid_sampler_2d")
    FORMULAS[packet] = fn


def _numel(out: Any) -> int:
    if isinstance(out, Tensor):
        return out.numel()
    return sum(o.numel() for o in out if isinstance(o, Tensor)) if isinstance(out, (tuple, list)) else 0


def op_cost(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int] | None:
    """``(MACs, activations)`` of one dispatched op, or None when the op is not counted."""
    packet = func.overloadpacket
    kwargs = {k: v for k, v in kwargs.items() if k != "out"}  # out= variants (bmm.out): ``out`` is their result
    if packet in FORMULAS:
        res = FORMULAS[packet](*args, **kwargs, out=out)
        return res if isinstance(res, tuple) else (int(res), _numel(out))
    if packet in _TORCH_FLOP_FORMULAS:
        return _TORCH_FLOP_FORMULAS[packet](*args, **kwargs, out_val=out) // 2, _numel(out)
    return None


# ---- counting ------------------------------------------------------------------------------------


class CostCounter(TorchDispatchMode):
    """Dispatch mode adding up MACs and activations, per module when modules are tracked
    (each op is booked to the innermost tracked module running it).

    Usable alone on any code (meta, CPU or GPU tensors)::

        with CostCounter() as c:
            y = f(x)
        c.macs, c.activations
    """

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0
        self.activations = 0
        self.own: dict[str, list[int]] = {}  # innermost running module -> [MACs, activations]
        self._stack: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        cost = op_cost(func, args, kwargs, out)
        if cost is not None:
            self.macs += cost[0]
            self.activations += cost[1]
            acc = self.own.setdefault(self._stack[-1] if self._stack else "", [0, 0])
            acc[0] += cost[0]
            acc[1] += cost[1]
        return out

    def module_costs(self) -> dict[str, tuple[int, int]]:
        """``(MACs, activations)`` per qualified module name, children included. Rolled up by name,
        so containers that are never called themselves (``nn.ModuleList``) get their children's sum."""
        totals: dict[str, list[int]] = {}
        for name, (macs, acts) in self.own.items():
            parts = name.split(".") if name else []
            for i in range(len(parts) + 1):
                acc = totals.setdefault(".".join(parts[:i]), [0, 0])
                acc[0] += macs
                acc[1] += acts
        return {k: (v[0], v[1]) for k, v in totals.items()}

    @contextmanager
    def track(self, model: nn.Module) -> Iterator[None]:
        """Attribute ops to every named submodule of ``model`` while it runs."""
        handles = []
        for name, module in model.named_modules():
            if not name:
                continue

            def enter(_m: nn.Module, _inp: Any, name: str = name) -> None:
                self._stack.append(name)

            def leave(m: nn.Module, _inp: Any, out: Any) -> None:
                extra = getattr(m, "elementwise_macs", None)
                if extra is not None and isinstance(out, Tensor):
                    macs = extra(out)
                    self.macs += macs
                    self.own.setdefault(self._stack[-1], [0, 0])[0] += macs
                self._stack.pop()

            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, always_call=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _meta_twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are meta tensors (no data copied)."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


# ---- records ------------------------------------------------------------------------------------


@dataclass
class ModuleCost:
    params: int
    macs: int
    activations: int

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "activations": self.activations}


@dataclass
class ComplexityRecord:
    """Raw counts plus the usual units: ``params_m`` (10^6), ``gmacs`` (10^9 MACs), ``gflops``
    (2 x gmacs), ``activations_m`` (10^6 output elements). ``input_size`` excludes the batch (1)."""

    model: str
    input_size: tuple[int, ...]
    params: int
    macs: int
    activations: int
    breakdown: dict[str, ModuleCost] = field(default_factory=dict)

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        return 2 * self.macs / 1e9

    @property
    def activations_m(self) -> float:
        return self.activations / 1e6

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "input_size": list(self.input_size), "params": self.params,
                "params_m": self.params_m, "macs": self.macs, "gmacs": self.gmacs, "gflops": self.gflops,
                "activations": self.activations, "activations_m": self.activations_m,
                "breakdown": {k: v.to_dict() for k, v in self.breakdown.items()}}


# ---- entry point ---------------------------------------------------------------------------------


def _image_size(input_size: int | tuple[int, ...]) -> tuple[int, int, int] | None:
    if isinstance(input_size, int):
        return None
    if len(input_size) != 3 or any(not isinstance(s, int) or s < 1 for s in input_size):
        raise ConfigError(f"input_size={input_size!r} is invalid: (channels, height, width) of one image, "
                          "or one int for a square image")
    return input_size


def _build_meta(name_or_cfg: str | ModelConfig, input_size: int | tuple[int, ...] | None,
                overrides: dict[str, Any]) -> tuple[nn.Module, str, tuple[int, int, int]]:
    if input_size is not None:
        chw = _image_size(input_size)
        if chw is None:
            overrides.setdefault("img_size", input_size)
        else:
            overrides.setdefault("in_chans", chw[0])
            overrides.setdefault("img_size", chw[1] if chw[1] == chw[2] else (chw[1], chw[2]))
    if isinstance(name_or_cfg, str):
        cfg, label = apply_overrides(named_config(name_or_cfg), **overrides), name_or_cfg
    else:
        cfg, label = apply_overrides(name_or_cfg, **overrides), "config"
    with torch.device("meta"):
        model = build_model(cfg)  # validates and resolves, once
    h, w = model.config.image_hw
    cfg = model.config
    return model.to("meta"), label, (cfg.in_chans, h, w)


def complexity(model_or_name: str | ModelConfig | nn.Module, input_size: int | tuple[int, ...] | None = None,
               **overrides: Any) -> ComplexityRecord:
    """Params, MACs and activations of one forward pass at batch size 1 (see the module docstring).

    ``model_or_name``: a registered name (built with ``overrides`` like :func:`mixerlab.create_model`),
    a :class:`ModelConfig` (``overrides`` applied) or any ``nn.Module`` (left untouched: a meta copy
    is measured). ``input_size``: for names and configs ``(C, H, W)`` or one int ``H = W``; the model
    is built for that size (``in_chans`` / ``img_size``, unless given in ``overrides``), as window
    sizes and position tables depend on it; None means the config's own size (3 x 224 x 224 for
    every zoo model). For a module it is the shape of one sample, batch excluded (an int means
    ``(3, s, s)``; default: ``pretrained_cfg['input_size']`` when the module has one, else ``(3, 224, 224)``).
    """
    if isinstance(model_or_name, nn.Module):
        if overrides:
            raise ConfigError(f"overrides {sorted(overrides)} are invalid for an nn.Module: "
                              "pass a model name or a ModelConfig to change its configuration")
        if input_size is None:
            input_size = tuple(getattr(model_or_name, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
        elif isinstance(input_size, int):
            input_size = (3, input_size, input_size)
        model, label = _meta_twin(model_or_name), type(model_or_name).__name__
        sample = tuple(int(s) for s in input_size)
    elif isinstance(model_or_name, (str, ModelConfig)):
        model, label, sample = _build_meta(model_or_name, input_size, dict(overrides))
    else:
        raise TypeError(f"model_or_name={model_or_name!r} is invalid: a model name, a ModelConfig or an nn.Module")

    model.eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.empty((1, *sample), device="meta", dtype=dtype)
    counter = CostCounter()
    with torch.no_grad(), counter.track(model), counter:
        model(x)

    costs = counter.module_costs()
    breakdown = {}
    for name, module in model.named_modules():
        if not name:
            continue
        macs, acts = costs.get(name, (0, 0))
        breakdown[name] = ModuleCost(sum(p.numel() for p in module.parameters()), macs, acts)
    return ComplexityRecord(model=label, input_size=sample, params=sum(p.numel() for p in model.parameters()),
                            macs=counter.macs, activations=counter.activations, breakdown=breakdown)


__all__ = ["FORMULAS", "ComplexityRecord", "CostCounter", "Formula", "ModuleCost", "complexity", "op_cost",
           "register_formula"]
