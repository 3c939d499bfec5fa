"""Gemma4's training attention kernels (attention.py) and the layouts they read, on the CPU.

The Triton kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
in fp32 and are compared, forward and backward, with an fp64 reference written here from
positions and sequence ids (not from the kernels' key ranges). Context parallelism is
emulated rank by rank: every rank's layout and exchanged tails must give exactly what one
rank gives for the whole sequence. The same code on two real ranks: test_distributed.py;
bf16 on a GPU: gpu_attention_check.py and cp_gpu_check.py.
"""

from __future__ import annotations

import pytest
import torch

import g4util
from g4util import mpu  # noqa: F401  (fixture)
from slime_plugins.models.gemma4 import attention as A

pytestmark = pytest.mark.skipif(A.triton is None, reason="Triton is not installed")


def positions_and_segments(lengths, padding=0):
    pos = torch.cat([torch.arange(n) for n in lengths] + [torch.arange(padding)])
    seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]
                    + [torch.full((1,), -1 - j) for j in range(padding)])  # padding: each token alone
    return pos, seg


def masked_reference(q, k, v, lengths, window, scale, padding=0):
    """fp64 attention of packed sequences, the mask from positions and sequence ids."""
    pos, seg = positions_and_segments(lengths, padding)
    mask = (seg[:, None] == seg[None, :]) & (pos[None, :] <= pos[:, None])
    if window is not None:
        mask &= (pos[:, None] - pos[None, :]) < window
    H, G = q.shape[1], k.shape[1]
    qd, kd, vd = (t.double() for t in (q, k, v))
    kd, vd = kd.repeat_interleave(H // G, 1), vd.repeat_interleave(H // G, 1)
    s = torch.einsum("thd,uhd->htu", qd, kd) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1).t()
    return torch.einsum("htu,uhd->thd", torch.softmax(s, -1), vd), lse


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def run_both(lengths, H, G, D, window, padding=0, scale=0.8, seed=0):
    torch.manual_seed(seed)
    T = sum(lengths) + padding
    q, k, v = torch.randn(T, H, D), torch.randn(T, G, D), torch.randn(T, G, D)
    do = torch.randn(T, H, D)
    lay = A.build_layout(lengths, 1, 0, window, "cpu", padding)
    A.check_ranges(lay.q_lo, lay.q_hi, lay.num_keys)
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    o, lse = A.attend(*xs, lay.q_lo, lay.q_hi, scale, use_kernel=True)
    o.backward(do)
    rs = [t.double().requires_grad_() for t in (q, k, v)]
    ro, rlse = masked_reference(*rs, lengths, window, scale, padding)
    ro.backward(do.double())
    return dict(out=(o, ro), lse=(lse, rlse), dq=(xs[0].grad, rs[0].grad), dk=(xs[1].grad, rs[1].grad),
                dv=(xs[2].grad, rs[2].grad))


