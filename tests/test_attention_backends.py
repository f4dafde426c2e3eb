"""Backends against the SDPA reference on random metadata; flash cu_seqlens; errors; decode; backward."""

import logging

import pytest
import torch

from megacompress.attention import dispatch, flash, masks
from megacompress.attention.dispatch import AttentionMask, attend, prepare

KINDS = masks.mask_kinds()


def random_metadata(B: int, S: int, seed: int) -> dict:
    """Several documents per row, random sentence ends, trailing padding, one gist span per row."""
    g = torch.Generator().manual_seed(seed)
    doc = torch.full((B, S), -1, dtype=torch.long)
    gist_start, gist_end = torch.empty(B, dtype=torch.long), torch.empty(B, dtype=torch.long)
    for b in range(B):
        real = S - int(torch.randint(0, S // 4, (1,), generator=g))
        cuts = sorted(torch.randint(1, real, (2,), generator=g).tolist())
        doc[b, :real] = 0
        doc[b, cuts[0] : real] = 1
        doc[b, cuts[1] : real] = 2
        gist_start[b] = int(torch.randint(1, S // 3, (1,), generator=g))
        gist_end[b] = gist_start[b] + int(torch.randint(1, 6, (1,), generator=g))
    eos = (torch.rand(B, S, generator=g) < 0.15) & (doc >= 0)
    return dict(document_ids=doc, eos_mask=eos, gist_start=gist_start, gist_end=gist_end)


def build(kind: str, meta: dict, **kw) -> AttentionMask:
    if kind == "causal":
        B, S = meta["document_ids"].shape
        return AttentionMask.build("causal", **{"batch": B, "kv_len": S, **kw})
    return AttentionMask.build(kind, **meta, **kw)


def qkv(B, S, Hq=4, Hkv=2, D=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, S, D, generator=g, dtype=dtype) for h in (Hq, Hkv, Hkv)]


def reference(q, k, v, dense_mask):
    """Masked softmax attention in float64, written out (GQA by repeating heads)."""
    rep = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(rep, dim=1) for t in (k, v))
    scores = q.double() @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~dense_mask, float("-inf"))
    return (scores.softmax(-1) @ v).to(q.dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_sdpa_matches_written_out_reference(kind):
    meta = random_metadata(2, 96, seed=1)
    mask = build(kind, meta)
    q, k, v = qkv(2, 96)
    dense_mask = masks.dense(mask.mask_fn, 2, 96, 96)
    out = attend(q, k, v, prepare(mask, "sdpa"))
    torch.testing.assert_close(out, reference(q, k, v, dense_mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("S", [64, 100, 128])
@pytest.mark.parametrize("kind", KINDS)
def test_flex_forward_matches_sdpa(kind, S):
    meta = random_metadata(2, S, seed=S)
    mask = build(kind, meta)
    q, k, v = qkv(2, S, seed=S)
    ref = attend(q, k, v, prepare(mask, "sdpa"))
    with torch.no_grad():
        out = attend(q, k, v, prepare(mask, "flex"))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def per_slot_gist_spans(document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each document of each row its own gist span (its second slot, or its first if it has one);
    padding slots none (start = end = S)."""
    B, S = document_ids.shape
    start, end = torch.full((B, S), S), torch.full((B, S), S)
    for b in range(B):
        for d in document_ids[b].unique().tolist():
            if d < 0:
                continue
            slots = (document_ids[b] == d).nonzero().flatten()
            first = int(slots[0]) + min(1, len(slots) - 1)
            start[b, slots], end[b, slots] = first, first + 1
    return start, end


def test_per_slot_gist_spans_sdpa_and_flex():
    """Several gist prompts packed per row (spans per slot): SDPA equals the reference for every
    gist kind, flex equals SDPA (the gist kind; flex compiles per mask, which is slow on CPU)."""
    meta = random_metadata(2, 100, seed=7)
    meta["gist_start"], meta["gist_end"] = per_slot_gist_spans(meta["document_ids"])
    q, k, v = qkv(2, 100, seed=7)
    for kind in ("gist", "gist_neg_control", "gist_pos_control"):
        mask = build(kind, meta)
        ref = attend(q, k, v, prepare(mask, "sdpa"))
        dense_mask = masks.dense(mask.mask_fn, 2, 100, 100)
        torch.testing.assert_close(ref, reference(q, k, v, dense_mask), atol=1e-5, rtol=1e-5)
        if kind == "gist":
            with torch.no_grad():
                torch.testing.assert_close(attend(q, k, v, prepare(mask, "flex")), ref, atol=1e-5, rtol=1e-5)


def blocks_from_cu_seqlens(cu_seqlens: torch.Tensor, B: int, S: int) -> torch.Tensor:
    """The block-diagonal causal mask [B, 1, S, S] that flash-attn varlen computes for these segments."""
    seg = torch.zeros(B * S, dtype=torch.long)
    seg[cu_seqlens[1:-1].long()] = 1
    seg = seg.cumsum(0).view(B, S)
    same = seg[:, :, None] == seg[:, None, :]
    return (same & torch.ones(S, S, dtype=torch.bool).tril())[:, None]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", sorted(k for k in masks.mask_kinds() if masks.get_mask_kind(k).block_diagonal))
def test_flash_cu_seqlens_reproduce_dense_mask(kind, seed):
    B, S = 3, 80
    mask = build(kind, random_metadata(B, S, seed))
    cu_seqlens, max_seqlen = flash.varlen_metadata(mask)
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens[0] == 0 and cu_seqlens[-1] == B * S
    assert max_seqlen == int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    assert torch.equal(blocks_from_cu_seqlens(cu_seqlens, B, S), masks.dense(mask.mask_fn, B, S, S))


@pytest.mark.parametrize("kind", ["gpthf_body", "gist", "gist_pos_control", "gist_neg_control"])
def test_flash_rejects_unsupported_masks(kind):
    mask = build(kind, random_metadata(2, 32, 0))
    with pytest.raises(ValueError, match=f"'flash' cannot express mask '{kind}'"):
        prepare(mask, "flash", device="cuda")


def test_flash_rejects_decode_and_cpu():
    meta = random_metadata(2, 32, 0)
    with pytest.raises(ValueError, match="full-sequence"):
        prepare(build("document_causal", meta, q_offset=31), "flash", device="cuda")
    with pytest.raises(ValueError, match="only on CUDA"):
        prepare(build("document_causal", meta), "flash", device="cpu")
    with pytest.raises(ValueError, match="not one of"):
        prepare(build("document_causal", meta), "flashy")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_decode_rows_equal_full_sequence(kind, backend):
    B, S, off, Q = 2, 64, 50, 3
    meta = random_metadata(B, S, seed=3)
    q, k, v = qkv(B, S, seed=3)
    full = attend(q, k, v, prepare(build(kind, meta), "sdpa"))
    step_mask = build(kind, meta, q_offset=off, q_len=Q, kv_len=off + Q)
    with torch.no_grad():
        step = attend(q[:, :, off : off + Q], k[:, :, : off + Q], v[:, :, : off + Q], prepare(step_mask, backend))
    torch.testing.assert_close(step, full[:, :, off : off + Q], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_per_row_offsets_equal_full_sequence(kind, backend):
    """Rows of a KV cache with different lengths: row b's queries at q_offset[b] .. q_offset[b]+Q-1."""
    B, S, Q = 2, 64, 3
    offsets = torch.tensor([50, 41])
    meta = random_metadata(B, S, seed=5)
    q, k, v = qkv(B, S, seed=5)
    full = attend(q, k, v, prepare(build(kind, meta), "sdpa"))
    kv_len = int(offsets.max()) + Q
    rows_q = torch.stack([q[b, :, int(o):int(o) + Q] for b, o in enumerate(offsets)])
    step_mask = build(kind, meta, q_offset=offsets, q_len=Q, kv_len=kv_len)
    with torch.no_grad():
        step = attend(rows_q, k[:, :, :kv_len], v[:, :, :kv_len], prepare(step_mask, backend))
    for b, o in enumerate(offsets.tolist()):
        torch.testing.assert_close(step[b], full[b, :, o:o + Q], atol=1e-5, rtol=1e-5)


def test_decode_steps_use_dense_sdpa_on_cuda():
    """Part of issue 9: a growing key length must not reach Flex compiled with static shapes."""
    meta = random_metadata(2, 64, 0)
    cuda = torch.device("cuda")
    for kind in KINDS:
        for q_len in (1, dispatch.DECODE_SDPA_MAX_Q):
            assert dispatch.choose_backend(build(kind, meta, q_offset=40, q_len=q_len), cuda) == "sdpa", kind
        per_row = build(kind, meta, q_offset=torch.tensor([40, 33]), q_len=1, kv_len=41)
        assert dispatch.choose_backend(per_row, cuda) == "sdpa", kind
        long_block = build(kind, meta, q_offset=40, q_len=dispatch.DECODE_SDPA_MAX_Q + 1)
        assert dispatch.choose_backend(long_block, cuda) == "flex", kind
    with pytest.raises(ValueError, match="per-row q_offset needs q_len"):
        build("document_causal", meta, q_offset=torch.tensor([1, 2]))


@pytest.mark.parametrize("kind", KINDS)
def test_sdpa_backward_is_finite_with_padding(kind):
    meta = random_metadata(2, 64, seed=4)
    assert (meta["document_ids"] < 0).any()
    q, k, v = (t.requires_grad_() for t in qkv(2, 64, seed=4))
    out = attend(q, k, v, prepare(build(kind, meta), "auto"))
    out.square().sum().backward()
    assert torch.isfinite(out).all()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    if kind == "causal":
        return  # plain causal has no notion of padding
    pad = meta["document_ids"] < 0
    # A padding query sees only itself: its output is its own value vector.
    v_rep = v.detach().repeat_interleave(2, dim=1)
    torch.testing.assert_close(out.detach().transpose(1, 2)[pad], v_rep.transpose(1, 2)[pad])


def test_flex_backward_on_cpu_is_a_clear_error():
    mask = build("gist", random_metadata(2, 64, 0))
    q, k, v = (t.requires_grad_() for t in qkv(2, 64))
    out = attend(q, k, v, prepare(mask, "flex"))
    with pytest.raises(NotImplementedError, match="backend='sdpa'"):
        out.sum().backward()


def test_auto_choice(monkeypatch, caplog):
    meta = random_metadata(2, 32, 0)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    plain = prepare(build("causal", meta))
    assert plain.backend == "sdpa" and plain.dense_mask is None  # is_causal fast path
    for kind in KINDS:
        assert dispatch.choose_backend(build(kind, meta), cpu) == "sdpa"
    monkeypatch.setattr(dispatch, "flash_available", lambda: True)
    assert dispatch.choose_backend(build("causal", meta), cuda) == "sdpa"
    assert dispatch.choose_backend(build("document_causal", meta), cuda) == "flash"
    assert dispatch.choose_backend(build("gpthf_encoder", meta), cuda, torch.float32) == "flex"
    assert dispatch.choose_backend(build("gpthf_encoder", meta, q_offset=5), cuda) == "flex"
    assert dispatch.choose_backend(build("gpthf_body", meta), cuda) == "flex"
    monkeypatch.setattr(dispatch, "flash_available", lambda: False)
    assert dispatch.choose_backend(build("document_causal", meta), cuda) == "flex"
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="megacompress.attention.dispatch"):
        for _ in range(3):
            prepare(build("gist", meta))
    assert sum("mask gist -> backend sdpa" in r.getMessage() for r in caplog.records) == 1


def test_attend_checks_shapes():
    mask = build("document_causal", random_metadata(2, 32, 0))
    q, k, v = qkv(2, 16)
    with pytest.raises(ValueError, match="do not match the document_causal mask"):
        attend(q, k, v, prepare(mask))
    with pytest.raises(ValueError, match="does not cover"):
        build("document_causal", random_metadata(2, 32, 0), q_offset=30, q_len=4, kv_len=34)
