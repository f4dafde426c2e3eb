"""Worker for tests/test_method_plugin.py: the exported ``chunk`` model (a plugin method) reloads
exactly and generates fast == slow. Run with ``MEGACOMPRESS_PLUGINS=plugins.chunk_method`` and
``tests/`` on ``PYTHONPATH``::

    python tests/workers/chunk_method_check.py --ckpt RUN/checkpoints --model EXPORT --out RESULT.json

Writes RESULT.json: the reloaded class and config, whether the logits of two reloads and of a
model built from the checkpoint's fp32 ZeRO partitions (DeepSpeed's zero_to_fp32) are equal,
what the chunk mask hides, and fast / slow / plain-KV-cache generation tokens and cache bytes.
"""

import argparse
import json
from pathlib import Path

import torch

from megacompress import plugins
from megacompress.attention import masks
from megacompress.data.tokenizers import model_tokenizer
from megacompress.generation.fast import generator
from megacompress.generation.generate import generate
from megacompress.generation.sampling import SamplingConfig
from megacompress.generation.uncached import generate_uncached, teacher_forced_max_diff
from megacompress.models.config import ModelConfig
from megacompress.models.registry import build_model, load_pretrained
from megacompress.training.checkpoint import read_latest, read_manifest


def logits(model, ids, documents):
    positions = torch.zeros_like(ids)
    for row in range(ids.shape[0]):  # restart at every document, as the datasets do
        for doc in documents[row].unique().tolist():
            where = documents[row] == doc
            positions[row, where] = torch.arange(int(where.sum()))
    with torch.no_grad():
        return model(ids, positions, documents).logits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {}

    # 1. reload: twice from the export, once from the checkpoint's fp32 weights
    first, second = load_pretrained(args.model).eval(), load_pretrained(args.model).eval()
    result["class"], result["config"] = type(first).__name__, first.config.to_dict()
    result["class_module"] = type(first).__module__
    tag = read_latest(args.ckpt)
    manifest = read_manifest(args.ckpt / tag)
    result["zero_stage"] = manifest["train_config"]["parallel"]["zero_stage"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from_ckpt = build_model(ModelConfig.from_dict(manifest["model_config"]))
    from_ckpt.load_state_dict(get_fp32_state_dict_from_zero_checkpoint(str(args.ckpt), tag=tag), strict=True)
    from_ckpt.eval()
    ids = torch.randint(0, 256, (2, 40))
    documents = torch.zeros(2, 40, dtype=torch.long)
    documents[0, 23:] = 1   # two documents
    documents[1, :5] = -1   # left padding
    reference = logits(first, ids, documents)
    result["same_logits_reload"] = torch.equal(reference, logits(second, ids, documents))
    result["same_logits_checkpoint"] = torch.equal(reference, logits(from_ckpt, ids, documents))

    # 2. the mask: chunks of 8 per document run; a change in chunk 0 reaches chunk 0 only
    chunk = first.config.chunk_size
    kind = masks.get_mask_kind("chunk_causal")
    import plugins.chunk_method.masks as chunk_masks  # already loaded by MEGACOMPRESS_PLUGINS

    result["plugin_loaded_by_env"] = "plugins.chunk_method" in plugins.plugin_modules()
    cids = chunk_masks.chunk_ids(documents, chunk)
    dense = masks.dense(kind.build(documents, {"chunk_ids": cids}), 2, 40, 40)[:, 0]
    expected = torch.zeros_like(dense)
    for b in range(2):
        for q in range(40):
            for k in range(40):
                if documents[b, q] < 0:
                    expected[b, q, k] = q == k
                    continue
                start = int((documents[b] == documents[b, q]).nonzero().min())
                expected[b, q, k] = (documents[b, k] == documents[b, q] and k <= q
                                     and (k - start) // chunk == (q - start) // chunk)
    result["dense_mask_ok"] = torch.equal(dense, expected)
    result["block_starts"] = kind.block_starts(documents, chunk_ids=cids).nonzero().tolist()
    changed = ids.clone()
    changed[0, 3] = (changed[0, 3] + 1) % 256
    diff = (logits(first, changed, documents) - reference).abs().amax(-1)[0]
    result["change_in_chunk0_max_diff"] = {"chunk0": diff[3:8].max().item(), "later_chunks": diff[8:].max().item()}

    # 3. generation: the plugin's cached generator == the uncached reference == the GPT KV cache
    tokenizer = model_tokenizer(str(args.model))
    spec = generator(first.config.architecture)
    texts = ["First Citizen: Before", "We are accounted poor citizens", "Speak, speak."]
    prompts, extra = spec.encode(tokenizer, texts, argparse.Namespace())
    result["prompt_lengths"] = [len(p) for p in prompts]
    result["prompts_start_with_chunk"] = all(p[0] == tokenizer.special_id("chunk") for p in prompts)
    steps = 30
    fast = spec.generate(first, prompts, steps, return_logits=True, **extra)
    slow = generate_uncached(first, prompts, steps, return_logits=True, **extra)
    plain = generate(first, prompts, steps, return_logits=True, **extra)
    result["generator"] = f"{spec.generate.__module__}.{spec.generate.__name__}"
    result["fast_tokens"], result["slow_tokens"], result["plain_tokens"] = fast.tokens, slow.tokens, plain.tokens
    result["teacher_forced_max_diff"] = teacher_forced_max_diff(first, prompts, fast)
    # sampled (varied tokens: the 3-step model's greedy text repeats one byte) and teacher-forced text
    sampling = SamplingConfig(temperature=1.0, seed=7)
    fast_s = spec.generate(first, prompts, steps, sampling=sampling, return_logits=True, **extra)
    slow_s = generate_uncached(first, prompts, steps, sampling=sampling, return_logits=True, **extra)
    result["sampled_fast_tokens"], result["sampled_slow_tokens"] = fast_s.tokens, slow_s.tokens
    forced = torch.tensor([tokenizer.encode(t * 3)[:steps] for t in ("Let us kill him, ", "and we'll have ",
                                                                     "corn at our own price. ")])
    fast_f = spec.generate(first, prompts, steps, forced_tokens=forced, return_logits=True, **extra)
    slow_f = generate_uncached(first, prompts, steps, forced_tokens=forced, return_logits=True, **extra)
    result["max_logit_diff"] = {name: max((a - b).abs().max().item() for a, b in zip(x.step_logits, y.step_logits))
                                for name, x, y in (("greedy", fast, slow), ("sampled", fast_s, slow_s),
                                                   ("forced", fast_f, slow_f))}
    result["teacher_forced_max_diff_forced"] = teacher_forced_max_diff(first, prompts, fast_f)
    per_slot = sum(2 * c.numel() * c.element_size() for c in first.new_kv_cache(1, 1).k)  # k and v, all layers
    result["kv_cache_bytes"] = {"fast": fast.kv_cache_bytes, "plain": plain.kv_cache_bytes,
                                "chunk_bound": len(prompts) * chunk * per_slot}
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
