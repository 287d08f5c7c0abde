"""The blocks' MLP, ``Linear(C, rC) -> GELU -> Linear(rC, C)``: timm's ``Mlp`` with a chunked CPU path.

``x (..., C) -> fc2(GELU(fc1(x))) (..., C)``, row by row; timm's module, state dict and init unchanged.

On the CPU, eager or compiled, when the hidden activation ``(rows, rC)`` would be large (U-Swin / ConvNeXt stage 1
at batch 8: 25088 x 384 floats, 38 MB), the custom ops :func:`chunked_mlp` (inference) and
:func:`chunked_mlp_train` (with :func:`chunked_mlp_backward`) run the rows a cache-sized chunk at a time:
fc1, GELU and fc2 of a chunk stay in L2 and no hidden-sized temporary is allocated. The plain module writes
fc1's output and GELU's output to fresh tensors that large; the allocator serves each with newly mapped pages,
and faulting them in costs about as much as the matrix product itself (a 38 MB ``empty().fill_()``: 20 ms;
fc1 into a preallocated output 16 ms against 31 ms into a fresh one, 2 threads). For training it keeps only
fc1's output and recomputes GELU per chunk in backward (one hidden-sized tensor saved instead of two).
torch.fx sees the plain module; so do other devices, autocast, dropout and non-GELU activations. Where
``mixerlab.linear`` measured oneDNN as the faster float32 product (AMD CPUs), the chunks' products and the plain
path's run on it, GELU fused into fc1's output for inference.

Under torch.compile on the CPU (no autocast, torch's BLAS), an MLP below those sizes has its biases added apart
from the products, ``GELU(x @ w1.T + b1) @ w2.T + b2``: inductor lowers a Linear with bias to ``aten.addmm``, whose
CPU kernel first broadcasts the bias into the whole output and then accumulates the product into it (one more write
and read of the output), whereas an unfused ``+ b`` joins the elementwise kernel that reads the product anyway
(GELU; layer scale and the residual add after fc2). ConvNeXt-T compiled inference, batch 8, 2 threads: the bias
copies were 39 of 420 ms.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

from .layers import is_fx_tracing
from .linear import cpu_matmul_backend, grad_weight, linear_fn, onednn_mm_nt, uses_onednn

# A chunk's hidden activation (rows x rC): L2-sized; e.g. 1024 rows of 384 floats.
_CHUNK_BYTES = 3 << 19
# Below these hidden sizes chunking gains nothing (measured, 2 threads: inference gains 1.21x at 19 MB and
# nothing at 10 MB; a train step gains 1.17x at 38 MB and loses 8% at 19 MB, where the plain module's
# backward reuses memory its forward freed).
_MIN_HIDDEN_BYTES = {"infer": 16 << 20, "train": 24 << 20}


def chunk_rows(hidden: int, itemsize: int) -> int:
    """Rows per chunk for a hidden width ``hidden``."""
    return max(64, _CHUNK_BYTES // (hidden * itemsize))


# The chunked kernels are custom ops (opaque to torch.compile, with a fake for shapes and autograd registered), so
# a compiled model keeps them: inductor would otherwise write the whole hidden activation twice (fc1, GELU) into
# fresh memory, as the plain module does.
def _chunked_forward(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, rows: int,
                     keep: bool) -> tuple[Tensor, Tensor]:
    """``(fc2(GELU(fc1(x))), h)``, ``rows`` rows at a time. ``keep``: ``h`` is fc1's whole output ``(M, rC)``
    for backward; otherwise one chunk-sized buffer, reused, with GELU applied in place. The products run on
    oneDNN where it is this process's faster backend (``mixerlab.linear``; it has no ``out=``, so each chunk's
    result is copied into place, a chunk-sized copy that stays in cache), else on torch's ``addmm``."""
    out = x.new_empty(x.shape[0], w2.shape[0])
    h = x.new_empty(x.shape[0] if keep else min(rows, x.shape[0]), w1.shape[0])
    onednn = uses_onednn(x, w1)
    for i in range(0, x.shape[0], rows):
        n = min(rows, x.shape[0] - i)
        xc, hc = x[i:i + n], h[i:i + n] if keep else h[:n]
        if onednn:
            hc.copy_(onednn_mm_nt(xc, w1, b1, "none" if keep else "gelu"))
            out[i:i + n] = onednn_mm_nt(F.gelu(hc) if keep else hc, w2, b2)
        else:
            torch.addmm(b1, xc, w1.t(), out=hc)
            torch.addmm(b2, F.gelu(hc) if keep else torch.ops.aten.gelu_(hc), w2.t(), out=out[i:i + n])
    return out, h


@torch.library.custom_op("mixerlab::chunked_mlp", mutates_args=())
def chunked_mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, rows: int) -> Tensor:
    """``fc2(GELU(fc1(x)))`` without autograd for ``x`` ``(M, C)``, ``w1`` ``(rC, C)``, ``w2`` ``(C, rC)``, a chunk
    of ``rows`` rows at a time through one L2-sized hidden buffer (GELU in place)."""
    return _chunked_forward(x, w1, b1, w2, b2, rows, keep=False)[0]


@chunked_mlp.register_fake
def _(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, rows: int) -> Tensor:
    return x.new_empty(x.shape[0], w2.shape[0])


