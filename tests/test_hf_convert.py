"""Hugging Face Llama and GGUF models in and out (tools/convert_checkpoint.py import-hf / import-gguf /
export-hf), on tiny models the tests write themselves."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from megacompress.methods.gist.data import InstructionFormat
from megacompress.data.tokenizers import build_tokenizer, model_tokenizer
from megacompress.models import gather_logits, load_pretrained
from megacompress.models.gguf_import import import_gguf
from megacompress.methods.gist.init import init_gist_model
from megacompress.models.hf_llama import ConversionError, export_hf, import_hf
from workers.gist_common import TEXT, TINY, write_tiny_gguf, write_tiny_hf_llama

pytest.importorskip("transformers")


def our_logits(model_dir, ids):
    model = load_pretrained(model_dir).eval()
    with torch.no_grad():
        return gather_logits(model(ids).logits, model.config.vocab_size)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf")
    return directory, write_tiny_hf_llama(directory)


@pytest.fixture(scope="module")
def spm_model():
    """A tiny SentencePiece BPE model set up like Llama-2's (byte fallback, dummy prefix, digits split)."""
    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT[:4] + ["Café au lait, naïve résumé."]), model_writer=proto,
        model_type="bpe", vocab_size=320, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=1.0, num_threads=1, minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=proto.getvalue())


def write_spm_gguf(path, sp, tokenizer_model="llama", **flags):
    """A random 1-layer llama GGUF with ``sp``'s vocabulary as llama.cpp's converter writes it
    (pieces, scores, token types 1 normal / 2 unknown / 3 control / 5 unused / 6 byte);
    ``flags``: ``add_bos_token`` / ``add_space_prefix`` metadata."""
    import gguf

    n, hidden, ffn = sp.get_piece_size(), TINY["hidden_size"], TINY["intermediate_size"]
    kv = hidden // TINY["num_attention_heads"] * TINY["num_key_value_heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(TINY["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(TINY["num_attention_heads"])
    w.add_head_count_kv(TINY["num_key_value_heads"])
    w.add_layer_norm_rms_eps(TINY["rms_norm_eps"])
    w.add_tokenizer_model(tokenizer_model)
    w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types([2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i)
                       else 6 if sp.is_byte(i) else 1 for i in range(n)])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    for key, value in flags.items():
        getattr(w, f"add_{key}")(value)
    shapes = {"token_embd": (n, hidden), "output_norm": (hidden,), "output": (n, hidden),
              "blk.0.attn_norm": (hidden,), "blk.0.attn_q": (hidden, hidden), "blk.0.attn_k": (kv, hidden),
              "blk.0.attn_v": (kv, hidden), "blk.0.attn_output": (hidden, hidden), "blk.0.ffn_norm": (hidden,),
              "blk.0.ffn_gate": (ffn, hidden), "blk.0.ffn_up": (ffn, hidden), "blk.0.ffn_down": (hidden, ffn)}
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        w.add_tensor(f"{name}.weight", rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_import_hf_matches_transformers_and_round_trips(hf_model, tmp_path):
    from transformers import LlamaForCausalLM

    hf_dir, hf = hf_model
    tok = build_tokenizer("hf", str(hf_dir))
    ids = torch.tensor([tok.encode(TEXT[0]), tok.encode(TEXT[2])[:len(tok.encode(TEXT[0]))]])
    ours = import_hf(hf_dir, tmp_path / "ours")
    with torch.no_grad():
        reference = hf(ids).logits
    assert (our_logits(ours, ids) - reference).abs().max() < 1e-4
    assert model_tokenizer(str(ours)).encode(TEXT[1]) == tok.encode(TEXT[1])  # carries its tokenizer

    exported = export_hf(ours, tmp_path / "exported")
    reloaded = LlamaForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (reloaded(ids).logits - our_logits(ours, ids)).abs().max() < 1e-4
    again = import_hf(exported, tmp_path / "again")
    first, second = load_file(ours / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[n], second[n]) for n in first)
    assert json.loads((ours / "config.json").read_text()) == json.loads((again / "config.json").read_text())


def test_import_gguf_unpermutes_dequantizes_and_rebuilds_the_tokenizer(hf_model, tmp_path):
    hf_dir, hf = hf_model
    reference = write_tiny_gguf(tmp_path / "tiny.gguf", hf_dir, hf)
    with torch.no_grad():  # the HF model with the file's (Q8_0-rounded) FFN weights
        hf.load_state_dict({n: torch.from_numpy(a) for n, a in reference.items()})
    ours = import_gguf(tmp_path / "tiny.gguf", tmp_path / "ours")
    hf_tok, gguf_tok = build_tokenizer("hf", str(hf_dir)), build_tokenizer("hf", str(ours))
    for text in TEXT[:4] + ["<|im_end|> is text here", "  spaces\tand\nnewlines 0042"]:
        assert gguf_tok.encode(text) == hf_tok.encode(text)
        assert gguf_tok.decode(gguf_tok.encode(text)) == text
    assert gguf_tok.eod == hf_tok.eod and gguf_tok.bos == hf_tok.bos
    assert gguf_tok.eod not in gguf_tok.encode("<|im_end|>")  # special tokens in text stay text
    ids = torch.tensor([hf_tok.encode(TEXT[0])])
    with torch.no_grad():
        assert (our_logits(ours, ids) - hf(ids).logits).abs().max() < 1e-4
    again = import_hf(export_hf(ours, tmp_path / "exported"), tmp_path / "again")
    first, second = load_file(ours / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(first[n], second[n]) for n in first)


