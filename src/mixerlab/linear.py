"""Linear layers whose CPU float32 products run on oneDNN where that is faster than torch's BLAS.

``y = x W^T + b`` (optionally ``GELU(x W^T + b)``) for ``x (..., C_in)``, ``W (C_out, C_in)``, ``b (C_out,)``:
the function of ``nn.Linear``, with its state dict, init and every other device, dtype and autocast unchanged.

Why: torch's CPU ``mm`` / ``addmm`` call the BLAS it was built with (MKL), which on AMD processors takes a code
path written for narrower vector units. On a Zen 5 EPYC (full-width AVX-512), 2 threads, float32:
``(6272 x 192) @ (192 x 768)`` 204 GFLOP/s through ``mm`` against 450 through oneDNN, the forward of timm's
ConvNeXt-T / ViT-S / Swin-T at batch 8 464 / 382 / 466 ms against 276 / 208 / 272 ms with every linear on oneDNN.
On Intel processors MKL runs near the machine's peak, so the choice is measured once per process
(:func:`cpu_matmul_backend`), not assumed. oneDNN computes the same float32 products (no reduced precision), so
the two differ by the rounding of the accumulation order only.

The products are custom ops (:func:`linear`, :func:`linear_gelu`, :func:`linear_backward`): torch.compile keeps
them whole, and ``mixerlab.complexity`` counts them as the matrix products they are.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConfigError
from .layers import is_fx_tracing

#: Environment variable choosing the CPU float32 matmul backend: ``auto`` (measure once per process, the default),
#: ``onednn`` or ``blas``.
BACKEND_ENV = "MIXERLAB_CPU_MATMUL"
BACKENDS = ("auto", "onednn", "blas")
# oneDNN is chosen when it is at least this much faster on the calibration product: on the AMD box it is 2.1x, on
# Intel ones about 1.0x, so the threshold sits well away from both and from timing noise (a few %).
_MIN_SPEEDUP = 1.2
_chosen: str | None = None


def onednn_mm_nt(a: Tensor, b: Tensor, bias: Tensor | None = None, act: str = "none") -> Tensor:
    """``act(a @ b.T + bias)`` on oneDNN for ``a (..., K)``, ``b (N, K)``, any strides; ``act``: none or gelu."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, act, [], "none" if act == "gelu" else "")


@torch.compiler.disable  # never traced: a model first run inside torch.compile measures here, outside the graph
def _calibrate() -> str:
    """The faster backend on one product shaped like the blocks' (2048 x 256 @ 256 x 1024, 1 GFLOP, about 5 ms),
    best of 5 each, interleaved: 50-100 ms once per process (2 / 1 threads on the Zen 5 box)."""
    if not torch.backends.mkldnn.is_available():
        return "blas"
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2048, 256, generator=gen), torch.randn(1024, 256, generator=gen)
    best = {"blas": float("inf"), "onednn": float("inf")}
    with torch.no_grad():
        for rep in range(6):  # round 0 warms both up
            for name in best:
                t = time.perf_counter()
                if name == "blas":
                    torch.mm(a, b.t())
                else:
                    onednn_mm_nt(a, b)
                if rep:
                    best[name] = min(best[name], time.perf_counter() - t)
    return "onednn" if best["blas"] >= _MIN_SPEEDUP * best["onednn"] else "blas"


def cpu_matmul_backend() -> str:
    """``onednn`` or ``blas``: the backend of this process's CPU float32 linear layers.

    From ``$MIXERLAB_CPU_MATMUL`` (``auto``, ``onednn``, ``blas``; default ``auto``, which times both on one
    product the first time it is asked) or :func:`set_cpu_matmul_backend`. Building or unpickling a
    :class:`Linear` asks, so the measurement happens when a model is made or loaded, not in its first step."""
    global _chosen
    if _chosen is None:
        set_cpu_matmul_backend(os.environ.get(BACKEND_ENV, "auto"))
    assert _chosen is not None
    return _chosen


def set_cpu_matmul_backend(name: str) -> str:
    """Use ``name`` (``onednn``, ``blas``, or ``auto``: measure now) for CPU float32 linears; returns the one chosen."""
    global _chosen
    if name not in BACKENDS:
        raise ConfigError(f"cpu matmul backend {name!r} is invalid (from ${BACKEND_ENV} or the argument): one of "
                          f"{', '.join(BACKENDS)}")
    if name == "onednn" and not torch.backends.mkldnn.is_available():
        raise ConfigError("cpu matmul backend 'onednn' is invalid here: this torch build has no oneDNN (mkldnn); "
                          "use 'blas' or 'auto'")
    _chosen = _calibrate() if name == "auto" else name
    return _chosen


