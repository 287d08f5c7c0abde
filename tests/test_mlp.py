"""The blocks' MLP: the chunked CPU path computes timm's Mlp, values and gradients, and is taken only where meant."""

from __future__ import annotations

import pytest
import torch
from timm.layers import Mlp
from torch import nn

from mixerlab import mlp as mlp_module
from mixerlab.mlp import ChunkedMlp, _ChunkedMlp


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
    assert torch.autograd.gradcheck(lambda *a: _ChunkedMlp.apply(*a, 4), args, fast_mode=True)


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


def test_compiled_cpu_mlp_adds_biases_apart_from_the_products() -> None:
    plain, ours = _pair()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    y, ops = _compiled_aten_ops(ours, x)
    assert torch.ops.aten.addmm.default not in ops and torch.ops.aten.mm.default in ops
    ref = plain(x)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.linspace(-1, 1, 6, dtype=y.dtype)
    got = torch.autograd.grad((y * g).sum(), [x, *ours.parameters()])
    for a, b in zip(got, torch.autograd.grad((ref * g).sum(), [x, *plain.parameters()]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # Under autocast the plain module runs (its Linear casts the bias with the product's dtype).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, ops = _compiled_aten_ops(ChunkedMlp(6, 10), torch.randn(3, 6))
    assert torch.ops.aten.addmm.default in ops