CASES = {
    # boundaries inside a window, lengths not a multiple of any tile, a one-token sequence
    "sliding packed 4:2 w5": ([37, 1, 20], 4, 2, 16, 5, 3),
    "global causal 8:1": ([70], 8, 1, 32, None, 0),
    "global packed 4:4": ([33, 31, 2], 4, 4, 16, None, 0),
    "sliding 6:2 w9 (heads per group not a power of two)": ([45, 19], 6, 2, 16, 9, 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kernels_match_fp64_forward_and_backward(case):
    res = run_both(*CASES[case])
    for name, (ours, ref) in res.items():
        assert rel(ours, ref) < 5e-5, (name, rel(ours, ref))


@pytest.mark.parametrize("case", ["sliding packed 4:2 w5", "global packed 4:4"])
def test_transposed_dkdv_tiles_match_fp64(monkeypatch, case):
    """dK/dV with the score tiles computed keys x queries (tiles key 'kt', chosen for the global
    layers' short query tiles), full and split head dims."""
    import json

    tiles = {f"dkdv/{d}": dict(BM=16, BN=16, warps=4, stages=1, kt=True) for d in (16, 32)}
    monkeypatch.setenv("GEMMA4_ATTENTION_TILES", json.dumps(tiles))
    for split_above, args in ((256, CASES[case]), (16, ([29, 23], 4, 2, 32, CASES[case][4]))):
        monkeypatch.setattr(A, "SPLIT_ABOVE", split_above)
        res = run_both(*args)
        for name, (ours, ref) in res.items():
            assert rel(ours, ref) < 5e-5, (split_above, name, rel(ours, ref))


def _all_tiles(**flags):
    """Small fp32 tiles for every pass and head dim the tests use, with `flags` set."""
    return {f"{kind}/{d}": dict(BM=16, BN=16, warps=4, stages=1, **flags)
            for kind in ("fwd", "dq", "dkdv") for d in (16, 32)}


def _inner_tiles(lengths, window, H, G, padding=0):
    """How many (query tile, key tile) pairs the dK/dV pass takes as wholly visible."""
    lay = A.build_layout(lengths, 1, 0, window, "cpu", padding)
    tt = max(1, 16 // (H // G))
    _, _, f_lo, f_hi = A._key_tile_query_ranges(lay.q_lo, lay.q_hi, lay.num_keys, 16, tt)
    return int((f_hi - f_lo).sum())


FULL_CASES = {
    "global causal 4:1, 150 tokens": ([150], 4, 1, 16, None, 0),
    "packed 4:2 with padding": ([61, 1, 47], 4, 2, 16, None, 5),
    "sliding 4:2 w37, packed": ([90, 53], 4, 2, 16, 37, 0),
    "sliding 8:2 w20, split head dim": ([71], 8, 2, 32, 20, 0),
}


@pytest.mark.parametrize("case", list(FULL_CASES))
@pytest.mark.parametrize("transposed", [False, True])
def test_wholly_visible_tiles_run_unmasked_and_match_fp64(monkeypatch, case, transposed):
    """With tiles key 'full', the key tiles every row of a query tile sees whole (and, in the
    dK/dV pass, the query tiles that see a key tile whole) skip the range mask.  Which branch a
    tile takes must never change the result: fp64 reference, packed sequences, padding,
    windows, head dims split in two; with the score tiles as queries x keys, or transposed
    (keys x queries: 'kt' in dK/dV, 'qb' in the forward and dQ, as the global layers run)."""
    import json

    lengths, H, G, D, window, padding = FULL_CASES[case]
    assert _inner_tiles(lengths, window, H, G, padding) > 0  # the unmasked branch is taken
    tiles = _all_tiles(full=True)
    for key in tiles:
        tiles[key]["kt" if key.startswith("dkdv") else "qb"] = transposed
    monkeypatch.setenv("GEMMA4_ATTENTION_TILES", json.dumps(tiles))
    if D == 32:
        monkeypatch.setattr(A, "SPLIT_ABOVE", 16)
    res = run_both(lengths, H, G, D, window, padding)
    for name, (ours, ref) in res.items():
        assert rel(ours, ref) < 5e-5, (name, rel(ours, ref))


def test_wholly_visible_tile_ranges_are_exact():
    """The dK/dV pass's (f_lo, f_hi) per key tile, checked against the ranges themselves:
    inside it every row of a query tile sees every key of the key tile; a complete query
    tile just outside it does not."""
    for lengths, window, padding in (([150], None, 0), ([61, 1, 47], None, 5), ([90, 53], 37, 0), ([33], 4, 2)):
        lay = A.build_layout(lengths, 1, 0, window, "cpu", padding)
        T, TK, bn, tt = lay.q_lo.numel(), lay.num_keys, 16, 4
        t_lo, t_hi, f_lo, f_hi = A._key_tile_query_ranges(lay.q_lo, lay.q_hi, TK, bn, tt)
        lo, hi = lay.q_lo.long(), lay.q_hi.long()
        for nb in range(len(f_lo)):
            n0 = nb * bn
            whole = [t for t in range(T // tt)
                     if n0 + bn <= TK and bool(((lo[t * tt:(t + 1) * tt] <= n0)
                                                & (hi[t * tt:(t + 1) * tt] >= n0 + bn)).all())]
            got = list(range(int(f_lo[nb]), int(f_hi[nb])))
            assert got == whole, (lengths, window, nb, got, whole)
            assert int(t_lo[nb]) <= int(f_lo[nb]) <= int(f_hi[nb]) <= int(t_hi[nb])


def test_split_head_dim_path_matches(monkeypatch):
    """The global layers' 512 is split in two halves for the dot products; exercise that
    code path at a small head_dim by lowering the split threshold."""
    monkeypatch.setattr(A, "SPLIT_ABOVE", 16)
    assert A._split(32, 32) == 2
    res = run_both([29, 23], 4, 2, 32, None)
    for name, (ours, ref) in res.items():
        assert rel(ours, ref) < 5e-5, (name, rel(ours, ref))
    res = run_both([29, 23], 4, 2, 32, 6)
    for name, (ours, ref) in res.items():
        assert rel(ours, ref) < 5e-5, (name, rel(ours, ref))


@pytest.mark.parametrize("use_kernel", [True, False])
def test_window_edge_is_exact(use_kernel):
    """A query at p sees p-w+1 and not p-w (w = 7): moving the value at p-w changes nothing."""
    w, T, H, G, D = 7, 40, 2, 1, 16
    torch.manual_seed(3)
    q, k, v = torch.randn(T, H, D), torch.randn(T, G, D), torch.randn(T, G, D)
    lay = A.build_layout([T], 1, 0, w, "cpu")
    base, _ = A.attend(q, k, v, lay.q_lo, lay.q_hi, 1.0, use_kernel=use_kernel)
    p = 30
    for back, moves in ((w, False), (w - 1, True)):
        v2 = v.clone()
        v2[p - back] += 1.0
        out, _ = A.attend(q, k, v2, lay.q_lo, lay.q_hi, 1.0, use_kernel=use_kernel)
        changed = float((out[p] - base[p]).abs().max())
        assert (changed > 1e-4) == moves, (back, changed)


def test_lse_merges_partial_results_exactly():
    """Attention over keys [lo, mid) and [mid, hi) merged by log-sum-exp is attention over [lo, hi)."""
    torch.manual_seed(4)
    T, H, G, D, mid = 48, 4, 2, 16, 20
    q, k, v = torch.randn(T, H, D), torch.randn(T, G, D), torch.randn(T, G, D)
    qs = q[mid:]  # queries that see keys on both sides of mid
    own = torch.arange(mid, T, dtype=torch.int32)
    full_lo, full_hi = torch.zeros_like(own), own + 1
    o, lse = A.attend(qs, k, v, full_lo, full_hi, 1.0, use_kernel=True)
    o1, l1 = A.attend(qs, k, v, full_lo, torch.full_like(own, mid), 1.0, use_kernel=True)
    o2, l2 = A.attend(qs, k, v, torch.full_like(own, mid), full_hi, 1.0, use_kernel=True)
    om, lm = A.merge_partials(o1, l1, o2, l2)
    assert rel(om, o) < 1e-5 and rel(lm, lse) < 1e-5


def _cp_index(total, cp, rank):
    chunk = total // (2 * cp)
    return torch.cat([torch.arange(rank * chunk, (rank + 1) * chunk),
                      torch.arange((2 * cp - 1 - rank) * chunk, (2 * cp - rank) * chunk)])


def _rank_layouts(lengths, cp, window, mode, padding=0):
    gathered = [A.build_layout(lengths, cp, r, window, "cpu", padding) for r in range(cp)]
    if mode == "gather":
        return gathered
    return [A.exchange_needed_rows(gathered, r) for r in range(cp)]


def _keys(lays, r, xs_all):
    """What keys_for gives rank r, with the collective written out rank by rank."""
    if lays[r].exchange is not None:
        recv = [xs_all[j].index_select(0, lays[j].exchange.send_index.split(lays[j].exchange.send_counts)[r])
                for j in range(len(lays))]
        assert [t.shape[0] for t in recv] == lays[r].exchange.recv_counts
        x = torch.cat([xs_all[r]] + recv)
    else:
        x = torch.cat([xs_all[r]] + [x.index_select(0, lays[j].tail_index) for j, x in enumerate(xs_all)])
    return x.index_select(0, lays[r].k_index)


@pytest.mark.parametrize("cp", [2, 4])
@pytest.mark.parametrize("window", [None, 5, 3, 40])
@pytest.mark.parametrize("mode,padding", [("gather", 0), ("needed", 0), ("gather", 3), ("needed", 3)])
def test_context_parallel_layouts_give_what_one_rank_gives(cp, window, mode, padding):
    """Every rank attends over [halo from the other ranks' rows, own chunk]; outputs and the
    gradients (summed over ranks, as the exchange's backward sums them) equal CP = 1.
    Windows shorter and longer than a chunk; sequences of different lengths; the tails
    all-gathered or only the rows each rank reads exchanged; trailing padding on every rank
    (each padding token sees only itself)."""
    lengths = [8 * cp, 4 * cp, 12 * cp]
    T, H, G, D = sum(lengths), 4, 2, 16
    torch.manual_seed(5)
    q, k, v, do = torch.randn(T, H, D), torch.randn(T, G, D), torch.randn(T, G, D), torch.randn(T, H, D)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    local = [torch.cat([s + _cp_index(n, cp, r) for s, n in zip(starts, lengths)]) for r in range(cp)]

    full = A.build_layout(lengths, 1, 0, window, "cpu")
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    ref, _ = A.attend(*xs, full.q_lo, full.q_hi, 1.0, use_kernel=False)
    ref.backward(do)

    pad = [tuple(torch.randn(padding, *t.shape[1:]) for t in (q, k, v)) for _ in range(cp)]
    gq, gk, gv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    lays = _rank_layouts(lengths, cp, window, mode, padding)
    ks = [torch.cat([k[idx], pad[r][1]]).requires_grad_() for r, idx in enumerate(local)]
    vs = [torch.cat([v[idx], pad[r][2]]).requires_grad_() for r, idx in enumerate(local)]
    for r, idx in enumerate(local):
        lay = lays[r]
        A.check_ranges(lay.q_lo, lay.q_hi, lay.num_keys)
        if mode == "gather":
            reach = (window - 1) if window else None
            chunk_tails = sum(2 * (n // (2 * cp) if reach is None else min(reach, n // (2 * cp))) for n in lengths)
            assert lay.tail_index.numel() == chunk_tails  # only the window's worth is exchanged
        qr = torch.cat([q[idx], pad[r][0]]).requires_grad_()
        n = idx.numel()
        for use_kernel in (False, True):
            out, _ = A.attend(qr, _keys(lays, r, ks), _keys(lays, r, vs), lay.q_lo, lay.q_hi, 1.0,
                              use_kernel=use_kernel)
            assert rel(out[:n], ref[idx]) < 1e-5, (r, use_kernel)
            if padding:  # a padding token sees only itself: its output is its value, per head
                own = pad[r][2].repeat_interleave(H // G, dim=1)
                assert rel(out[n:], own) < 1e-5, (r, use_kernel)
        out.backward(torch.cat([do[idx], torch.zeros(padding, H, D)]))
        gq[idx] += qr.grad[:n]
    for r, idx in enumerate(local):
        gk[idx] += ks[r].grad[:idx.numel()]
        gv[idx] += vs[r].grad[:idx.numel()]
    assert rel(gq, xs[0].grad) < 1e-5 and rel(gk, xs[1].grad) < 1e-5 and rel(gv, xs[2].grad) < 1e-5


@pytest.mark.parametrize("cp", [2, 4])
def test_sliding_layers_receive_only_the_window_from_their_neighbours(cp):
    """Chunks longer than the window: each rank receives window - 1 rows for each of its chunks
    that has an earlier chunk held elsewhere, from rank - 1 or rank + 1 only; under the all-gather
    it would receive every rank's tails."""
    window, chunk = 5, 16
    lengths = [2 * cp * chunk, 2 * cp * chunk]
    lays = _rank_layouts(lengths, cp, window, "needed")
    for r, lay in enumerate(lays):
        recv = lay.exchange.recv_counts
        assert all(n == 0 for j, n in enumerate(recv) if abs(j - r) != 1), (r, recv)
        # chunk r reads chunk r-1 (rank r-1); chunk 2cp-1-r reads chunk 2cp-2-r (rank r+1, or itself)
        want = (window - 1) * len(lengths) * ((r > 0) + (r < cp - 1))
        assert sum(recv) == want, (r, recv)
        assert sum(lay.exchange.send_counts) == want  # symmetric: what r sends, its neighbours read


def test_broken_layouts_are_refused_not_computed():
    ok = torch.tensor([0, 0, 1], dtype=torch.int32), torch.tensor([1, 2, 3], dtype=torch.int32)
    A.check_ranges(*ok, 3)
    with pytest.raises(ValueError, match="no key"):
        A.check_ranges(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([1, 1], dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="outside"):
        A.check_ranges(torch.tensor([0], dtype=torch.int32), torch.tensor([4], dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="non-decreasing"):
        A.check_ranges(torch.tensor([1, 0], dtype=torch.int32), torch.tensor([2, 2], dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="not divisible"):
        A.build_layout([10], 2, 0, None, "cpu")
    q = torch.randn(4, 3, 16)
    with pytest.raises(ValueError, match="not a multiple"):
        A.attend(q, torch.randn(4, 2, 16), torch.randn(4, 2, 16), *ok, 1.0, use_kernel=True)
    assert "head_dim 24" in A.kernel_refusal(torch.randn(4, 2, 24), torch.randn(4, 1, 24), torch.randn(4, 1, 24),
                                             interpreter=True)


def test_model_uses_the_chosen_attention_and_refuses_unknown_names(mpu):
    from slime_plugins.models.gemma4.modules import Gemma4CoreAttention, Gemma4FlashCoreAttention

    for impl, cls in (("flash", Gemma4FlashCoreAttention), ("reference", Gemma4CoreAttention)):
        model, _ = g4util.megatron_model(g4util.DENSE, gemma4_attention=impl)
        cores = [m for m in model.modules() if isinstance(m, (Gemma4CoreAttention, Gemma4FlashCoreAttention))]
        assert cores and all(type(m) is cls for m in cores)
    with pytest.raises(ValueError, match="unknown Gemma4 attention 'sdpa'"):
        g4util.megatron_model(g4util.DENSE, gemma4_attention="sdpa")


def assert_models_agree(packed):
    """The fast-path model's logits and every gradient equal the reference model's."""
    results = []
    for impl in ("reference", "flash"):
        torch.manual_seed(8)
        model, settings = g4util.megatron_model(g4util.DENSE, gemma4_attention=impl)
        ids = torch.randint(0, settings.vocab_size, (1 if packed else 2, 23), generator=torch.Generator().manual_seed(9))
        kwargs = dict(packed_seq_params=g4util.packed_params([9, 14])) if packed else {}
        logits = model(input_ids=ids, position_ids=None, attention_mask=None, **kwargs)
        logits.square().mean().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    assert rel(l1, l0) < 1e-5
    for name in g0:
        assert rel(g1[name], g0[name]) < 1e-4, name


@pytest.mark.parametrize("packed", [False, True])
def test_flash_and_reference_models_agree_on_logits_and_gradients(mpu, packed):
    """Whole model, both layer types: the fast path's ranges give what the mask gives."""
    assert_models_agree(packed)


# --------------------------------------------------------------------------- flash-attn for sliding layers
# flash-attn is not installed on any machine of this project: these tests hold our side of it (the
# segments, the call's arguments, the check that decides whether it runs) against a stand-in
# written from flash-attn's documented varlen contract (g4util.flash_attn_contract).


def test_flash_segments_describe_one_ranks_packed_sliding_layouts_exactly():
    lay = A.build_layout([37, 5, 60, 1], 1, 0, 4, "cpu")
    cu, longest = A.flash_segments(lay, 4)
    assert cu.tolist() == [0, 37, 42, 102, 103] and cu.dtype == torch.int32 and longest == 60
    cu, _ = A.flash_segments(A.build_layout([6, 4], 1, 0, 3, "cpu", padding=2), 3)
    assert cu.tolist() == [0, 6, 10, 11, 12]  # each padding token alone, as the layout has it
    assert A.flash_segments(A.build_layout([37, 5], 1, 0, None, "cpu"), None) is None  # global
    for mode in ("gather", "needed"):  # context parallel: keys are not the queries' own rows
        for lay in _rank_layouts([40, 24], 2, 5, mode):
            assert A.flash_segments(lay, 5) is None
    # ranges of another shape (one query seeing one key less) are not taken
    bad = A.build_layout([37, 5], 1, 0, 4, "cpu")
    bad.q_lo = bad.q_lo.clone()
    bad.q_lo[20] += 1
    assert A.flash_segments(bad, 4) is None
    # a window other than the layout's is not taken either, also after the layout's own was
    lay = A.build_layout([37, 5], 1, 0, 4, "cpu")
    assert A.flash_segments(lay, 4) is not None and A.flash_segments(lay, 5) is None


@pytest.mark.parametrize("lengths,window,padding", [([37, 5, 60, 1], 4, 0), ([50, 9], 7, 3), ([30], 64, 0)])
def test_flash_call_gives_the_masked_reference(lengths, window, padding):
    """Our arguments to flash-attn (segments, causal, window - 1 to the left) under its documented
    contract give the fp64 attention whose mask comes from positions and sequence ids."""
    torch.manual_seed(21)
    T, H, G, D = sum(lengths) + padding, 4, 2, 16
    q, k, v, do = torch.randn(T, H, D), torch.randn(T, G, D), torch.randn(T, G, D), torch.randn(T, H, D)
    lay = A.build_layout(lengths, 1, 0, window, "cpu", padding)
    xs = [t.double().requires_grad_() for t in (q, k, v)]
    out = A.flash_call(g4util.flash_attn_contract, *xs, *A.flash_segments(lay, window), window, 0.7)
    out.backward(do.double())
    rs = [t.double().requires_grad_() for t in (q, k, v)]
    ref, _ = masked_reference(*rs, lengths, window, 0.7, padding)
    ref.backward(do.double())
    assert rel(out, ref) < 1e-12
    for a, b in zip(xs, rs):
        assert rel(a.grad, b.grad) < 1e-12


def test_flash_check_refuses_a_wrong_window_or_a_failure():
    assert A.flash_check(g4util.flash_attn_contract, "cpu", 32, 16, dtype=torch.float64) is None
    for shift in (1, -1):
        why = A.flash_check(lambda *a, **kw: g4util.flash_attn_contract(*a, shift=shift, **kw), "cpu", 32, 16, dtype=torch.float64)
        assert why and "window 4" in why, why

    with torch.no_grad():  # the first sliding layer may run without gradients (log-probs)
        assert A.flash_check(g4util.flash_attn_contract, "cpu", 32, 16, dtype=torch.float64) is None
    with torch.inference_mode():
        assert A.flash_check(g4util.flash_attn_contract, "cpu", 32, 16) is None  # bf16, as on a GPU

    def broken(*a, **kw):
        raise RuntimeError("no kernel for this head dim")
    assert "RuntimeError: no kernel" in A.flash_check(broken, "cpu", 32, 16, dtype=torch.float64)


def test_flash_backend_is_chosen_once_from_what_passes_and_says_why(monkeypatch, caplog):
    import sys
    import types

    def wrong(*a, **kw):
        return g4util.flash_attn_contract(*a, shift=1, **kw)
    calls = []

    def right(*a, **kw):
        calls.append(1)
        return g4util.flash_attn_contract(*a, **kw)
    monkeypatch.setitem(sys.modules, "flash_attn_interface", types.SimpleNamespace(flash_attn_varlen_func=wrong))
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=right))
    monkeypatch.setattr(A, "_FLASH_CHOICE", {})
    with caplog.at_level("INFO", logger=A.logger.name):
        name, fn = A.flash_backend("cpu", 32, 16)
    assert name == "flash-attn 2" and fn is right
    assert "flash-attn 3 refused: output differs" in caplog.text and "window 4" in caplog.text
    n = len(calls)
    assert A.flash_backend("cpu", 32, 16) == (name, fn) and len(calls) == n  # once per process
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=wrong))
    monkeypatch.setattr(A, "_FLASH_CHOICE", {})
    name, why = A.flash_backend("cpu", 32, 16)
    assert name is None and "flash-attn 2 refused" in why and "flash-attn 3 refused" in why
    monkeypatch.setattr(A, "_FLASH_CHOICE", {})
    monkeypatch.setenv("GEMMA4_FLASH_ATTN", "0")
    assert A.flash_backend("cpu", 32, 16) == (None, "GEMMA4_FLASH_ATTN=0")
    monkeypatch.setattr(A, "_FLASH_CHOICE", {})
    monkeypatch.setenv("GEMMA4_FLASH_ATTN", "false")  # not a value it knows: refused, not guessed
    with pytest.raises(ValueError, match="GEMMA4_FLASH_ATTN='false'"):
        A.flash_backend("cpu", 32, 16)
    monkeypatch.delenv("GEMMA4_FLASH_ATTN")
    monkeypatch.setattr(A, "_FLASH_CHOICE", {})
    assert "at most 256" in A.flash_backend("cpu", 512, 16)[1]
    # on a CPU tensor the model never asks for it
    assert A.flash_plan(A.build_layout([8], 1, 0, 4, "cpu"), 4, torch.randn(8, 2, 16))[0] is None


@pytest.mark.parametrize("packed", [False, True])
def test_model_with_sliding_layers_on_flash_attn_agrees_with_the_reference(mpu, monkeypatch, packed):
    """The model's sliding layers through flash_plan (here with the documented stand-in, on the
    CPU): logits and every gradient equal the reference model's."""
    used = []

    def cpu_plan(layout, window, q):
        segments = A.flash_segments(layout, window) if window is not None else None
        if segments is None:
            return None, "not expressible"
        used.append(segments[0].tolist())
        return "stand-in", lambda q, k, v, scale: A.flash_call(g4util.flash_attn_contract, q, k, v, *segments, window, scale)

    monkeypatch.setattr(A, "flash_plan", cpu_plan)
    assert_models_agree(packed)
    assert used and used[0] == ([0, 9, 23] if packed else [0, 23, 46])
