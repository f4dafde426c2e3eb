"""Cross-entropy over vocabulary-sharded logits, without gathering the full logits.

TP rank ``r`` holds ``logits_parallel[..., :]`` = columns ``[r*Vl, (r+1)*Vl)`` of the
full ``[..., Vp]`` logits (``Vl = Vp / tp``). Per token, three all-reduces over TP of
``[N]``-sized tensors (``N`` = number of tokens) give the exact loss:

1. MAX of the local row maxima (numerical stability),
2. SUM of the target logit (non-zero only on the rank that owns the label),
3. SUM of ``sum(exp(logit - max))``.

``loss = log(sum_exp) - (target_logit - max)``. The backward needs no communication:
``d loss / d logits = softmax - onehot(label)`` restricted to the local columns.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megacompress.parallel import state


def _all_reduce(x: torch.Tensor, op: dist.ReduceOp) -> None:
    if state.get_tensor_parallel_world_size() > 1:
        dist.all_reduce(x, op=op, group=state.get_tensor_parallel_group())


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, vocab_size: int | None):
        local_vocab = logits.shape[-1]
        vocab_start = state.get_tensor_parallel_rank() * local_vocab
        ctx.input_dtype = logits.dtype
        logits = logits.float()
        if vocab_size is not None and vocab_start + local_vocab > vocab_size:
            # Padding columns (>= vocab_size) are not part of the distribution.
            cols = torch.arange(vocab_start, vocab_start + local_vocab, device=logits.device)
            logits = logits.masked_fill(cols >= vocab_size, float("-inf"))

        row_max = logits.max(dim=-1).values
        _all_reduce(row_max, dist.ReduceOp.MAX)
        shifted = logits - row_max.unsqueeze(-1)

        ignored = labels == ignore_index
        local_labels = labels - vocab_start
        owned = (local_labels >= 0) & (local_labels < local_vocab) & ~ignored
        local_labels = local_labels.masked_fill(~owned, 0)
        target = shifted.gather(-1, local_labels.unsqueeze(-1)).squeeze(-1).masked_fill(~owned, 0.0)
        _all_reduce(target, dist.ReduceOp.SUM)

        exp = shifted.exp_()  # shifted is a fresh tensor: reuse its storage for exp
        sum_exp = exp.sum(dim=-1)
        _all_reduce(sum_exp, dist.ReduceOp.SUM)

        loss = (sum_exp.log() - target).masked_fill(ignored, 0.0)
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local_labels, owned, ignored)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        softmax, local_labels, owned, ignored = ctx.saved_tensors
        grad = softmax.clone()
        grad.scatter_add_(-1, local_labels.unsqueeze(-1), -owned.to(grad.dtype).unsqueeze(-1))
        grad.mul_(grad_loss.masked_fill(ignored, 0.0).unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None, None


def vocab_parallel_cross_entropy(logits_parallel: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                                 vocab_size: int | None = None) -> torch.Tensor:
    """Per-token cross-entropy of sharded logits.

    ``logits_parallel [..., Vp/tp]`` (this rank's vocabulary block, any float dtype;
    computed in fp32), ``labels [...]`` int64 full-vocabulary ids or ``ignore_index``.
    ``vocab_size``: the real vocabulary size when ``Vp`` includes padding columns, which
    are then excluded from the softmax. Returns fp32 ``[...]``, 0 where ignored; the
    same on every TP rank. Labels outside ``[0, vocab_size)`` raise.
    """
    if logits_parallel.shape[:-1] != labels.shape:
        raise ValueError(f"logits_parallel {tuple(logits_parallel.shape)} and labels {tuple(labels.shape)} "
                         "must agree on all but the last dimension")
    limit = vocab_size if vocab_size is not None else logits_parallel.shape[-1] * state.get_tensor_parallel_world_size()
    bad = labels[(labels != ignore_index) & ((labels < 0) | (labels >= limit))]
    if bad.numel():  # one host sync; an out-of-range label would otherwise be silently ignored
        raise ValueError(f"labels must lie in [0, {limit}) or equal ignore_index={ignore_index}; "
                         f"got e.g. {int(bad[0])}")
    return _VocabParallelCrossEntropy.apply(logits_parallel, labels, ignore_index, vocab_size)
