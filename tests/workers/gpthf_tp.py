"""TP worker for tests/test_gpthf_tp.py: a small GPTHF at TP = world size.

Writes ``--out/rank{R}.pt``: gathered logits, loss and gathered gradients of one batch, and
sampled fast generation (tokens + step logits); rank 0 also ``--out/pretrained``.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpthf_common import EOS, PROMPTS, small_gpthf  # noqa: E402
from model_common import gathered_grads, start_tp_worker  # noqa: E402

from megacompress.methods.gpthf.generation import generate_fast  # noqa: E402
from megacompress.generation.sampling import SamplingConfig  # noqa: E402
from megacompress.models.outputs import gather_logits  # noqa: E402
from megacompress.models.registry import build_model  # noqa: E402
from megacompress.parallel import state  # noqa: E402


def batch(config):
    ids = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    return dict(input_ids=ids, labels=ids.roll(-1, 1), eos_mask=ids == EOS)


def forward_and_generate(config):
    """Loss + gradients of one batch, then sampled fast generation with step logits."""
    model = build_model(config, seed=4)
    out = model(**batch(config))
    out.loss.backward()
    generated = generate_fast(model.eval(), PROMPTS, 20, eos_id=EOS, return_logits=True,
                              sampling=SamplingConfig(temperature=1.0, seed=5))
    return model, out, generated


def main() -> None:
    args = start_tp_worker()
    config = small_gpthf()
    model, out, generated = forward_and_generate(config)
    model.save_pretrained(os.path.join(args.out, "pretrained"))
    torch.save(dict(logits=gather_logits(out.logits, config.vocab_size).detach(), loss=out.loss.detach(),
                    grads=gathered_grads(model, config.vocab_size), tokens=generated.tokens,
                    step_logits=generated.step_logits),
               os.path.join(args.out, f"rank{state.get_rank()}.pt"))
    state.destroy()


if __name__ == "__main__":
    main()
