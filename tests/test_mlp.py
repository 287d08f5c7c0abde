"""The blocks' MLP: the chunked CPU path computes timm's Mlp, values and gradients, and is taken only where meant."""

from __future__ import annotations

import pytest
import torch
from timm.layers import Mlp
from torch import nn

from mixerlab import mlp as mlp_module
from mixerlab.mlp import ChunkedMlp, chunked_mlp_train


def _pair(c: int = 6, hidden: int = 10) -> tuple[Mlp, ChunkedMlp]:
    plain = Mlp(c, hidden, act_layer=nn.GELU).double()
    chunked = ChunkedMlp(c, hidden).double()
    chunked.load_state_dict(plain.state_dict())
    return plain, chunked


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every input takes the chunked path, 4 rows a chunk: several chunks and a short last one.
    monkeypatch.setattr(mlp_module, "_MIN_HIDDEN_BYTES", {"infer": 0, "train": 0})
    monkeypatch.setattr(mlp_module, "chunk_rows", lambda hidden, itemsize: 4)


def test_chunked_kernel_passes_gradcheck() -> None:
    shapes = [(11, 5), (7, 5), (7,), (5, 7), (5,)]  # x, w1, b1, w2, b2: 11 rows in chunks of 4
    args = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    assert torch.autograd.gradcheck(lambda *a: chunked_mlp_train(*a, 4)[0], args, fast_mode=True)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("x_grad", [True, False])
def test_chunked_mlp_equals_timm_mlp_with_gradients(x_grad: bool) -> None:
    plain, chunked = _pair()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=x_grad)
    assert chunked._chunked(x)
    results = []
    for m in (plain, chunked):
        y = m(x)
        wanted = [x, *m.parameters()] if x_grad else list(m.parameters())
        results.append((y, *torch.autograd.grad((y * torch.linspace(-1, 1, 6, dtype=y.dtype)).sum(), wanted)))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.usefixtures("small_chunks")
def test_chunked_mlp_inference_equals_timm_mlp() -> None:
    plain, chunked = _pair()
    x = torch.randn(3, 9, 6, dtype=torch.float64)
    with torch.inference_mode():
        assert chunked._chunked(x)
        torch.testing.assert_close(chunked(x), plain(x), rtol=1e-12, atol=1e-12)


def test_chunked_path_is_taken_only_where_meant() -> None:
    m = ChunkedMlp(96, 384)
    assert m._chunked(torch.empty(8, 56, 56, 96))  # U-Swin / ConvNeXt stage 1 at batch 8: a 38 MB hidden
    assert not m._chunked(torch.empty(8, 28, 28, 96))  # 9.6 MB: plain
    stage2, x2 = ChunkedMlp(192, 768), torch.empty(8, 28, 28, 192)  # 19 MB: chunked for inference only
    assert not stage2._chunked(x2)
    with torch.no_grad():
        assert stage2._chunked(x2)
    assert not m._chunked(torch.empty(8, 56, 56, 96, device="meta"))  # complexity counting runs on meta
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not m._chunked(torch.empty(8, 56, 56, 96))
    # torch.fx traces the plain module: its graph calls fc1, act and fc2 (FX feature extraction sees them).
    graph = torch.fx.symbolic_trace(m).graph
    assert {n.target for n in graph.nodes if n.op == "call_module"} >= {"fc1", "act", "fc2"}


