"""Sequence-parallel worker for tests/test_sequence_parallel.py: each mask kind's model at
TP = world size with ``sequence_parallel`` on (sequences of a length the TP size does not
divide, so the padding path runs too).

Writes ``--out/rank{R}.pt``: per case, the gathered logits, loss and gathered gradients of one
batch, and the bytes this rank saved for backward with and without sequence parallelism.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpthf_common import EOS, small_gpthf  # noqa: E402
from model_common import gathered_grads, make_batch, small_config, start_tp_worker  # noqa: E402

from megacompress.models.config import ModelConfig  # noqa: E402
from megacompress.models.outputs import gather_logits  # noqa: E402
from megacompress.models.registry import build_model  # noqa: E402
from megacompress.parallel import state  # noqa: E402
from megacompress.training.activation_memory import saved_activation_bytes  # noqa: E402
from megacompress.training.recompute import apply_recompute  # noqa: E402
from megacompress.training.sequence_parallel import apply_sequence_parallel  # noqa: E402


def _ids(config, shape, seed):
    return torch.randint(0, config.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def cases():
    """name -> (config, batch, recompute): every mask kind (causal, document-causal, GPTHF's two
    stacks, gist), and one with full recompute on top."""
    gpt = small_config()
    causal_ids = _ids(gpt, (2, 15), 1)
    gpthf = small_gpthf()
    gpthf_ids = _ids(gpthf, (2, 23), 2)
    gist = ModelConfig(architecture="gist", gist_tokens=2, vocab_size=300, hidden_size=64, num_layers=2,
                       num_heads=4, num_kv_heads=2, ffn_hidden_size=128, max_seq_len=32)
    gist_ids = _ids(gist, (2, 17), 3)
    gist_batch = dict(input_ids=gist_ids, labels=gist_ids.roll(-1, 1), gist_start=torch.tensor([3, 5]),
                      gist_end=torch.tensor([5, 7]))
    gpthf_batch = dict(input_ids=gpthf_ids, labels=gpthf_ids.roll(-1, 1), eos_mask=gpthf_ids == EOS)
    return {
        "causal": (gpt, dict(input_ids=causal_ids, labels=causal_ids.roll(-1, 1)), "none"),
        "document_causal": (gpt, make_batch(gpt), "none"),
        "gpthf": (gpthf, gpthf_batch, "none"),
        "gist": (gist, gist_batch, "none"),
        "gpthf_full_recompute": (gpthf, gpthf_batch, "full"),
    }


def run_case(config, batch, recompute: str, sequence_parallel: bool):
    """Loss and gradients of one batch; returns (model, output, bytes saved for backward)."""
    model = build_model(config, seed=4)
    apply_recompute(model, recompute)
    apply_sequence_parallel(model, sequence_parallel)
    out, saved = saved_activation_bytes(lambda: model(**batch), model.parameters())
    out.loss.backward()
    return model, out, saved


def main() -> None:
    args = start_tp_worker()
    results = {}
    for name, (config, batch, recompute) in cases().items():
        model, out, saved = run_case(config, batch, recompute, sequence_parallel=True)
        results[name] = dict(logits=gather_logits(out.logits, config.vocab_size).detach(), loss=out.loss.detach(),
                             grads=gathered_grads(model, config.vocab_size), saved_bytes=saved,
                             saved_bytes_without=run_case(config, batch, recompute, sequence_parallel=False)[2])
    torch.save(results, os.path.join(args.out, f"rank{state.get_rank()}.pt"))
    state.destroy()


if __name__ == "__main__":
    main()
