"""Hugging Face Llama and GGUF models in and out (tools/convert_checkpoint.py import-hf / import-gguf /
export-hf), on tiny models the tests write themselves."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from megacompress.data.tokenizers import build_tokenizer, model_tokenizer
from megacompress.models import gather_logits, load_pretrained
from megacompress.models.gguf_import import import_gguf
from megacompress.models.hf_llama import ConversionError, export_hf, import_hf
from workers.gist_common import TEXT, write_tiny_gguf, write_tiny_hf_llama

pytest.importorskip("transformers")


def our_logits(model_dir, ids):
    model = load_pretrained(model_dir).eval()
    with torch.no_grad():
        return gather_logits(model(ids).logits, model.config.vocab_size)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf")
    return directory, write_tiny_hf_llama(directory)


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


def test_cli_and_errors(hf_model, tmp_path, repo_root):
    hf_dir, _ = hf_model
    cmd = [sys.executable, str(repo_root / "tools" / "convert_checkpoint.py")]
    done = subprocess.run(cmd + ["import-hf", str(hf_dir), str(tmp_path / "m"), "--max-seq-len", "64"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["max_seq_len"] == 64
    with pytest.raises(ConversionError, match="not a readable GGUF file"):
        import_gguf(hf_dir / "config.json", tmp_path / "x")
    (tmp_path / "m" / "tokenizer.json").unlink()
    with pytest.raises(ConversionError, match="tokenizer.json: not found"):
        export_hf(tmp_path / "m", tmp_path / "z")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_act": "gelu"}))
    with pytest.raises(ConversionError, match="hidden_act 'gelu'"):
        import_hf(tmp_path / "odd", tmp_path / "y")
