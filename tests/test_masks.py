"""Every mask function against hand-written matrices (rows = queries, columns = keys)."""

import pytest
import torch

from megacompress.attention import masks
from megacompress.methods.gist import masks as gist_masks
from megacompress.methods.gpthf import masks as gpthf_masks


def matrix(*rows: str) -> torch.Tensor:
    """'1' = may attend; one string per query row."""
    return torch.tensor([[c == "1" for c in row] for row in rows])


def dense2d(fn, B=1, S=8, q_offset=0, Q=None):
    return masks.dense(fn, B, S - q_offset if Q is None else Q, S, q_offset)[:, 0]


# Gist paper-style example: 2 instruction tokens, 2 gists (positions 2, 3), 4 tokens after.
GIST_DOC = torch.zeros(1, 8, dtype=torch.long)
GIST_START, GIST_END = torch.tensor([2]), torch.tensor([4])

GIST_EXPECTED = matrix(
    "10000000",
    "11000000",
    "11100000",
    "11110000",
    "00111000",  # after the gists: instruction hidden, gists visible
    "00111100",
    "00111110",
    "00111111",
)
GIST_NEG_EXPECTED = matrix(
    "10000000",
    "11000000",
    "11100000",
    "11110000",
    "00001000",  # neither instruction nor gists
    "00001100",
    "00001110",
    "00001111",
)
CAUSAL8 = torch.ones(8, 8, dtype=torch.bool).tril()


def test_causal():
    assert torch.equal(dense2d(masks.causal())[0], CAUSAL8)


def test_gist_example():
    assert torch.equal(dense2d(gist_masks.gist(GIST_DOC, GIST_START, GIST_END))[0], GIST_EXPECTED)


def test_gist_neg_control_example():
    assert torch.equal(dense2d(gist_masks.gist_neg_control(GIST_DOC, GIST_START, GIST_END))[0], GIST_NEG_EXPECTED)


def test_gist_pos_control_is_causal():
    assert torch.equal(dense2d(gist_masks.gist_pos_control(GIST_DOC, GIST_START, GIST_END))[0], CAUSAL8)


def test_gist_with_padding_and_per_row_spans():
    doc = torch.tensor([[0] * 8, [0] * 6 + [-1] * 2])
    fn = gist_masks.gist(doc, torch.tensor([2, 1]), torch.tensor([4, 2]))
    got = dense2d(fn, B=2)
    assert torch.equal(got[0], GIST_EXPECTED)
    expected_row1 = matrix(
        "10000000",
        "11000000",  # the gist (position 1)
        "01100000",  # after it: instruction (position 0) hidden
        "01110000",
        "01111000",
        "01111100",
        "00000010",  # padding queries see only themselves
        "00000001",
    )
    assert torch.equal(got[1], expected_row1)


def test_per_slot_spans_pack_gist_prompts_in_one_row():
    """Two gist prompts packed in one row (documents 0 and 1), each slot carrying its own
    prompt's span: the mask is the two prompts' own gist masks on the diagonal, nothing across."""
    doc = torch.tensor([[0] * 8 + [1] * 6 + [-1] * 2])
    first, second = (2, 4), (8 + 1, 8 + 2)  # slot coordinates of the packed row
    start = torch.tensor([[first[0]] * 8 + [second[0]] * 8])
    end = torch.tensor([[first[1]] * 8 + [second[1]] * 8])
    alone = gist_masks.gist(torch.tensor([[0] * 6]), torch.tensor([1]), torch.tensor([2]))
    neg_alone = gist_masks.gist_neg_control(torch.tensor([[0] * 6]), torch.tensor([1]), torch.tensor([2]))
    cases = ((gist_masks.gist, alone, GIST_EXPECTED), (gist_masks.gist_neg_control, neg_alone, GIST_NEG_EXPECTED))
    for packed, one, expected in cases:
        got = dense2d(packed(doc, start, end), S=16)[0]
        assert torch.equal(got[:8, :8], expected)
        assert torch.equal(got[8:14, 8:14], dense2d(one, S=6)[0])
        assert not got[8:14, :8].any() and not got[:8, 8:].any()
        assert torch.equal(got[14:, 14:], torch.eye(2, dtype=torch.bool))  # padding sees itself
    with pytest.raises(ValueError, match="per slot"):
        gist_masks.gist(doc, start[:, :8], end[:, :8])


def test_row_without_gists_is_causal():
    fn = gist_masks.gist(GIST_DOC, torch.tensor([8]), torch.tensor([8]))
    assert torch.equal(dense2d(fn)[0], CAUSAL8)


