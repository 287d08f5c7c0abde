"""torch.fx traceability of every mixer, as timm's ``test_model_forward_fx`` needs it.

Each mixer is traced the way timm's feature extraction traces a model (torchvision's
``create_feature_extractor`` with timm's leaf modules and ``register_notrace_function`` functions as
autowrapped leaves, train and eval graphs), then the graph must compute the eager output exactly (same
ops in the same order) -- on the map it was traced at and on others, since all shape arithmetic must
stay out of the graph's constants. Iterating a Proxy is forbidden here: ``b, h, w, c = x.shape`` only
traces through a bytecode inspection that does not hold on every Python / tool (the failure timm's test
reported).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from torch import fx, nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from mixerlab.blocks import MetaBlock
from mixerlab.mixers import MIXERS, MixerContext, build_mixer

TRACER_KWARGS = {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions(),
                 "param_shapes_constant": True}  # timm's test_models.py settings


@pytest.fixture(autouse=True)
def _no_proxy_iteration(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(self: fx.Proxy) -> Any:
        raise fx.proxy.TraceError(f"Proxy object cannot be iterated: {self}")

    monkeypatch.setattr(fx.Proxy, "__iter__", refuse)
    yield


def traced(model: nn.Module) -> nn.Module:
    """timm's ``_create_fx_model``: the last node of the train and of the eval graph as outputs."""
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=TRACER_KWARGS)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                    eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=TRACER_KWARGS)


def check_same_as_eager(model: nn.Module, shapes: list[tuple[int, ...]]) -> None:
    torch.manual_seed(0)
    model.eval()
    graph = traced(model).eval()
    assert isinstance(graph, fx.GraphModule)
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            (y,) = graph(x).values()
            torch.testing.assert_close(y, model(x), rtol=0, atol=0)


SHAPES = [(2, 8, 8, 32), (1, 9, 11, 32)]  # the built resolution, then one that needs window padding


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_every_mixer_traces(name: str) -> None:
    # index 1: the shifted window of the second block (and no position table for sra).
    check_same_as_eager(build_mixer(name, MixerContext(dim=32, num_heads=2, index=1, resolution=(8, 8))), SHAPES)


@pytest.mark.parametrize(("name", "args"), [
    ("window", {"window_size": 3}),  # 8x8 -> balanced 3 x 3 windows (shift 1) with padding
    ("window", {"window_size": 5, "window_fit": "pad", "attn_act": "relu_layernorm"}),
    ("dwattn", {"window_size": 3, "dw_proj": True}),
    ("halo", {"block_size": 3, "halo_size": 1, "attn_act": "sigmoid"}),
    ("sra", {"pos_embed": "input", "sr_ratio": 3}),
    ("attention", {"attn_act": "layernorm"}),
])
def test_mixer_variants_trace(name: str, args: dict[str, Any]) -> None:
    ctx = MixerContext(dim=32, num_heads=2, index=1 if name == "window" else 0, resolution=(8, 8))
    check_same_as_eager(build_mixer(name, ctx, **args), SHAPES)


@pytest.mark.parametrize(("name", "args"), [("window", {"window_size": 3}), ("sra", {"sr_ratio": 2})])
def test_blocks_trace(name: str, args: dict[str, Any]) -> None:
    """A shifted-window block on maps that need padding; a PVT block whose position table joins the stream."""
    ctx = MixerContext(dim=32, num_heads=2, index=1 if name == "window" else 0, resolution=(8, 8))
    check_same_as_eager(MetaBlock(32, build_mixer(name, ctx, **args)), SHAPES)