@torch.library.custom_op("mixerlab::chunked_mlp_train", mutates_args=())
def chunked_mlp_train(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """:func:`chunked_mlp` keeping fc1's output ``h`` ``(M, rC)`` for backward: returns ``(out, h)``.

    Hand-written because autograd of the plain expression saves fc1's and GELU's full outputs and allocates
    every hidden-sized gradient at once; here backward (:func:`chunked_mlp_backward`) recomputes GELU per chunk
    from ``h`` and accumulates the weight gradients chunk by chunk (same products, summed in chunk order)."""
    return _chunked_forward(x, w1, b1, w2, b2, rows, keep=True)


@chunked_mlp_train.register_fake
def _(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape[0], w2.shape[0]), x.new_empty(x.shape[0], w1.shape[0])


@torch.library.custom_op("mixerlab::chunked_mlp_backward", mutates_args=())
def chunked_mlp_backward(g: Tensor, x: Tensor, w1: Tensor, w2: Tensor, h: Tensor,
                         rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`chunked_mlp_train`'s ``out`` for the cotangent ``g`` ``(M, C)``: ``(x, w1, b1, w2,
    b2)``. Not differentiable again (no double backward)."""
    g = g.contiguous()
    grad_x = torch.empty_like(x)
    grad_w1, grad_b1 = torch.zeros_like(w1), w1.new_zeros(w1.shape[0])
    grad_w2, grad_b2 = torch.zeros_like(w2), g.sum(0)
    onednn = uses_onednn(x, w1)
    for i in range(0, x.shape[0], rows):
        n = min(rows, x.shape[0] - i)
        hc, gc, xc = h[i:i + n], g[i:i + n], x[i:i + n]
        if onednn:
            grad_w2.add_(grad_weight(gc, F.gelu(hc)))
            gh = torch.ops.aten.gelu_backward(onednn_mm_nt(gc, w2.t()), hc)
            grad_w1.add_(grad_weight(gh, xc))
            grad_x[i:i + n] = onednn_mm_nt(gh, w1.t())
        else:
            grad_w2.addmm_(gc.t(), F.gelu(hc))
            gh = torch.ops.aten.gelu_backward(gc @ w2, hc)
            grad_w1.addmm_(gh.t(), xc)
            torch.mm(gh, w1, out=grad_x[i:i + n])
        grad_b1.add_(gh.sum(0))
    return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


@chunked_mlp_backward.register_fake
def _(g: Tensor, x: Tensor, w1: Tensor, w2: Tensor, h: Tensor,
      rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(w1), w1.new_empty(w1.shape[0]), torch.empty_like(w2), \
        w2.new_empty(w2.shape[0])


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, w1, b1, w2, b2, rows = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, w1, b1, w2, b2, output[1])
    ctx.rows = rows


def _backward(ctx: Any, g: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:
    x, w1, b1, w2, b2, h = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph (double backward, Hessian-vector products): the gradients as a differentiable function of the
        # inputs, by recomputing the plain module's expression (the hidden-sized tensors it costs are the price of
        # a second-order graph anyway).
        inputs = (x, w1, b1, w2, b2)
        wanted = [t for t, need in zip(inputs, ctx.needs_input_grad, strict=False) if need]
        out = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
        grads = iter(torch.autograd.grad(out, wanted, g, create_graph=True))
        return (*(next(grads) if need else None for need in ctx.needs_input_grad[:5]), None)
    return (*chunked_mlp_backward(g, x, w1, w2, h, ctx.rows), None)


chunked_mlp_train.register_autograd(_backward, setup_context=_setup_context)


class ChunkedMlp(Mlp):
    """timm's ``Mlp`` (GELU, no dropout, no norm) whose CPU forward runs through the chunked kernels when the
    hidden activation would be large, through ``mixerlab.linear``'s oneDNN products where those are faster, and
    under torch.compile otherwise with the biases added apart (see the module docstring); the same function
    everywhere."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__(in_features, hidden_features, act_layer=nn.GELU)
        cpu_matmul_backend()  # measured when the model is made (or unpickled), not in its first step

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        cpu_matmul_backend()

    def _cpu_kernels(self, x: Tensor) -> bool:
        """What both CPU paths assume: a CPU input outside autocast, and both biases (each path adds them itself)."""
        return (x.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and self.fc1.bias is not None
                and self.fc2.bias is not None)

    def _needs_grad(self, x: Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _chunked(self, x: Tensor) -> str | None:
        """``train`` or ``infer``: the chunked kernel ``x`` takes; None: not chunked."""
        if is_fx_tracing() or torch.compiler.is_exporting() or not self._cpu_kernels(x) \
                or x.dtype != self.fc1.weight.dtype:
            return None  # FX and torch.export see timm's module
        hidden_bytes = x.numel() // x.shape[-1] * self.fc1.out_features * x.element_size()
        mode = "train" if self._needs_grad(x) else "infer"
        return mode if hidden_bytes >= _MIN_HIDDEN_BYTES[mode] else None

    def _unfused_bias(self, x: Tensor) -> bool:
        return torch.compiler.is_compiling() and self._cpu_kernels(x)

    def forward(self, x: Tensor) -> Tensor:
        mode = self._chunked(x)
        if mode is not None:
            rows = chunk_rows(self.fc1.out_features, x.element_size())
            args = (x.reshape(-1, x.shape[-1]), self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, rows)
            y = chunked_mlp_train(*args)[0] if mode == "train" else chunked_mlp(*args)
            return y.view(*x.shape[:-1], y.shape[-1])
        if uses_onednn(x, self.fc1.weight):
            return linear_fn(linear_fn(x, self.fc1.weight, self.fc1.bias, gelu=True), self.fc2.weight, self.fc2.bias)
        if self._unfused_bias(x):
            h = self.act(F.linear(x, self.fc1.weight) + self.fc1.bias)
            return F.linear(h, self.fc2.weight) + self.fc2.bias
        return super().forward(x)