@torch.library.custom_op("mixerlab::linear", mutates_args=())
def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` on oneDNN; float32 CPU tensors, ``x (..., K)``, ``weight (N, K)``; differentiable."""
    return onednn_mm_nt(x, weight, bias)


@linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("mixerlab::linear_gelu", mutates_args=())
def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``GELU(x @ weight.T + bias)`` (exact GELU, fused into the product's output); inference only."""
    return onednn_mm_nt(x, weight, bias, "gelu")


@linear_gelu.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def grad_weight(g: Tensor, x: Tensor) -> Tensor:
    """``g.T @ x`` ``(N, K)`` on oneDNN for ``g (M, N)``, ``x (M, K)``: the product is computed with the smaller
    of ``N``, ``K`` as its rows, which oneDNN runs 1.3-4x faster than the other orientation on these shapes
    (25088 rows: N 96, K 384 at 256 against 66 GFLOP/s)."""
    if g.shape[1] <= x.shape[1]:
        return onednn_mm_nt(g.t(), x.t())
    return onednn_mm_nt(x.t(), g.t()).t().contiguous()


@torch.library.custom_op("mixerlab::linear_backward", mutates_args=())
def linear_backward(g: Tensor, x: Tensor, weight: Tensor, input_grad: bool,
                    weight_grad: bool) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`linear` for the cotangent ``g (..., N)``: ``(x, weight)``, each an empty tensor when
    its flag is off (a frozen weight costs no product). The bias gradient is ``g``'s sum, left to autograd. Not
    differentiable itself: under ``create_graph`` the autograd formula uses differentiable products instead."""
    g2 = g.reshape(-1, g.shape[-1])
    gx = onednn_mm_nt(g2, weight.t()).view(x.shape) if input_grad else x.new_empty(0)
    gw = grad_weight(g2, x.reshape(-1, x.shape[-1])) if weight_grad else weight.new_empty(0)
    return gx, gw


@linear_backward.register_fake
def _(g: Tensor, x: Tensor, weight: Tensor, input_grad: bool, weight_grad: bool) -> tuple[Tensor, Tensor]:
    return (torch.empty_like(x) if input_grad else x.new_empty(0),
            torch.empty_like(weight) if weight_grad else weight.new_empty(0))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)


def _backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    g2 = g.reshape(-1, g.shape[-1])
    gb = g2.sum(0) if need_b else None
    if torch.is_grad_enabled():  # create_graph (double backward, Hessian-vector products): differentiable products
        gx = linear(g, weight.t(), None) if need_x else None
        gw = g2.t() @ x.reshape(-1, x.shape[-1]) if need_w else None
        return gx, gw, gb
    gx, gw = linear_backward(g, x, weight, need_x, need_w)
    return gx if need_x else None, gw if need_w else None, gb


linear.register_autograd(_backward, setup_context=_setup_context)


def uses_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether a product of ``x`` and ``weight`` goes to oneDNN: float32 CPU tensors outside autocast, FX tracing
    and torch.export (an exported program keeps torch's own ops, portable to any runtime), with oneDNN measured
    (or set) as this process's faster backend."""
    return (not is_fx_tracing() and not torch.compiler.is_exporting() and x.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and cpu_matmul_backend() == "onednn")


def linear_fn(x: Tensor, weight: Tensor, bias: Tensor | None = None, gelu: bool = False) -> Tensor:
    """``F.linear`` (then GELU when ``gelu``) through oneDNN where :func:`uses_onednn`, else through torch."""
    if uses_onednn(x, weight):
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                   or (bias is not None and bias.requires_grad))
        if gelu and not needs_grad:
            return linear_gelu(x, weight, bias)
        y = linear(x, weight, bias)
    else:
        y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and init) computed by :func:`linear_fn`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cpu_matmul_backend()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        cpu_matmul_backend()  # a model sent to another process (spawn) decides there before it runs

    def forward(self, x: Tensor) -> Tensor:
        return linear_fn(x, self.weight, self.bias)


__all__ = ["BACKENDS", "BACKEND_ENV", "Linear", "cpu_matmul_backend", "grad_weight", "linear", "linear_backward",
           "linear_fn", "linear_gelu", "onednn_mm_nt", "set_cpu_matmul_backend", "uses_onednn"]