SPM_TEXTS = TEXT[:4] + ["  spaces\tand\nnewlines 0042", "café ☃ naïve", " leading space", "trailing  \n",
                        "Input: 12 × 3", "x"]


def test_import_gguf_rebuilds_a_sentencepiece_tokenizer(spm_model, tmp_path):
    from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    sp = spm_model
    write_spm_gguf(tmp_path / "spm.gguf", sp)
    ours = import_gguf(tmp_path / "spm.gguf", tmp_path / "ours")
    tok, hf = build_tokenizer("hf", str(ours)), AutoTokenizer.from_pretrained(tmp_path, gguf_file="spm.gguf")
    assert tok.bos == sp.bos_id() and tok.add_bos and tok.eod == sp.eos_id()  # add_bos_token: llama.cpp's default
    for text in SPM_TEXTS:
        ids = tok.encode(text)
        assert ids == sp.encode(text)  # "▁" before the text; byte fallback for "☃", "\t", "×"
        assert any(sp.is_byte(i) for i in ids) == any(c in text for c in "☃\t×")
        assert tok.decode(ids) == text
        if not text[0].isspace():  # transformers 5 (Metaspace) drops a leading space; SentencePiece keeps it
            assert ids == hf.encode(text, add_special_tokens=False) and tok.decode(ids) == hf.decode(ids)
    exported = PreTrainedTokenizerFast.from_pretrained(ours)  # our files, read by transformers
    assert exported.encode(TEXT[0]) == [sp.bos_id()] + sp.encode(TEXT[0])

    proto = sentencepiece_model_pb2.ModelProto.FromString(sp.serialized_model_proto())
    proto.normalizer_spec.add_dummy_prefix = False
    no_prefix = SentencePieceProcessor(model_proto=proto.SerializeToString())
    write_spm_gguf(tmp_path / "plain.gguf", sp, add_space_prefix=False, add_bos_token=False)
    plain = build_tokenizer("hf", str(import_gguf(tmp_path / "plain.gguf", tmp_path / "plain")))
    assert not plain.add_bos
    for text in SPM_TEXTS:
        assert plain.encode(text) == no_prefix.encode(text) and plain.decode(plain.encode(text)) == text

    # Later pieces of a prompt get no "▁" of their own: the gist format spells exactly its text.
    for text in SPM_TEXTS:
        assert tok.encode_continuation(text) == no_prefix.encode(text)
    gist_tok = build_tokenizer("hf", str(init_gist_model(ours, 2, tmp_path / "gist")))
    rec = InstructionFormat(gist_tok, 2).format("Say hi", "to me", "Hello there")
    gist = gist_tok.special_id("gist")
    assert rec.tokens == ([sp.bos_id()] + sp.encode("Instruction: Say hi\n") + [gist, gist] + no_prefix.encode("\nInput:")
                          + no_prefix.encode(" to me") + no_prefix.encode("\nOutput:")
                          + no_prefix.encode(" Hello there") + [sp.eos_id()])
    assert gist_tok.decode(rec.tokens[rec.gist_end:rec.output_start]) == "\nInput: to me\nOutput:"


def test_cli_and_errors(hf_model, spm_model, tmp_path, repo_root):
    hf_dir, _ = hf_model
    cmd = [sys.executable, str(repo_root / "tools" / "convert_checkpoint.py")]
    done = subprocess.run(cmd + ["import-hf", str(hf_dir), str(tmp_path / "m"), "--max-seq-len", "64"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["max_seq_len"] == 64
    with pytest.raises(ConversionError, match="not a readable GGUF file"):
        import_gguf(hf_dir / "config.json", tmp_path / "x")
    write_spm_gguf(tmp_path / "bert.gguf", spm_model, tokenizer_model="bert")
    with pytest.raises(ConversionError, match=r"bert\.gguf: tokenizer.ggml.model 'bert' is not supported "
                                              r"\(supported: 'gpt2', .*'llama'"):
        import_gguf(tmp_path / "bert.gguf", tmp_path / "b")
    (tmp_path / "m" / "tokenizer.json").unlink()
    with pytest.raises(ConversionError, match="tokenizer.json: not found"):
        export_hf(tmp_path / "m", tmp_path / "z")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_act": "gelu"}))
    with pytest.raises(ConversionError, match="hidden_act 'gelu'"):
        import_hf(tmp_path / "odd", tmp_path / "y")
