"""Attention-family mixers: global, window, halo, spatial-reduction and depth-wise attention (SPEC 5.1-5.4).

Each mixer is checked against an independent implementation: global attention with copied weights where
the two coincide, explicit per-position / per-channel loops otherwise, timm's HaloNet relative logits, and
parameter counts of STM-Evaluation's U-Halo / U-PVT models (counted by instantiating STM-Evaluation's own
model factories). Every comparison runs in float64 at a tolerance of 1e-10 relative to the output's
magnitude (:func:`assert_close64`), so none depends on the machine's float32 rounding (the LayerNorm
activations amplify it by up to 1 / sqrt(1e-5) on nearly constant logits). The masking rules (padding:
exactly zero weight; Swin's regions: additive -100 under softmax) are checked on the fused and the explicit
path at large weight scales, and the exposed aggregation weights reconstruct every mixer's output.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from timm.layers.halo_attn import PosEmbedRel

from mixerlab.config import MixerConfig
from mixerlab.errors import ConfigError
from mixerlab.mixers import MIXERS, MixerContext, build_mixer
from mixerlab.mixers import halo as halo_module
from mixerlab.mixers.attend import ATTN_ACTS, REGION_LOGIT, attend
from mixerlab.mixers.attention import GlobalAttention
from mixerlab.mixers.dwattn import DepthwiseAttention
from mixerlab.mixers.halo import HaloAttention, halo_softmax
from mixerlab.mixers.sra import SpatialReductionAttention
from mixerlab.mixers.window import WindowAttention, fit_window


def assert_close64(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """float64 agreement to 1e-10 of the output's magnitude. Round-off is ~1e-16 per operation; a few
    hundred summed terms and the LayerNorm activations' amplification (at most 1 / sqrt(1e-5) ~ 316) keep
    it below 1e-12, so 1e-10 fails only on a real difference."""
    assert actual.dtype == expected.dtype == torch.float64
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10 * scale)


def randomize_(m: torch.nn.Module, std: float | None = None) -> torch.nn.Module:
    """Every parameter re-drawn (``std`` None: N(0, 1/fan_in) matrices, N(0, .3^2) vectors), in float64."""
    m.double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, std if std is not None else (p[0].numel() ** -0.5 if p.dim() > 1 else 0.3))
    return m


#: (activation, fused): softmax on the SDPA path and on the explicit one; the others are explicit only.
PATHS = [("softmax", True), ("softmax", False)] + [(act, False) for act in ATTN_ACTS if act != "softmax"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def naive_act(logits: torch.Tensor, act: str) -> torch.Tensor:
    """Aggregation weights of one query over its (valid) keys, from the documented definitions."""
    n = logits.numel()
    if act == "softmax":
        return logits.softmax(-1)
    if act == "relu":
        return F.relu(logits) / n
    if act == "sigmoid":
        return torch.sigmoid(logits - math.log(n))
    x = F.relu(logits) if act == "relu_layernorm" else logits
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)


def perturbs_only_own_sample(mixer: torch.nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    x2 = x.clone()
    x2[0] += torch.randn(shape[1:])
    y, y2 = mixer(x), mixer(x2)
    torch.testing.assert_close(y[1:], y2[1:], rtol=0, atol=0)
    assert not torch.allclose(y[0], y2[0])


# ---- masking rules of attend ------------------------------------------------------------------------

def one_query(act: str, fused: bool, **masks: torch.Tensor) -> float:
    """q = [1], keys [0] and [300], values +1 and -1: the output tells where the weight went."""
    q, k = torch.tensor([[[[1.0]]]], dtype=torch.float64), torch.tensor([[[[0.0], [300.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[1.0], [-1.0]]]], dtype=torch.float64)
    return attend(q, k, v, act=act, scale=1.0, fused=fused, **masks).item()


@pytest.mark.parametrize(("act", "fused"), PATHS)
def test_padded_key_gets_zero_weight_at_any_logit(act: str, fused: bool) -> None:
    # The masked key's logit (300) is far above the live one (0): adding -100 would still give it the weight.
    alone = naive_act(torch.zeros(1, dtype=torch.float64), act).item()  # the live key on its own
    assert one_query(act, fused, mask=torch.tensor([[True, False]])) == alone


@pytest.mark.parametrize(("act", "fused"), PATHS)
def test_region_mask_is_swins_additive_rule_under_softmax(act: str, fused: bool) -> None:
    region = torch.tensor([[True, False]])  # (Nq, Nk)
    if act == "softmax":  # logits 0 and 300 - 100: Swin's rule leaves the weight on the other region's key
        want = torch.tensor([0.0, 200.0], dtype=torch.float64).softmax(0) @ torch.tensor([1.0, -1.0]).double()
        assert one_query(act, fused, region=region) == pytest.approx(want.item(), rel=1e-12)
    else:  # outside softmax a region mask excludes, like padding
        assert one_query(act, fused, region=region) == one_query(act, fused, mask=region)


@pytest.mark.parametrize("act", ATTN_ACTS)
def test_query_without_keys_gets_zero_weights(act: str) -> None:
    assert one_query(act, False, mask=torch.tensor([[False, False]])) == 0.0


def test_learned_bias_in_training_takes_the_explicit_kernel_on_cpu(monkeypatch) -> None:
    # CPU SDPA has no fused kernel for a bias that needs a gradient; attend() then computes the same
    # function explicitly (values and the bias gradient checked in float64), and SDPA otherwise.
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(1, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(1, 1, 5, 5, generator=g) > 0.3
    mask[..., 0] = True  # every query keeps a key
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    y = attend(q, k, v, bias=bias, mask=mask)
    assert calls == []
    with torch.no_grad():
        assert_close64(y, attend(q, k, v, bias=bias, mask=mask))
    assert calls == [1]
    torch.autograd.gradcheck(lambda b: attend(q, k, v, bias=b, mask=mask), (bias,))


# ---- window / halo attention reduce to global attention ------------------------------------------

@pytest.mark.parametrize("act", ATTN_ACTS)
@pytest.mark.parametrize(("res", "index"), [((7, 7), 0), ((7, 7), 1), ((5, 6), 1)])
def test_window_covering_the_map_is_global_attention(act: str, res: tuple[int, int], index: int) -> None:
    ctx = MixerContext(dim=16, num_heads=2, index=index, resolution=res)
    win = WindowAttention(ctx, window_size=7, shift=index == 1, rel_pos=False, attn_act=act)
    glob = GlobalAttention(ctx, attn_act=act).double()
    glob.load_state_dict(randomize_(win).state_dict())
    x = torch.randn(2, *res, 16, dtype=torch.float64)
    with torch.no_grad():
        assert_close64(win(x), glob(x))


def halo_as_global(halo: HaloAttention, ctx: MixerContext) -> GlobalAttention:
    """Global attention with halo's weights: q rows, then k and v rows de-interleaved per head."""
    c, h = ctx.dim, ctx.num_heads
    kv = halo.kv.weight.view(h, 2, c // h, c)
    glob = GlobalAttention(ctx, attn_act=halo.attn_act, qkv_bias=False).to(halo.q.weight.dtype)
    with torch.no_grad():
        glob.qkv.weight.copy_(torch.cat([halo.q.weight, kv[:, 0].reshape(c, c), kv[:, 1].reshape(c, c)]))
        glob.proj.load_state_dict(halo.proj.state_dict())
    return glob


@pytest.mark.parametrize("act", ATTN_ACTS)
@pytest.mark.parametrize("res", [(7, 7), (5, 6)])
def test_halo_covering_the_map_is_global_attention(act: str, res: tuple[int, int]) -> None:
    ctx = MixerContext(dim=16, num_heads=2, resolution=res)
    halo = randomize_(HaloAttention(ctx, attn_act=act))
    with torch.no_grad():
        halo.rel_height.zero_()
        halo.rel_width.zero_()
        x = torch.randn(2, *res, 16, dtype=torch.float64)
        assert_close64(halo(x), halo_as_global(halo, ctx)(x))


# ---- halo attention --------------------------------------------------------------------------------

def test_halo_relative_logits_match_timm() -> None:
    halo = HaloAttention(MixerContext(dim=32, num_heads=2)).double()
    ref = PosEmbedRel(block_size=7, win_size=13, dim_head=16, scale=0.25).double()
    ref.load_state_dict({"height_rel": halo.rel_height.detach(), "width_rel": halo.rel_width.detach()})
    q = torch.randn(3, 4, 7, 7, 16, dtype=torch.float64)  # (B, blocks, b, b, d)
    with torch.no_grad():
        assert_close64(halo.rel_logits(q), ref(q.reshape(3, 4, 49, 16)))


def naive_halo(m: HaloAttention, x: torch.Tensor) -> torch.Tensor:
    """Loop over samples, heads and queries; keys = window positions that lie on the map."""
    b, hh, ww, c = x.shape
    nh, d, bs, hs, ws = m.num_heads, c // m.num_heads, m.block_size, m.halo_size, m.win_size
    q = x @ m.q.weight.T
    kv = x @ m.kv.weight.view(2 * c, c).T
    y = torch.zeros(b, hh, ww, c, dtype=x.dtype)
    for s in range(b):
        for h in range(nh):
            k = kv[s, ..., h * 2 * d:h * 2 * d + d]
            v = kv[s, ..., h * 2 * d + d:(h + 1) * 2 * d]
            for i in range(hh):
                for j in range(ww):
                    r0, c0 = i // bs * bs - hs, j // bs * bs - hs  # window origin
                    rows = torch.arange(max(r0, 0), min(r0 + ws, hh))  # on-map keys only
                    cols = torch.arange(max(c0, 0), min(c0 + ws, ww))
                    qi = q[s, i, j, h * d:(h + 1) * d]
                    lh = m.rel_height[rows - r0 - i % bs + ws - 1] @ qi
                    lw = m.rel_width[cols - c0 - j % bs + ws - 1] @ qi
                    logits = k[rows][:, cols] @ qi * d ** -0.5 + lh[:, None] + lw[None, :]
                    weights = naive_act(logits.flatten(), m.attn_act)
                    y[s, i, j, h * d:(h + 1) * d] = weights @ v[rows][:, cols].reshape(-1, d)
    return y @ m.proj.weight.T + m.proj.bias


def naive_window(m: WindowAttention, x: torch.Tensor, swin_regions: bool = True) -> torch.Tensor:
    """Loop over samples, heads and queries, from the definitions in the module docstring.

    With the padded map Hp x Wp, row r sits at row (r - s) mod Hp of the rolled grid, in rolled window
    ((r - s) mod Hp) // w at in-window row ((r - s) mod Hp) mod w (same for columns). A query's keys are the
    on-map tokens of its rolled window, relative positions are differences of in-window coordinates. Two
    tokens are of one Swin region iff floor((r - s) / w) agree for rows and for columns (the offset windows);
    pairs of different regions get ``REGION_LOGIT`` added under softmax (Swin's rule) and are excluded under
    the other activations (and under softmax too with ``swin_regions=False``).
    """
    b, hh, ww, c = x.shape
    nh, d = m.num_heads, c // m.num_heads
    (wh, wwin), (sh, sw) = m.window, m.shift
    hp, wp = -(-hh // wh) * wh, -(-ww // wwin) * wwin
    qkv = m.qkv(x)
    y = torch.zeros(b, hh, ww, c, dtype=x.dtype)
    rows, cols = torch.meshgrid(torch.arange(hh), torch.arange(ww), indexing="ij")
    rr, rc = torch.remainder(rows - sh, hp), torch.remainder(cols - sw, wp)  # rolled coordinates
    window = (rr // wh) * 1000 + rc // wwin
    region = torch.div(rows - sh, wh, rounding_mode="floor") * 1000 + torch.div(cols - sw, wwin, rounding_mode="floor")
    for s in range(b):
        for h in range(nh):
            q, k, v = (qkv[s, ..., i * c + h * d:i * c + (h + 1) * d] for i in range(3))
            for i in range(hh):
                for j in range(ww):
                    keys = window == window[i, j]
                    rel = ((rr[i, j] % wh - rr[keys] % wh + wh - 1) * (2 * wwin - 1)
                           + (rc[i, j] % wwin - rc[keys] % wwin + wwin - 1))
                    logits = k[keys] @ q[i, j] * d ** -0.5 + m.relative_position_bias_table[rel, h]
                    same = region[keys] == region[i, j]
                    if m.attn_act == "softmax" and swin_regions:
                        weights, values = naive_act(logits + REGION_LOGIT * ~same, "softmax"), v[keys]
                    else:
                        weights, values = naive_act(logits[same], m.attn_act), v[keys][same]
                    y[s, i, j, h * d:(h + 1) * d] = weights @ values
    return y @ m.proj.weight.T + m.proj.bias


@pytest.mark.parametrize(("act", "fused"), PATHS)
@pytest.mark.parametrize(("res", "window", "fit"), [((8, 8), 7, "pad"), ((6, 5), 4, "pad"), ((8, 8), 4, "pad"),
                                                    ((9, 10), 7, "balance")])
@pytest.mark.parametrize("index", [0, 1])
def test_window_matches_naive_reference(act: str, fused: bool, res: tuple[int, int], window: int, fit: str,
                                        index: int) -> None:
    # 8x8 with window 7 padded is the 32-px U-Swin stage 1 under "pad": a 14x14 grid, shifted by 3 in odd blocks;
    # 9x10 balanced is 5x5 windows with one padded row (shift 2).
    m = WindowAttention(MixerContext(dim=8, num_heads=2, index=index, resolution=res), window_size=window,
                        attn_act=act, window_fit=fit, fused=fused).double()
    with torch.no_grad():
        m.relative_position_bias_table.normal_()
        x = torch.randn(2, *res, 8, dtype=torch.float64)
        assert_close64(m(x), naive_window(m, x))


@pytest.mark.parametrize(("act", "fused"), PATHS)
@pytest.mark.parametrize(("res", "window", "fit"), [((14, 14), 7, "pad"), ((8, 8), 7, "pad"), ((9, 10), 7, "balance")])
def test_window_masks_hold_at_large_weight_scale(act: str, fused: bool, res: tuple[int, int], window: int,
                                                 fit: str) -> None:
    """Weights at std 2 give logits in the hundreds. Padded keys must still get exactly zero weight (adding
    -100 to them would not do) and the region rule must be Swin's additive one on both paths (replacing the
    logit by -100 is another function once logits are below -100)."""
    m = WindowAttention(MixerContext(dim=8, num_heads=2, index=1, resolution=res), window_size=window,
                        attn_act=act, window_fit=fit, fused=fused)
    randomize_(m, std=2.0)
    x = torch.randn(1, *res, 8, dtype=torch.float64)
    with torch.no_grad():
        y, want = m(x), naive_window(m, x)
        assert_close64(y, want)
        if act == "softmax" and res == (14, 14):  # the scale is large enough for the region rule to matter
            assert (want - naive_window(m, x, swin_regions=False)).abs().max() > 1e-3 * want.abs().max()


@pytest.mark.parametrize(("act", "fused"), PATHS)
@pytest.mark.parametrize("index", [0, 1])
def test_window_masks_padding_even_with_large_logits(act: str, fused: bool, index: int) -> None:
    # k = -q and large aligned tokens: every live logit is far below -100 while a padded key's is about 0,
    # so a -100 padding mask (added or substituted) would hand it the weight; exact exclusion must not.
    m = WindowAttention(MixerContext(dim=8, num_heads=2, index=index, resolution=(5, 6)), window_size=4,
                        window_fit="pad", attn_act=act, fused=fused)
    randomize_(m)
    with torch.no_grad():
        m.qkv.weight[8:16] = -m.qkv.weight[:8]
        m.qkv.bias[:16] = 0
        x = 100 * F.normalize(torch.randn(8, dtype=torch.float64), dim=0) + torch.randn(1, 5, 6, 8, dtype=torch.float64)
        assert_close64(m(x), naive_window(m, x))


@pytest.mark.parametrize(("size", "balance", "pad"), [(56, (7, 3), (7, 3)), (14, (7, 3), (7, 3)), (7, (7, 0), (7, 0)),
                                                     (4, (4, 0), (4, 0)), (8, (4, 2), (7, 3)), (9, (5, 2), (7, 3)),
                                                     (12, (6, 3), (7, 3)), (15, (5, 2), (7, 3))])
def test_window_fit(size: int, balance: tuple[int, int], pad: tuple[int, int]) -> None:
    # (window, shift) along one side for window_size 7: "balance" keeps the window count, equalises the windows.
    assert fit_window(size, 7, "balance") == balance and fit_window(size, 7, "pad") == pad
    m = WindowAttention(MixerContext(dim=8, num_heads=2, index=1, resolution=(size, 56)), window_size=7)
    assert m.window == (balance[0], 7) and m.shift == (balance[1], 3)
    assert m.relative_position_bias_table.shape == ((2 * balance[0] - 1) * 13, 2)


@pytest.mark.parametrize(("act", "fused"), PATHS)
@pytest.mark.parametrize("std", [None, 2.0])
def test_halo_with_padding_matches_naive_reference(act: str, fused: bool, std: float | None) -> None:
    # 9 x 10 is padded to 14 x 14: blocks at the border see padded keys, which must be excluded, also when
    # weights at std 2 make the logits far larger than 100.
    m = randomize_(HaloAttention(MixerContext(dim=8, num_heads=2, resolution=(9, 10)), attn_act=act, fused=fused),
                   std)
    x = torch.randn(1, 9, 10, 8, dtype=torch.float64)
    with torch.no_grad():
        assert_close64(m(x), naive_halo(m, x))


@pytest.mark.parametrize(("act", "fused"), PATHS)
@pytest.mark.parametrize("res", [(1, 1), (2, 3), (4, 4), (7, 7)])
def test_halo_on_a_map_within_one_block_matches_naive_reference(act: str, fused: bool, res: tuple[int, int]) -> None:
    # Maps that fit in one block take the compact path (no padded queries or keys); the reference loops over
    # the padded definition. aggregation_weights follows the same path.
    m = randomize_(HaloAttention(MixerContext(dim=8, num_heads=2, resolution=res), attn_act=act, fused=fused))
    x = torch.randn(2, *res, 8, dtype=torch.float64)
    with torch.no_grad():
        assert m._one_block(x)
        assert_close64(m(x), naive_halo(m, x))
        a = m.aggregation_weights(x)  # (B, h, HW, HW); y = proj(merge_heads(A v))
        v = m.kv(x.permute(0, 3, 1, 2)).view(2, 2, 8, -1)[:, :, 4:].transpose(-1, -2)
        y = (a @ v).transpose(1, 2).reshape(x.shape)
        assert_close64(m.proj(y), naive_halo(m, x))


def test_halo_masks_padding_even_with_large_logits() -> None:
    # k = -q and large aligned tokens: every live logit is far below Swin's -100 mask value, so a
    # -100 mask would hand the weight to the padded (zero) keys; exact exclusion must not.
    m = randomize_(HaloAttention(MixerContext(dim=8, num_heads=1, resolution=(5, 5))))
    with torch.no_grad():
        m.rel_height.zero_()
        m.rel_width.zero_()
        m.kv.weight[:8] = -m.q.weight[..., None, None]
        x = 100 * F.normalize(torch.randn(8, dtype=torch.float64), dim=0) + torch.randn(1, 5, 5, 8, dtype=torch.float64)
        assert_close64(m(x), halo_as_global(m, MixerContext(dim=8, num_heads=1))(x))


@pytest.mark.parametrize(("block", "halo", "res", "chunk_rows"), [
    (3, 1, (6, 7), 100),  # several samples per chunk, a padded column of blocks
    (3, 1, (6, 7), 2),  # both heads of one sample per chunk
    (3, 1, (9, 6), 1),  # one block row per chunk
    (2, 2, (5, 5), 1),  # a window of 6 over blocks of 2: gradients added back in 3 x 3 disjoint classes
    (3, 0, (6, 6), 1),  # no halo: windows are the blocks
    (3, 1, (2, 3), 100),  # one padded block (torch.fx traces this path for maps that fit in a block)
])
def test_halo_softmax_kernel_passes_gradcheck(monkeypatch, block: int, halo: int, res: tuple[int, int],
                                              chunk_rows: int) -> None:
    # The chunk size counts kernel elements; one block row holds gw * block^2 * win^2 of them.
    win, gw = block + 2 * halo, -(-res[1] // block)
    monkeypatch.setattr(halo_module, "_CHUNK_ELEMENTS", chunk_rows * gw * block ** 2 * win ** 2)
    m = randomize_(HaloAttention(MixerContext(dim=4, num_heads=2, resolution=res), block_size=block, halo_size=halo))
    q = torch.randn(2, *res, 4, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(2, *res, 8, dtype=torch.float64, requires_grad=True)

    def fn(q: torch.Tensor, kv: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
        return halo_softmax(q, kv, rel_h, rel_w, m.rel_index, block, halo, 2, 0.7)

    assert torch.autograd.gradcheck(fn, (q, kv, m.rel_height, m.rel_width), fast_mode=True)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_halo_fused_and_explicit_paths_have_the_same_gradients(qkv_bias: bool) -> None:
    fused = randomize_(HaloAttention(MixerContext(dim=8, num_heads=2, resolution=(9, 10)), qkv_bias=qkv_bias))
    explicit = HaloAttention(MixerContext(dim=8, num_heads=2, resolution=(9, 10)), qkv_bias=qkv_bias, fused=False)
    explicit.double().load_state_dict(fused.state_dict())
    x = torch.randn(2, 9, 10, 8, dtype=torch.float64, requires_grad=True)
    grads = []
    for m in (fused, explicit):
        y = m(x)
        grads.append((y, *torch.autograd.grad((y * torch.linspace(-1, 1, 8, dtype=y.dtype)).sum(),
                                              [x, *m.parameters()])))
    for got, want in zip(*grads, strict=True):
        assert_close64(got, want)


@pytest.mark.parametrize(("act", "fused"), PATHS)
def test_dwattn_masks_padding_even_with_large_logits(act: str, fused: bool) -> None:
    m = DepthwiseAttention(MixerContext(dim=4), window_size=4, dw_proj=True, attn_act=act, fused=fused).double()
    with torch.no_grad():
        m.qk.weight.view(4, 2)[:, 1] = -m.qk.weight.view(4, 2)[:, 0]
        m.qk.bias.zero_()
    x = 200 * torch.rand(1, 5, 6, 4, dtype=torch.float64) + 100
    with torch.no_grad():
        assert_close64(m(x), naive_dwattn(m, x))


def test_halo_parameter_count_matches_stm_eval() -> None:
    # STM-Eval HaloAttn(dim=96, num_heads=3, block 7, halo 3, query_related): q 96*96, kv 96*192,
    # proj 96*96 + 96, height_rel / width_rel 25 x 32 each.
    m = HaloAttention(MixerContext(dim=96, num_heads=3, resolution=(56, 56)))
    assert sum(p.numel() for p in m.parameters()) == 38560


# ---- spatial-reduction attention ---------------------------------------------------------------------

def naive_sra(m: SpatialReductionAttention, x: torch.Tensor) -> torch.Tensor:
    """Reduction conv as explicit sums over each r x r patch's on-map tokens, then attention per head."""
    b, hh, ww, c = x.shape
    r, nh, d = m.sr_ratio, m.num_heads, c // m.num_heads
    gh, gw = -(-hh // r), -(-ww // r)
    red = torch.zeros(b, gh, gw, c, dtype=x.dtype)
    for a in range(gh):
        for e in range(gw):
            acc = m.sr.bias.expand(b, c).clone()
            for u in range(r):
                for v in range(r):
                    if a * r + u < hh and e * r + v < ww:
                        acc = acc + x[:, a * r + u, e * r + v] @ m.sr.weight[:, :, u, v].T
            red[:, a, e] = acc
    red = F.layer_norm(red.reshape(b, -1, c), (c,), m.norm.weight, m.norm.bias, 1e-5)
    q = x.reshape(b, -1, c) @ m.q.weight.T + m.q.bias
    kv = red @ m.kv.weight.T + m.kv.bias
    k, vv = kv[..., :c], kv[..., c:]
    y = torch.zeros(b, hh * ww, c, dtype=x.dtype)
    for s in range(b):
        for h in range(nh):
            sl = slice(h * d, (h + 1) * d)
            for i in range(hh * ww):
                w = naive_act(k[s, :, sl] @ q[s, i, sl] * d ** -0.5, m.attn_act)
                y[s, i, sl] = w @ vv[s, :, sl]
    return (y @ m.proj.weight.T + m.proj.bias).reshape(b, hh, ww, c)


@pytest.mark.parametrize("act", ATTN_ACTS)
def test_sra_with_padded_reduction_matches_naive_reference(act: str) -> None:
    # 5 x 7 with r = 2: padded to 6 x 8, border keys reduce fewer real tokens.
    ctx = MixerContext(dim=8, num_heads=2, stage=2, index=1, resolution=(5, 7))
    m = SpatialReductionAttention(ctx, attn_act=act).double()
    assert m.sr_ratio == 2 and m.pos_embed is None
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:  # non-zero biases and LayerNorm affine
                p.normal_(0, 0.3)
    x = torch.randn(2, 5, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        assert_close64(m(x), naive_sra(m, x))


@pytest.mark.parametrize("act", ATTN_ACTS)
def test_sra_without_reduction_is_global_attention(act: str) -> None:
    ctx = MixerContext(dim=16, num_heads=2, stage=3, index=1, resolution=(6, 5))
    m = randomize_(SpatialReductionAttention(ctx, sr_ratio=1, attn_act=act))
    glob = GlobalAttention(ctx, attn_act=act).double()
    with torch.no_grad():
        glob.qkv.weight.copy_(torch.cat([m.q.weight, m.kv.weight]))
        glob.qkv.bias.copy_(torch.cat([m.q.bias, m.kv.bias]))
        glob.proj.load_state_dict(m.proj.state_dict())
        x = torch.randn(2, 6, 5, 16, dtype=torch.float64)
        assert_close64(m(x), glob(x))


def shift_equivariant(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> bool:
    def shift(t: torch.Tensor) -> torch.Tensor:
        return torch.roll(t, shifts=(2, 3), dims=(1, 2))
    want = shift(f(x))
    return torch.allclose(f(shift(x)), want, rtol=1e-10, atol=1e-10 * want.abs().max().item())


def test_sra_position_embedding_breaks_translation_equivariance() -> None:
    x = torch.randn(2, 6, 6, 16, dtype=torch.float64)
    first = MixerContext(dim=16, num_heads=2, stage=3, index=0, resolution=(6, 6))
    later = MixerContext(dim=16, num_heads=2, stage=3, index=1, resolution=(6, 6))
    with torch.no_grad():
        # Mixer input placement: the table makes the otherwise permutation-equivariant r = 1 attention shift-variant.
        assert shift_equivariant(SpatialReductionAttention(later, sr_ratio=1, pos_embed="input").double(), x)
        assert not shift_equivariant(SpatialReductionAttention(first, sr_ratio=1, pos_embed="input").double(), x)
        # Residual-stream placement (STM-Eval's PvtBlock): forward ignores the table, the block adds it.
        m = SpatialReductionAttention(first, sr_ratio=1).double()
        assert m.pos_mode == "stream" and shift_equivariant(m, x)
        norm = torch.nn.LayerNorm(16).double()

        def pvt_block_branch(t: torch.Tensor) -> torch.Tensor:
            t = m.add_pos_embed(t)
            return t + m(norm(t))

        assert not shift_equivariant(pvt_block_branch, x)


def test_sra_position_embedding_is_resampled_bicubic() -> None:
    m = SpatialReductionAttention(MixerContext(dim=8, num_heads=1, stage=1, index=0, resolution=(4, 6))).double()
    assert m.pos_embed.shape == (1, 4, 6, 8)
    with torch.no_grad():
        x = torch.randn(2, 4, 6, 8, dtype=torch.float64)
        assert torch.equal(m.add_pos_embed(x), x + m.pos_embed)  # same size: the table itself
        # timm resamples in float32 whatever the table's dtype: the reference is that same float32 op.
        x = torch.randn(2, 7, 5, 8, dtype=torch.float64)
        ref = F.interpolate(m.pos_embed.float().permute(0, 3, 1, 2), size=(7, 5), mode="bicubic",
                            antialias=True).permute(0, 2, 3, 1)
        assert torch.equal(m.add_pos_embed(x), x + ref.double())
        assert m(x).shape == x.shape
    assert SpatialReductionAttention(MixerContext(dim=8, stage=1, index=1)).pos_embed is None
    assert SpatialReductionAttention(MixerContext(dim=8, stage=1, index=0), pos_embed="none").pos_embed is None


def test_sra_parameter_count_matches_stm_eval() -> None:
    # STM-Eval Attention(dim=64, heads=1, qkv_bias=True, sr_ratio=8) + PvtBlock pos_embed (1, 64, 56, 56):
    # q 64*64+64, kv 64*128+128, proj 64*64+64, sr 64*64*8*8+64, norm 2*64, pos 64*56*56.
    m = SpatialReductionAttention(MixerContext(dim=64, num_heads=1, stage=0, index=0, resolution=(56, 56)),
                                  sr_ratio=8)
    assert sum(p.numel() for p in m.parameters()) == 479680


@pytest.mark.parametrize(("mixer", "mlp_ratio", "expected"), [
    ("halo", 4.0, 4389672),             # STM-Eval unified_halo_micro
    ("sra", [8, 8, 4, 4], 4454056),     # STM-Eval unified_pvt_micro (sr_ratio 8/4/2/1, one sra per stage)
])
def test_unified_micro_models_match_stm_eval_parameter_count(mixer: str, mlp_ratio: float | list[float],
                                                            expected: int) -> None:
    from mixerlab.archs.hierarchical import HierarchicalNet
    from mixerlab.zoo.stm_eval import SWIN, unified

    table = SWIN if mixer == "halo" else {"micro": ([2, 2, 3, 2], [32, 64, 160, 256], [1, 2, 5, 8], 0.0)}
    config = MixerConfig(mixer, {}) if mixer == "halo" else [MixerConfig("sra", {"sr_ratio": r}) for r in (8, 4, 2, 1)]
    model = HierarchicalNet(unified(table, "micro", config, mlp_ratio=mlp_ratio))
    assert sum(p.numel() for p in model.parameters()) == expected


# ---- depth-wise attention ----------------------------------------------------------------------------

def naive_dwattn_qk(m: DepthwiseAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel q and k: a depth-wise 1x1 projection (``dw_proj``) or a Linear."""
    c = x.shape[-1]
    if isinstance(m.qk, torch.nn.Conv2d):
        w, bias = m.qk.weight.view(c, 2), m.qk.bias.view(c, 2)
        return x * w[:, 0] + bias[:, 0], x * w[:, 1] + bias[:, 1]
    q, k = (x @ m.qk.weight.T + m.qk.bias).split(c, dim=-1)
    return q, k


def naive_dwattn(m: DepthwiseAttention, x: torch.Tensor) -> torch.Tensor:
    """Per channel c: logits q_{i,c} k_{j,c} over the keys in i's window (or all keys), explicit loops."""
    b, hh, ww, c = x.shape
    q, k = naive_dwattn_qk(m, x)
    v = x @ m.v.weight.T + m.v.bias
    rows, cols = torch.meshgrid(torch.arange(hh), torch.arange(ww), indexing="ij")
    region = torch.zeros(hh * ww, dtype=torch.long)
    if m.window_size:
        wh, wc = (fit_window(r, m.window_size, m.window_fit)[0] for r in (hh, ww))
        region = (rows // wh * 1000 + cols // wc).flatten()
    q, k, v = (t.reshape(b, hh * ww, c) for t in (q, k, v))
    y = torch.zeros(b, hh * ww, c, dtype=x.dtype)
    for s in range(b):
        for ch in range(c):
            for i in range(hh * ww):
                keys = region == region[i]
                y[s, i, ch] = naive_act(q[s, i, ch] * k[s, keys, ch], m.attn_act) @ v[s, keys, ch]
    return (y @ m.proj.weight.T + m.proj.bias).reshape(b, hh, ww, c)


@pytest.mark.parametrize(("act", "fused"), PATHS)
@pytest.mark.parametrize("dw_proj", [False, True])
@pytest.mark.parametrize(("window_size", "fit"), [(None, "balance"), (4, "balance"), (4, "pad")])
def test_dwattn_matches_per_channel_reference(act: str, fused: bool, dw_proj: bool, window_size: int | None,
                                              fit: str) -> None:
    ctx = MixerContext(dim=6, num_heads=1)
    m = DepthwiseAttention(ctx, window_size=window_size, dw_proj=dw_proj, attn_act=act, window_fit=fit,
                           fused=fused).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(1, 5, 6, 6, dtype=torch.float64)  # padded to 8 x 8 (windows of 4) or 6 x 6 (balanced: 3)
    with torch.no_grad():
        assert_close64(m(x), naive_dwattn(m, x))


def test_dwattn_window_larger_than_map_is_global() -> None:
    ctx = MixerContext(dim=8)
    glob = randomize_(DepthwiseAttention(ctx))
    win = DepthwiseAttention(ctx, window_size=7).double()
    win.load_state_dict(glob.state_dict())
    x = torch.randn(2, 5, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        assert_close64(win(x), glob(x))


# ---- exposed aggregation weights -----------------------------------------------------------------------

def value_heads(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The values ``(B, h, Nk, d)`` each mixer's weights act on, written out from its parameters."""
    c = x.shape[-1]
    t = x.flatten(1, 2)
    if isinstance(m, (GlobalAttention, WindowAttention)):
        v = t @ m.qkv.weight[2 * c:].T + m.qkv.bias[2 * c:]
    elif isinstance(m, HaloAttention):  # kv channels grouped per head as [k_head | v_head]
        v = (t @ m.kv.weight.view(2 * c, c).T).unflatten(-1, (m.num_heads, 2, -1))[..., 1, :].flatten(2)
    else:  # reduction conv over the zero-padded map, then LayerNorm (none at r = 1)
        r, xr = m.sr_ratio, t
        if r > 1:
            xr = F.pad(x, (0, 0, 0, -x.shape[2] % r, 0, -x.shape[1] % r)).permute(0, 3, 1, 2)
            xr = m.norm(m.sr(xr).flatten(2).transpose(1, 2))
        v = xr @ m.kv.weight[c:].T + m.kv.bias[c:]
    return v.unflatten(-1, (m.num_heads, -1)).transpose(1, 2)


@pytest.mark.parametrize("act", ATTN_ACTS)
@pytest.mark.parametrize(("name", "args", "res", "index"), [
    ("attention", {}, (4, 5), 0),
    ("window", {"window_size": 3, "window_fit": "pad"}, (5, 5), 1),  # padded to 6 x 6, shifted by 1
    ("window", {"window_size": 4, "window_fit": "pad"}, (6, 5), 1),
    ("halo", {"block_size": 2, "halo_size": 1}, (5, 5), 0),  # padded blocks, 4 x 4 key windows
    ("halo", {}, (4, 5), 0),  # one block holding the map
    ("sra", {"sr_ratio": 2}, (5, 5), 1),  # reduced to 3 x 3 over a padded map
    ("sra", {"sr_ratio": 1}, (4, 5), 1),
])
def test_aggregation_weights_reconstruct_the_output(name: str, args: dict, res: tuple[int, int], index: int,
                                                    act: str) -> None:
    """``forward(x) = proj(merge_heads(A @ v))`` with the documented layout of A (queries and keys at map
    positions row-major, zero weight outside a query's window). Each map has no more keys than a head has
    channels, so v has full row rank and the identity determines A: no other layout could satisfy it."""
    m = randomize_(build_mixer(name, MixerContext(dim=64, num_heads=2, index=index, resolution=res),
                               attn_act=act, **args))
    x = torch.randn(2, *res, 64, dtype=torch.float64)
    with torch.no_grad():
        a, v = m.aggregation_weights(x), value_heads(m, x)
        assert a.shape == (2, 2, res[0] * res[1], v.shape[2]) and v.shape[2] <= v.shape[3]
        y = m.proj((a @ v).transpose(1, 2).flatten(2)).view_as(x)
        assert_close64(y, m(x))  # softmax: forward runs the fused path
        if act == "softmax":
            assert_close64(a.sum(-1), torch.ones_like(a[..., 0]))


def naive_dwattn_weights(m: DepthwiseAttention, x: torch.Tensor) -> torch.Tensor:
    """``(B, C, N, N)`` per-channel weights from :func:`naive_dwattn`'s definition."""
    b, hh, ww, c = x.shape
    q, k = naive_dwattn_qk(m, x)
    rows, cols = torch.meshgrid(torch.arange(hh), torch.arange(ww), indexing="ij")
    region = torch.zeros(hh * ww, dtype=torch.long)
    if m.window_size:
        wh, wc = (fit_window(r, m.window_size, m.window_fit)[0] for r in (hh, ww))
        region = (rows // wh * 1000 + cols // wc).flatten()
    q, k = q.reshape(b, hh * ww, c), k.reshape(b, hh * ww, c)
    a = torch.zeros(b, c, hh * ww, hh * ww, dtype=x.dtype)
    for s in range(b):
        for ch in range(c):
            for i in range(hh * ww):
                keys = region == region[i]
                a[s, ch, i, keys] = naive_act(q[s, i, ch] * k[s, keys, ch], m.attn_act)
    return a


@pytest.mark.parametrize("act", ATTN_ACTS)
@pytest.mark.parametrize("window_size", [None, 4])
def test_dwattn_aggregation_weights(act: str, window_size: int | None) -> None:
    """Head dim 1 cannot pin A through the output: it is compared with the per-channel definition too."""
    m = randomize_(DepthwiseAttention(MixerContext(dim=6), window_size=window_size, attn_act=act,
                                      window_fit="pad"))
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)  # windows of 4: padded to 8 x 8
    with torch.no_grad():
        a = m.aggregation_weights(x)
        assert_close64(a, naive_dwattn_weights(m, x))
        y = torch.einsum("bcij,bjc->bic", a, m.v(x).flatten(1, 2))
        assert_close64(m.proj(y).view_as(x), m(x))


# ---- every new mixer, every activation ----------------------------------------------------------------

CASES = {
    "halo": ({}, (3, 9, 10, 16)),
    "sra_r8": ({"sr_ratio": 8}, (3, 12, 10, 16)),
    "sra_r1_pos": ({"sr_ratio": 1, "pos_embed": "input"}, (3, 5, 6, 16)),
    "dwattn_global": ({}, (3, 5, 6, 16)),
    "dwattn_window_dw": ({"window_size": 4, "dw_proj": True}, (3, 9, 10, 16)),
}


@pytest.mark.parametrize("act", ATTN_ACTS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_new_mixers_shape_grad_and_batch_independence(case: str, act: str) -> None:
    args, shape = CASES[case]
    name = case.split("_")[0]
    # Only the 'input' placement uses a stage's position table inside forward: other cases are later blocks.
    stage, index = (3, 0) if case == "sra_r1_pos" else (0, 1)
    ctx = MixerContext(dim=16, num_heads=2, stage=stage, index=index, resolution=(8, 8))
    m = build_mixer(name, ctx, attn_act=act, **args)
    x = torch.randn(shape, requires_grad=True)
    y = m(x)
    assert y.shape == shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    used = [n for n, p in m.named_parameters() if p.grad is None]
    assert used == [], f"parameters without gradient: {used}"
    with torch.no_grad():
        perturbs_only_own_sample(m, shape)


def test_registered_names() -> None:
    assert MIXERS["halo"] is HaloAttention
    assert MIXERS["sra"] is SpatialReductionAttention
    assert MIXERS["dwattn"] is DepthwiseAttention


@pytest.mark.parametrize(("name", "args", "field"), [
    ("halo", {"attn_act": "tanh"}, "attn_act"),
    ("halo", {"block_size": 0}, "block_size"),
    ("halo", {"halo_size": -1}, "halo_size"),
    ("sra", {"sr_ratio": 0}, "sr_ratio"),
    ("sra", {"sr_ratio": True}, "sr_ratio"),
    ("sra", {"sr_ratio": 2.0}, "sr_ratio"),
    ("sra", {"pos_embed": "absolute"}, "pos_embed"),
    ("dwattn", {"window_size": 0}, "window_size"),
    ("dwattn", {"attn_act": "softplus"}, "attn_act"),
    ("window", {"window_fit": "crop"}, r"window_fit='crop' is invalid: allowed values are \['balance', 'pad'\]"),
])
def test_bad_arguments_are_rejected_by_name(name: str, args: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build_mixer(name, MixerContext(dim=16, num_heads=2), **args)


def test_sra_takes_one_ratio_per_stage_as_per_stage_mixers() -> None:
    """A list of ratios is refused with a pointer to per-stage mixer configs, which give PVT's 8/4/2/1."""
    with pytest.raises(ConfigError, match=r"mixer\.args\.sr_ratio=\[8, 4, 2, 1\] is invalid: one int; per-stage "
                                          r"values go in per-stage mixer configs: mixer=\[\.\.\.\]"):
        build_mixer("sra", MixerContext(dim=16, num_heads=2, stage=2), sr_ratio=[8, 4, 2, 1])
    from mixerlab import build_model
    from mixerlab.zoo.stm_eval import configs

    cfg = configs()["u_pvt_micro"]
    assert cfg.mixer == [MixerConfig("sra", {"sr_ratio": r}) for r in (8, 4, 2, 1)]
    assert [m.sr_ratio for _, m in build_model(cfg).mixers()] == [8] * 2 + [4] * 2 + [2] * 3 + [1] * 2