def _compiled_aten_ops(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, set[object]]:
    """``m(x)`` compiled by torch.compile through AOTAutograd, and the ATen ops of its forward graph."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    ops: set[object] = set()

    def forward_graph(gm: torch.fx.GraphModule, _: object) -> object:
        ops.update(n.target for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)

    return torch.compile(m, backend=aot_autograd(fw_compiler=forward_graph), fullgraph=True)(x), ops


def _assert_same_with_gradients(y: torch.Tensor, ours: nn.Module, plain: Mlp, x: torch.Tensor) -> None:
    """``y = ours(x)`` (compiled or not) equals timm's ``plain(x)`` in float64, and so do the gradients of a
    fixed cotangent with respect to ``x`` and every parameter."""
    ref = plain(x)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)
    got = torch.autograd.grad((y * g).sum(), [x, *ours.parameters()])
    for a, b in zip(got, torch.autograd.grad((ref * g).sum(), [x, *plain.parameters()]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_compiled_cpu_mlp_adds_biases_apart_from_the_products() -> None:
    plain, ours = _pair()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    y, ops = _compiled_aten_ops(ours, x)
    assert torch.ops.aten.addmm.default not in ops and torch.ops.aten.mm.default in ops
    _assert_same_with_gradients(y, ours, plain, x)
    # Under autocast the plain module runs (its Linear casts the bias with the product's dtype).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, ops = _compiled_aten_ops(ChunkedMlp(6, 10), torch.randn(3, 6))
    assert torch.ops.aten.addmm.default in ops


def test_chunked_ops_pass_torch_library_opcheck() -> None:
    # Fake (meta) shapes, schema, autograd registration and aot_dispatch of the three custom ops.
    x, w1, b1, w2, b2 = (torch.randn(s, dtype=torch.float64) for s in [(11, 5), (7, 5), (7,), (5, 7), (5,)])
    torch.library.opcheck(torch.ops.mixerlab.chunked_mlp, (x, w1, b1, w2, b2, 4))
    train_args = (x.requires_grad_(), w1.requires_grad_(), b1.requires_grad_(), w2.requires_grad_(),
                  b2.requires_grad_(), 4)
    torch.library.opcheck(torch.ops.mixerlab.chunked_mlp_train, train_args)
    out, h = chunked_mlp_train(*train_args)
    torch.library.opcheck(torch.ops.mixerlab.chunked_mlp_backward,
                          (torch.randn_like(out), x.detach(), w1.detach(), w2.detach(), h.detach(), 4))


@pytest.mark.usefixtures("small_chunks")
def test_compiled_model_keeps_the_chunked_kernels() -> None:
    plain, ours = _pair()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    y, ops = _compiled_aten_ops(ours, x)
    assert torch.ops.mixerlab.chunked_mlp_train.default in ops and torch.ops.aten.addmm.default not in ops
    _assert_same_with_gradients(y, ours, plain, x)
    torch._dynamo.reset()
    with torch.no_grad():
        y, ops = _compiled_aten_ops(ours, x)
        assert torch.ops.mixerlab.chunked_mlp.default in ops
        torch.testing.assert_close(y, plain(x), rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("small_chunks")
def test_chunked_mlp_trains_a_partly_frozen_module() -> None:
    # Only fc2 trains and x needs no gradient: the training kernel still runs, fc2's gradients are timm's.
    plain, ours = _pair()
    for m in (plain, ours):
        m.fc1.requires_grad_(False)
    x = torch.randn(4, 6, dtype=torch.float64)
    got = torch.autograd.grad(ours(x).square().sum(), list(ours.fc2.parameters()))
    want = torch.autograd.grad(plain(x).square().sum(), list(plain.fc2.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("small_chunks")
def test_chunked_mlp_double_backward_equals_timm_mlp() -> None:
    # create_graph through the training kernel: a Hessian-vector product (d/dtheta <dL/dx, v>) equals timm's.
    plain, ours = _pair()
    x = torch.randn(3, 9, 6, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 9, 6, dtype=torch.float64)
    results = []
    for m in (plain, ours):
        (gx,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
        results.append(torch.autograd.grad((gx * v).sum(), [x, *m.parameters()]))
    assert ours._chunked(x) == "train"
    for a, b in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("small_chunks")
def test_cost_counter_counts_the_chunked_kernels_as_the_plain_mlp() -> None:
    from mixerlab.complexity import CostCounter

    plain, ours = _pair()
    x = torch.randn(3, 9, 6, dtype=torch.float64, requires_grad=True)
    counts = []
    for m in (plain, ours):
        y = m(x)
        with CostCounter() as fwd:
            m(x)
        with CostCounter() as bwd:
            y.sum().backward()
        counts.append((fwd.macs, fwd.activations, bwd.macs, bwd.activations))
    assert counts[0][0] == 27 * (6 * 10 * 2) and counts[1] == counts[0]


@pytest.mark.usefixtures("small_chunks", "backend")
def test_float32_chunked_kernels_within_the_rounding_bound() -> None:
    """The chunked kernels in float32 on either product backend (``mixerlab.linear``; the ``backend`` fixture):
    output and input gradient against float64 within the worst-case rounding bound of the chain fc1 -> GELU ->
    fc2 (and back)."""
    eps = torch.finfo(torch.float32).eps
    g = torch.Generator().manual_seed(3)
    m = ChunkedMlp(6, 10)
    x = torch.randn(3, 9, 6, generator=g, requires_grad=True)
    cot = torch.randn(3, 9, 6, generator=g)
    y = m(x)
    assert m._chunked(x) == "train"
    (y * cot).sum().backward()
    with torch.no_grad():
        assert m._chunked(x) == "infer"
        y_infer = m(x)
    xd, cd = x.detach().double(), cot.double()
    w1, b1, w2, b2 = (p.detach().double() for p in (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias))
    h = xd @ w1.t() + b1
    a = torch.nn.functional.gelu(h)
    # gamma_K (|x| |W|^T + |b|) per product; |GELU'| <= 1.13 and |GELU''| <= 0.8 carry errors through the activation.
    e_h = 7 * eps * (xd.abs() @ w1.abs().t() + b1.abs())
    e_a = 1.13 * e_h + eps * a.abs()
    bound_y = e_a @ w2.abs().t() + 11 * eps * (a.abs() @ w2.abs().t() + b2.abs())
    for got in (y, y_infer):
        assert ((got.detach().double() - (a @ w2.t() + b2)).abs() <= bound_y).all()
    u = cd @ w2
    slope = torch.ops.aten.gelu_backward(torch.ones_like(h), h)
    e_u = 7 * eps * (cd.abs() @ w2.abs())
    e_gh = 1.13 * e_u + 0.8 * e_h * u.abs() + 2 * eps * (slope * u).abs()
    bound_gx = e_gh @ w1.abs() + 11 * eps * ((slope * u).abs() @ w1.abs())
    assert ((x.grad.double() - (slope * u) @ w1).abs() <= bound_gx).all()