# GPTHF: row 0 = one document, two sentences (EOS at 3 and 7);
# row 1 = documents [0,0,0] and [1,1,1] then 2 padding tokens, EOS at 1 (doc 0) and 4 (doc 1).
GPTHF_DOC = torch.tensor([[0] * 8, [0, 0, 0, 1, 1, 1, -1, -1]])
GPTHF_EOS = torch.zeros(2, 8, dtype=torch.bool)
GPTHF_EOS[0, [3, 7]] = True
GPTHF_EOS[1, [1, 4]] = True


def test_gpthf_encoder():
    got = dense2d(gpthf_masks.gpthf_encoder(GPTHF_DOC, GPTHF_EOS), B=2)
    row0 = matrix(
        "10000000",
        "11000000",
        "11100000",
        "11110000",  # EOS belongs to the sentence it ends
        "00001000",
        "00001100",
        "00001110",
        "00001111",
    )
    row1 = matrix(
        "10000000",
        "11000000",
        "00100000",  # second sentence of doc 0
        "00010000",  # doc 1
        "00011000",
        "00000100",  # doc 1, after its EOS
        "00000010",
        "00000001",
    )
    assert torch.equal(got[0], row0)
    assert torch.equal(got[1], row1)


def test_gpthf_body():
    got = dense2d(gpthf_masks.gpthf_body(GPTHF_DOC, GPTHF_EOS), B=2)
    row0 = matrix(
        "10000000",
        "01000000",
        "00100000",
        "00010000",
        "00011000",  # itself + EOS at 3
        "00010100",
        "00010010",
        "00010001",
    )
    row1 = matrix(
        "10000000",
        "01000000",
        "01100000",  # EOS at 1 of its own document
        "00010000",  # doc 1 does not see doc 0's EOS
        "00001000",
        "00001100",
        "00000010",
        "00000001",
    )
    assert torch.equal(got[0], row0)
    assert torch.equal(got[1], row1)


def test_document_causal():
    got = dense2d(masks.document_causal(GPTHF_DOC), B=2)
    row1 = matrix(
        "10000000",
        "11000000",
        "11100000",
        "00010000",
        "00011000",
        "00011100",
        "00000010",
        "00000001",
    )
    assert torch.equal(got[0], CAUSAL8)
    assert torch.equal(got[1], row1)


@pytest.mark.parametrize(
    "fn",
    [
        masks.causal(),
        masks.document_causal(GPTHF_DOC),
        gpthf_masks.gpthf_encoder(GPTHF_DOC, GPTHF_EOS),
        gpthf_masks.gpthf_body(GPTHF_DOC, GPTHF_EOS),
        gist_masks.gist(GPTHF_DOC, torch.tensor([2, 1]), torch.tensor([4, 2])),
        gist_masks.gist_neg_control(GPTHF_DOC, torch.tensor([2, 1]), torch.tensor([4, 2])),
    ],
)
@pytest.mark.parametrize("q_offset,Q", [(7, 1), (5, 3), (3, 2)])
def test_q_offset_rows_equal_full_mask(fn, q_offset, Q):
    full = masks.dense(fn, 2, 8, 8)
    kv = q_offset + Q
    step = masks.dense(fn, 2, Q, kv, q_offset)
    assert torch.equal(step, full[:, :, q_offset : q_offset + Q, :kv])


def test_every_row_has_a_visible_key():
    doc = torch.tensor([[-1] * 8])
    for fn in (masks.document_causal(doc), gpthf_masks.gpthf_body(doc, torch.zeros(1, 8, dtype=torch.bool))):
        assert torch.equal(dense2d(fn)[0], torch.eye(8, dtype=torch.bool))


def test_bad_metadata_is_a_clear_error():
    with pytest.raises(ValueError, match="eos_mask must be bool"):
        gpthf_masks.gpthf_body(GPTHF_DOC, GPTHF_EOS.long())
    with pytest.raises(ValueError, match="eos_mask shape"):
        gpthf_masks.gpthf_encoder(GPTHF_DOC, GPTHF_EOS[:, :4])
    with pytest.raises(ValueError, match="gist_start <= gist_end"):
        gist_masks.gist(GIST_DOC, torch.tensor([4]), torch.tensor([2]))
    with pytest.raises(ValueError, match="document_ids must be an integer"):
        masks.document_causal(GIST_DOC.float())


def test_empty_gist_span_inside_the_sequence_is_refused():
    docs = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="without gists"):
        gist_masks.gist(docs, torch.tensor([3]), torch.tensor([3]))
    gist_masks.gist(docs, torch.tensor([8]), torch.tensor([8]))  # no gists: plain causal, allowed
