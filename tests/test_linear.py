"""mixerlab.linear: the oneDNN products compute nn.Linear (values and gradients, against float64 within the
float32 rounding bound), are taken only where meant, survive torch.compile, and are counted as matrix products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from mixerlab import linear as linear_module
from mixerlab.config import ConfigError
from mixerlab.linear import Linear, cpu_matmul_backend, grad_weight, linear, set_cpu_matmul_backend, uses_onednn

EPS32 = torch.finfo(torch.float32).eps
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _bound(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise float32 rounding bound of ``a @ b`` (float64 inputs): K * eps32 * (|a| @ |b|), the classical
    worst case of a length-K dot product in any summation order (gamma_K), plus one rounding of the result."""
    return (a.shape[-1] + 1) * EPS32 * (a.abs() @ b.abs())


def _assert_within(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape
    err = (got.double() - want).abs()
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g}"


@pytest.mark.parametrize("frozen", [False, True])
def test_linear_matches_float64_values_and_gradients(backend: str, frozen: bool) -> None:
    g = torch.Generator().manual_seed(0)
    m = Linear(40, 24)
    m.weight.requires_grad_(not frozen)
    x = torch.randn(3, 7, 40, generator=g, requires_grad=True)
    y = m(x)
    assert uses_onednn(x, m.weight) == (backend == "onednn")
    cot = torch.randn(y.shape, generator=g)
    (y * cot).sum().backward()
    xd, wd, bd, cd = (t.detach().double() for t in (x, m.weight, m.bias, cot))
    _assert_within(y, F.linear(xd, wd, bd), _bound(xd, wd.t()) + EPS32 * bd.abs())
    _assert_within(x.grad, cd @ wd, _bound(cd, wd))
    assert (m.weight.grad is None) == frozen
    if not frozen:
        c2, x2 = cd.reshape(-1, 24), xd.reshape(-1, 40)
        _assert_within(m.weight.grad, c2.t() @ x2, _bound(c2.t(), x2))
    _assert_within(m.bias.grad, cd.sum((0, 1)), 21 * EPS32 * cd.abs().sum((0, 1)))


def test_weight_only_gradient_and_no_bias(backend: str) -> None:
    m = Linear(16, 8, bias=False)
    x = torch.randn(5, 16)  # no input gradient: only the weight's product runs
    cot = torch.randn(5, 8)
    (m(x) * cot).sum().backward()
    _assert_within(m.weight.grad, cot.double().t() @ x.double(), _bound(cot.double().t(), x.double()))


def test_double_backward(backend: str) -> None:
    # s = <dL/dx, v> with L = <Linear(x), cot>: dL/dx = cot @ W, so ds/dW = cot^T @ v (a Hessian-vector product).
    m = Linear(12, 8)
    x = torch.randn(6, 12, requires_grad=True)
    cot, v = torch.randn(6, 8), torch.randn(6, 12)
    (gx,) = torch.autograd.grad((m(x) * cot).sum(), x, create_graph=True)
    (gw,) = torch.autograd.grad((gx * v).sum(), m.weight)
    cd, vd = cot.double(), v.double()
    _assert_within(gw, cd.t() @ vd, _bound(cd.t(), vd))


@needs_onednn
@pytest.mark.parametrize(("rows", "n", "k"), [(50, 6, 20), (50, 20, 6)])
def test_grad_weight_in_both_orientations(rows: int, n: int, k: int) -> None:
    gd, xd = torch.randn(rows, n, dtype=torch.float64), torch.randn(rows, k, dtype=torch.float64)
    got = grad_weight(gd.float(), xd.float())
    assert got.is_contiguous()
    _assert_within(got, gd.t() @ xd, _bound(gd.t(), xd))


@needs_onednn
def test_fused_gelu_is_the_exact_gelu() -> None:
    x, w, b = torch.randn(9, 12), torch.randn(10, 12), torch.randn(10)
    pre = F.linear(x.double(), w.double(), b.double())
    got = torch.ops.mixerlab.linear_gelu(x, w, b)
    # GELU's slope is at most 1.13, so the product's rounding bound carries over (plus GELU's own rounding).
    bound = 1.13 * (_bound(x.double(), w.double().t()) + EPS32 * b.double().abs()) + 4 * EPS32 * F.gelu(pre).abs()
    _assert_within(got, F.gelu(pre), bound)


@needs_onednn
def test_ops_pass_torch_library_opcheck() -> None:
    x, w, b = torch.randn(4, 3, 12, requires_grad=True), torch.randn(5, 12, requires_grad=True), torch.randn(5)
    for bias in (b.requires_grad_(), None):
        torch.library.opcheck(torch.ops.mixerlab.linear, (x, w, bias))
    torch.library.opcheck(torch.ops.mixerlab.linear_gelu, (x.detach(), w.detach(), b.detach()))
    for flags in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.mixerlab.linear_backward, (torch.randn(4, 3, 5), x.detach(), w.detach(),
                                                                   *flags))


