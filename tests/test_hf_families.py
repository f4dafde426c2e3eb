"""import-hf / export-hf of the Llama family (Llama with and without Llama-3.1 RoPE scaling, Mistral,
Qwen2 tied and untied) against `transformers` on tiny random fp32 models; refusals by name."""

import json
import subprocess
import sys

import pytest
import torch

from megacompress.models import gather_logits, load_pretrained
from megacompress.models import hf_llama
from megacompress.models.config import ConfigError, ModelConfig
from megacompress.models.hf_llama import ConversionError, export_hf, import_hf
from megacompress.models.rotary import rope_inv_freq
from workers.gist_common import TEXT, TINY, write_tokenizer

transformers = pytest.importorskip("transformers")

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
FAMILIES = {  # name -> (config class, extra config fields)
    "llama": ("LlamaConfig", {}),
    "llama3": ("LlamaConfig", {"rope_parameters": {**LLAMA3, "rope_theta": 10000.0}}),
    "mistral": ("MistralConfig", {"sliding_window": 64}),
    "qwen2": ("Qwen2Config", {"rope_theta": 1e6}),
    "qwen2-tied": ("Qwen2Config", {"tie_word_embeddings": True}),
}


def write_family(directory, family, seed=0):
    cls_name, extra = FAMILIES[family]
    vocab = write_tokenizer(directory)
    config = getattr(transformers, cls_name)(vocab_size=vocab, bos_token_id=1, eos_token_id=2,
                                             **{"tie_word_embeddings": False, **TINY, **extra})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # norms away from 1 and nonzero biases, so that a mix-up shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(directory)
    return model


def load_ours(directory):
    return load_pretrained(directory).eval()


def logits_of(model, ids):
    with torch.no_grad():
        return gather_logits(model(ids).logits, model.config.vocab_size)


def greedy(model, prompt, n):
    ids = prompt
    for _ in range(n):
        ids = torch.cat([ids, logits_of(model, ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_llama3_inv_freq_matches_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(**{**TINY, "rope_parameters": {**LLAMA3, "rope_theta": 10000.0}})
    reference, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    ours = rope_inv_freq(TINY["hidden_size"] // TINY["num_attention_heads"], 10000.0, LLAMA3)
    assert torch.allclose(ours.float(), reference, rtol=1e-6)
    assert not torch.allclose(ours, rope_inv_freq(8, 10000.0))  # the scaling changes some frequencies


@pytest.mark.parametrize("family", list(FAMILIES))
def test_import_export_matches_transformers(family, tmp_path, capsys):
    hf_dir = tmp_path / "hf"
    hf = write_family(hf_dir, family)
    ours_dir = import_hf(hf_dir, tmp_path / "ours")
    saved = json.loads((ours_dir / "config.json").read_text())
    assert saved["qkv_bias"] == family.startswith("qwen2")
    assert saved["rope_scaling"] == (LLAMA3 if family == "llama3" else None)
    if family == "mistral":  # max_position_embeddings 128 > window 64: clamped, with a note
        assert saved["max_seq_len"] == 64 and "sliding_window 64" in capsys.readouterr().err
    else:
        assert saved["max_seq_len"] == TINY["max_position_embeddings"]  # the source's own context

    ours = load_ours(ours_dir)
    ids = torch.randint(3, hf.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = hf(ids).logits
    assert (logits_of(ours, ids) - reference).abs().max() < 1e-4
    expected = hf.generate(ids[:1, :8], max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(greedy(ours, ids[:1, :8], 12), expected)

    exported = export_hf(ours_dir, tmp_path / "exported")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32,
                                                                 attn_implementation="eager").eval()
    assert type(reloaded).__name__ == ("Qwen2ForCausalLM" if family.startswith("qwen2") else "LlamaForCausalLM")
    with torch.no_grad():
        assert (reloaded(ids).logits - reference).abs().max() < 1e-4
    again = json.loads((import_hf(exported, tmp_path / "again") / "config.json").read_text())
    assert again == saved


def test_qkv_bias_is_sharded_like_the_weight_rows():
    from megacompress.models.gpt import GPT

    model = GPT(ModelConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                            ffn_hidden_size=64, max_seq_len=16, qkv_bias=True))
    qkv = model.stack.layers[0].attn.qkv
    assert qkv.bias.shape == qkv.weight.shape[:1]
    assert qkv.bias.tensor_model_parallel and qkv.bias.partition_dim == qkv.weight.partition_dim == 0
    assert model.stack.layers[0].attn.out.bias is None


def test_old_config_files_load_unchanged():
    old = ModelConfig.from_preset("tiny").to_dict()
    del old["qkv_bias"], old["rope_scaling"]
    config = ModelConfig.from_dict(old)
    assert config.qkv_bias is False and config.rope_scaling is None
    for bad, match in (({"qkv_bias": 1}, "qkv_bias"), ({"rope_scaling": {"rope_type": "yarn"}}, "'yarn'"),
                       ({"rope_scaling": {**LLAMA3, "factor": -1}}, "factor"),
                       ({"rope_scaling": {"rope_type": "llama3"}}, "missing")):
        with pytest.raises(ConfigError, match=match):
            ModelConfig.from_dict({**old, **bad})


REFUSED = [
    ({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": 8},
     "model_type 'mixtral' is not supported"),
    ({"model_type": "llama", "attention_bias": True}, "attention_bias"),
    ({"model_type": "llama", "mlp_bias": True}, "mlp_bias"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn'"),
    ({"model_type": "qwen2", "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
     "rope_type 'dynamic'"),
    ({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]},
     "architecture 'LlamaForSequenceClassification'"),
]


@pytest.mark.parametrize("overrides,match", REFUSED)
def test_refused_by_name(overrides, match, tmp_path):
    base = {"vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
            "intermediate_size": 64, "max_position_embeddings": 128}
    with pytest.raises(ConversionError, match=match):
        hf_llama.config_from_hf({**base, **overrides}, "config.json")


def test_cli_refusals_are_one_line(tmp_path):
    hf_dir = tmp_path / "mistral"
    write_family(hf_dir, "mistral")
    cmd = [sys.executable, "-m", "megacompress", "convert", "import-hf", str(hf_dir), str(tmp_path / "out")]
    done = subprocess.run(cmd + ["--max-seq-len", "100"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "--max-seq-len 100 > sliding_window 64" in done.stderr
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "model_type": "mixtral",
                                                    "architectures": ["MixtralForCausalLM"]}))
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "model_type 'mixtral' is not supported" in done.stderr
    assert TEXT  # the tokenizer's training text is shared with test_hf_convert


def test_import_gguf_qwen2_keeps_rows_and_biases(tmp_path):
    """A qwen2 GGUF (llama.cpp's layout: q/k rows as Hugging Face's, biases as blk.i.attn_{q,k,v}.bias)
    imports with the transformers model's logits (FFN weights as the file's Q8_0 holds them)."""
    from megacompress.models.gguf_import import import_gguf
    from workers.gist_common import write_tiny_gguf

    hf = write_family(tmp_path / "hf", "qwen2")
    reference = write_tiny_gguf(tmp_path / "tiny.gguf", tmp_path / "hf", hf)
    with torch.no_grad():
        hf.load_state_dict({n: torch.from_numpy(a) for n, a in reference.items()})
    ours_dir = import_gguf(tmp_path / "tiny.gguf", tmp_path / "ours")
    assert json.loads((ours_dir / "config.json").read_text())["qkv_bias"] is True
    ids = torch.randint(3, hf.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (logits_of(load_ours(ours_dir), ids) - hf(ids).logits).abs().max() < 1e-4
