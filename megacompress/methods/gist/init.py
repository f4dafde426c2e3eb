"""Make a gist model from a pretrained one (``python -m megacompress.gist init``).

``init_gist_model(model_dir, k, out_dir, variant)``:

* the tokenizer gets ``<GIST>`` as a special token with id V (= the model's old
  ``vocab_size``; an hf ``tokenizer.json`` must have exactly V tokens so that ids agree).
  A model on our GPT-2 vocabulary (no ``tokenizer.json``) already has ``<GIST>`` (50258):
  its embedding row, never trained, is re-initialised and the vocabulary kept;
* the embedding gets row V = the mean of the V vocabulary embeddings (docs/gist.md, "Format"), and so
  does an untied LM head (mean of its rows); the tables stay unpadded on disk, so loading
  at any TP size pads them again (``padded_vocab_size``);
* ``config.json``: ``architecture: gist``, ``gist_tokens: k``, ``gist_variant``, vocab V+1.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from megacompress.data.tokenizers import TOKENIZER_CONFIG, TOKENIZER_JSON, GPT2Tokenizer
from megacompress.methods.gist import GIST_TEXT as GIST
from megacompress.models import pretrained
from megacompress.models.hf_llama import ConversionError, write_model

GIST_K_VALUES = (1, 2, 5, 10)  # the paper's; any k >= 1 works


def _tokenizer_with_gist(model_dir: Path, vocab_size: int) -> tuple[dict[str, str], int]:
    """(tokenizer files with ``<GIST>`` added, its id)."""
    from tokenizers import AddedToken, Tokenizer

    path = model_dir / TOKENIZER_JSON
    if not path.is_file():
        gist_id = GPT2Tokenizer().special_id("gist")
        if vocab_size <= gist_id:
            raise ConversionError(f"{model_dir}: no {TOKENIZER_JSON} and vocab_size {vocab_size} has no room for "
                                  f"GPT-2's <GIST> ({gist_id})")
        return {}, gist_id
    tok = Tokenizer.from_file(str(path))
    if tok.token_to_id(GIST) is not None:
        raise ConversionError(f"{path}: already has {GIST} (is {model_dir} a gist model already?)")
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != vocab_size:
        raise ConversionError(f"{path}: {size} tokens but the model has vocab_size {vocab_size}; "
                              f"{GIST} would not get id {vocab_size}")
    tok.add_special_tokens([AddedToken(GIST, special=True, normalized=False)])
    files = {TOKENIZER_JSON: tok.to_str()}
    if (model_dir / TOKENIZER_CONFIG).is_file():
        files[TOKENIZER_CONFIG] = (model_dir / TOKENIZER_CONFIG).read_text()
    return files, vocab_size


def init_gist_model(model_dir: str | os.PathLike, k: int, out_dir: str | os.PathLike,
                    variant: str = "gist") -> Path:
    model_dir = Path(model_dir)
    config = pretrained.load_config(model_dir)
    if config.architecture != "gpt":
        raise ConversionError(f"{model_dir / pretrained.CONFIG_NAME}: architecture {config.architecture!r}; "
                              "gist init starts from a plain 'gpt' model")
    tokenizer_files, gist_id = _tokenizer_with_gist(model_dir, config.vocab_size)
    tensors = load_file(model_dir / pretrained.WEIGHTS_NAME)
    tables = ["embed.weight"] + ([] if config.tie_embeddings else ["lm_head.weight"])
    vocab = config.vocab_size
    for name in tables:
        table = tensors[name]
        mean = table[:vocab].mean(dim=0, keepdim=True) if gist_id == vocab else \
            torch.cat([table[:gist_id], table[gist_id + 1:]]).mean(dim=0, keepdim=True)
        tensors[name] = torch.cat([table[:gist_id], mean, table[gist_id + 1:]]).contiguous()
    new_vocab = max(vocab, gist_id + 1)
    gist_config = dataclasses.replace(config, architecture="gist", vocab_size=new_vocab, gist_tokens=k,
                                      gist_variant=variant)
    return write_model(tensors, gist_config, out_dir, tokenizer_files)