def test_other_inputs_take_torch_linear(backend: str) -> None:
    w = torch.empty(4, 3)
    assert not uses_onednn(torch.empty(2, 3, dtype=torch.float64), w.double())
    assert not uses_onednn(torch.empty(2, 3, device="meta"), w.to("meta"))  # complexity counting runs on meta
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_onednn(torch.empty(2, 3), w)
    graph = torch.fx.symbolic_trace(Linear(3, 4)).graph  # FX records F.linear, a traceable call
    assert [n.target for n in graph.nodes if n.op == "call_function"] == [F.linear]


def test_torch_export_keeps_torch_ops(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # An exported program must run anywhere (ONNX, AOTInductor, other machines): no mixerlab op in it, and the
    # MLP exports as timm's (its chunked kernels are left out too).
    from mixerlab import mlp as mlp_module
    from mixerlab.mlp import ChunkedMlp

    monkeypatch.setattr(mlp_module, "_MIN_HIDDEN_BYTES", {"infer": 0, "train": 0})
    x = torch.randn(5, 12)
    for m, plain in ((Linear(12, 8), nn.Linear(12, 8)), (ChunkedMlp(12, 24), Mlp(12, 24, act_layer=nn.GELU))):
        plain.load_state_dict(m.state_dict())
        ep = torch.export.export(m, (x,))
        ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        assert not any(op.startswith("mixerlab") for op in ops) and any("linear" in op for op in ops), ops
        with torch.no_grad():
            torch.testing.assert_close(ep.module()(x), plain(x), rtol=0, atol=0)  # torch's kernels: the same bits


def test_linear_is_an_nn_linear_with_its_state_dict() -> None:
    ref = nn.Linear(6, 5)
    m = Linear(6, 5)
    m.load_state_dict(ref.state_dict())
    assert isinstance(m, nn.Linear) and m.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 6, dtype=torch.float64)
    torch.testing.assert_close(m.double()(x), ref.double()(x), rtol=0, atol=0)  # float64: torch's own kernel


@needs_onednn
def test_compiled_graph_keeps_the_ops(backend: str) -> None:
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    ops: set[object] = set()

    def graph(gm: torch.fx.GraphModule, _: object) -> object:
        ops.update(n.target for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    m = Linear(12, 8)
    x = torch.randn(5, 12, requires_grad=True)
    compiled = torch.compile(m, backend=aot_autograd(fw_compiler=graph, bw_compiler=graph), fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    ours = {torch.ops.mixerlab.linear.default, torch.ops.mixerlab.linear_backward.default}
    assert (ours <= ops) == (backend == "onednn")
    xd, wd, bd = (t.detach().double() for t in (x, m.weight, m.bias))
    _assert_within(y.detach(), F.linear(xd, wd, bd), _bound(xd, wd.t()) + EPS32 * bd.abs())
    ones = torch.ones(8, 5, dtype=torch.float64)  # the cotangent of y.sum()
    _assert_within(m.weight.grad, ones @ xd, _bound(ones, xd))
    torch._dynamo.reset()


def test_cost_counter_counts_the_ops_as_the_plain_products(backend: str) -> None:
    from mixerlab.complexity import CostCounter

    m = Linear(12, 8)
    x = torch.randn(3, 5, 12, requires_grad=True)
    y = m(x)
    with CostCounter() as fwd:
        m(x)
    with CostCounter() as bwd:
        y.sum().backward()
    assert (fwd.macs, fwd.activations) == (15 * 8 * 12, 15 * 8)
    assert (bwd.macs, bwd.activations) == (2 * 15 * 8 * 12, 15 * 12 + 8 * 12)


def test_backend_choice_and_its_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cpu_matmul_backend()
    try:
        monkeypatch.setattr(linear_module, "_chosen", None)
        monkeypatch.setenv("MIXERLAB_CPU_MATMUL", "blas")
        assert cpu_matmul_backend() == "blas"
        monkeypatch.setattr(linear_module, "_chosen", None)
        monkeypatch.setenv("MIXERLAB_CPU_MATMUL", "mkl")
        with pytest.raises(ConfigError, match=r"'mkl' is invalid .*MIXERLAB_CPU_MATMUL.*auto, onednn, blas"):
            cpu_matmul_backend()
        assert set_cpu_matmul_backend("auto") in {"onednn", "blas"}
    finally:
        set_cpu_matmul_backend(before)


@needs_onednn
def test_inference_builds_no_graph() -> None:
    x, w = torch.randn(3, 4), torch.randn(2, 4, requires_grad=True)
    with torch.no_grad():
        y = linear(x, w, None)
    assert y.grad_fn is None
    _assert_within(y, x.double() @ w.detach().double().t(), _bound(x.double(), w.detach().double().t()))
