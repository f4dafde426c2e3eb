"""TP worker for tests/test_model_tp.py: forward/backward/generate/save a small GPT at TP = world size.

Writes ``--out/rank{R}.pt`` with gathered logits [B, S, V], loss, gathered gradients per
parameter (vocab tables cut to the real vocabulary) and generated tokens; TP rank 0 also
writes ``--out/pretrained`` (save_pretrained).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from model_common import gathered_grads, make_batch, small_config, start_tp_worker  # noqa: E402

from megacompress.generation.generate import generate  # noqa: E402
from megacompress.generation.sampling import SamplingConfig  # noqa: E402
from megacompress.models.gpt import GPT  # noqa: E402
from megacompress.models.outputs import gather_logits
from megacompress.models.pretrained import full_state_dict  # noqa: E402
from megacompress.parallel import state  # noqa: E402


def main() -> None:
    args = start_tp_worker()
    config = small_config()
    model = GPT(config, seed=7)
    batch = make_batch(config)
    out = model(**batch)
    out.loss.backward()
    grads = gathered_grads(model, config.vocab_size)
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6], [9]]
    greedy = generate(model, prompts, 5).tokens
    sampled = generate(model, prompts, 5, sampling=SamplingConfig(temperature=1.0, top_k=20, seed=3)).tokens
    model.save_pretrained(os.path.join(args.out, "pretrained"))
    torch.save(dict(logits=gather_logits(out.logits, config.vocab_size).detach(), loss=out.loss.detach(),
                    grads=grads, weights=full_state_dict(model), greedy=greedy, sampled=sampled),
               os.path.join(args.out, f"rank{state.get_rank()}.pt"))
    state.destroy()


if __name__ == "__main__":
    main()
