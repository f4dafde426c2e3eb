"""Bytes per GPU of one training job: parameters, gradients, optimizer state, buffers, activations.

Why a model and not a rule of thumb: the activations of *this* codebase's block, and what
DeepSpeed 0.19.8 really allocates per ZeRO stage, decide whether a job fits; the textbook
"16 bytes per parameter + 34 s b h per layer" is off for both. Every term below is read from
the code it describes and was checked on the CPU (benchmarks/plan_memory.py, docs/scaling.md).

Notation: b micro batch, s sequence, h hidden, a / g query / KV heads, d head dim, f FFN
width, V_p padded vocabulary, t TP size, n DP size, L layers, p bytes per activation and
model weight (2 in bf16, 4 in fp32), Psi parameters held by one TP rank (matrices / t;
norms replicated).

**Activations saved for backward, per token per block** (`megacompress.models.blocks`,
read off ``torch.autograd.graph.saved_tensors_hooks``):

* each RMSNorm (two per block) computes in fp32 and saves its fp32 input (``x.float()``: the
  input itself in fp32, a copy in bf16) 4h, the fp32 normalised tensor 4h and the 1/rms
  (4 bytes); its output (p h) is saved by the column-parallel linear that reads it:
  2 (8h + p h + 4). With sequence parallelism (Megatron's scheme) all of this is a 1/t
  chunk of the sequence, otherwise replicated on every TP rank.
* attention (heads split over t): the fused qkv output p (a + 2g) d (the value is a view into
  it, so SDPA keeps the whole buffer), the RoPE-rotated q and k p (a + g) d (RoPE itself saves
  only the shared cos/sin tables), SDPA's output p a d and log-sum-exp 4a. On the CPU
  (dense SDPA with the document mask) the output's memory is [B, S, H, D]-ordered, so the
  transpose-reshape into the output projection is a view; on a GPU (FlexAttention / flash)
  the reshape is counted as a copy, + p a d. The CPU path also converts the boolean
  [B, 1, S, S] mask into an additive one per call and saves it: + p s per token per layer
  ([B, S, S], not per head). GPU kernels keep no S x S tensor.
* SwiGLU: gate and up outputs, silu(gate), and the product fed to the down projection:
  4 p f / t.

So per block and token, MHA in bf16 on a GPU with t = 1: 20h + 14h + 8f + 4a + 8 bytes, 66 h
for f = 4h (50.7 kB for Baseline-12), about twice Megatron's 34 h (its formula without the
S x S term): the norms' fp32 tensors and SwiGLU's third matrix.

* recompute ``full``: each block keeps only its input (p h); in backward one block's
  activations are rebuilt at a time, after the loss head's have been freed.
* recompute ``selective`` reruns only the attention core (q, k, v, mask -> output): it drops
  the log-sum-exp and, on the CPU, the additive mask; on a GPU also SDPA's output (the
  reshaped copy stays, saved by the output projection). On the CPU the output itself stays
  (the projection saves the view of it), so selective saves almost nothing there.
* the loss head: the final norm (8h + p h + 4) and the logits with the vocab-parallel
  cross-entropy (`loss_head_bytes`): at the start of backward the logits (p V_p / t, held by the
  step's output), the fp32 softmax it saved (4 V_p / t), its gradient (4 V_p / t) and, in bf16,
  that gradient cast back (2 V_p / t): 12 V_p / t bytes per token in both precisions; at the end
  of the forward the logits, the fp32 masked copy and the softmax being formed (p + 8) plus,
  with gradient accumulation, the previous micro batch's logits, which the trainer's loop still
  references until the new forward returns (+ p): 16 V_p / t in fp32, 12 in bf16.

Activations of one micro batch are alive at a time (forward + backward per micro batch);
the peak is at the end of the forward / start of backward, when every block's tensors and the
loss head's coexist.

**Model and optimizer state per GPU** (torch AdamW; DeepSpeed 0.19.8 as configured by
`megacompress.training.ds_config`; in bf16 DeepSpeed keeps fp32 master weights):

=======  ===============================  ===============================  ==========================
ZeRO     parameters                       gradients (during backward)      optimizer (master, m, v)
=======  ===============================  ===============================  ==========================
0 fp32   4 Psi                            4 Psi (``param.grad``)           8 Psi
0 bf16   2 Psi                            2 Psi                            12 Psi
1        p Psi (one flat buffer)          p Psi (``param.grad``) + p Psi   12 Psi / n
                                          / n (the averaged partition)
2        p Psi                            p Psi / n (partition, kept       12 Psi / n
                                          across micro batches)
3        p Psi / n + gathered layers      p Psi / n (flat partition)       12 Psi / n
=======  ===============================  ===============================  ==========================

ZeRO-1/2/3 clone their fp32 master partition even when the model is fp32 (hence 12, not 8).
Buffers: ZeRO-2's contiguous-gradient bucket (``reduce_bucket_size`` elements of p bytes,
5e7 in ``ds_configs/zero2*.json``) and ZeRO-3's reduce bucket (5e8 by default, one per
gradient dtype), allocated whole with ``torch.empty``: on a GPU all of it counts, on the CPU
only the pages written (at most Psi elements). ZeRO-3 also holds the full parameters it gathered:
they are kept from the forward to the backward when the model is within
``stage3_max_reuse_distance`` (1e9), so the whole model's p Psi then (capped by
``stage3_max_live_parameters``, 1e9), otherwise the running layer and the prefetch bucket (5e7).

The optimizer step runs after the activations are freed and needs temporaries of its own:
AdamW's (``optimizer.implementation``: none for the default ``fused`` kernel; ``foreach`` keeps
``sqrt(v)`` of the flat fp32 partition, 4 Psi / n; the single-tensor ``for-loop`` also its
quotient, 8 Psi / n; without ZeRO, all tensors at once for ``foreach``, one at a time for
``for-loop``), the fp32 cast of bf16 gradients (4 Psi / n) and, under ZeRO-1/2, the flattened fp32
gradient partition DeepSpeed builds for the step (4 Psi / n, in fp32 too). The peak is
state + buffers + max(activations, step temporaries).
"""

from __future__ import annotations

from dataclasses import dataclass

from megacompress.models.config import ModelConfig
from megacompress.models.flops import count_parameters


@dataclass(frozen=True)
class JobShape:
    """What a rank's memory depends on besides the model config."""

    tp: int
    dp: int
    zero: int
    micro_batch: int
    seq_len: int
    recompute: str = "none"
    sequence_parallel: bool = False
    bf16: bool = True
    gpu: bool = True
    accumulation: int = 1
    optimizer: str = "fused"  # optimizer.implementation: fused | foreach | for-loop

    @property
    def value_bytes(self) -> int:
        return 2 if self.bf16 else 4


@dataclass(frozen=True)
class ZeroBuffers:
    """The DeepSpeed template's bucket sizes (elements), with DeepSpeed 0.19.8's defaults."""

    reduce_bucket: int = 500_000_000
    prefetch_bucket: int = 50_000_000
    max_live_parameters: int = 1_000_000_000
    max_reuse_distance: int = 1_000_000_000

    @classmethod
    def from_template(cls, ds: dict) -> "ZeroBuffers":
        zero = ds.get("zero_optimization", {})
        return cls(reduce_bucket=int(zero.get("reduce_bucket_size", cls.reduce_bucket)),
                   prefetch_bucket=int(zero.get("stage3_prefetch_bucket_size", cls.prefetch_bucket)),
                   max_live_parameters=int(zero.get("stage3_max_live_parameters", cls.max_live_parameters)),
                   max_reuse_distance=int(zero.get("stage3_max_reuse_distance", cls.max_reuse_distance)))


@dataclass
class MemoryEstimate:
    """Bytes per GPU; ``total`` = state + buffers + max(activations, optimizer step temporary)."""

    parameters: float
    gradients: float
    optimizer: float
    buffers: float
    activations: float
    optimizer_step_temporary: float

    @property
    def total(self) -> float:
        return (self.parameters + self.gradients + self.optimizer + self.buffers
                + max(self.activations, self.optimizer_step_temporary))


def rank_parameters(config: ModelConfig, tp: int) -> tuple[int, int, int]:
    """(parameters held by one TP rank, its largest tensor, one block's): matrices split over
    TP, norms replicated."""
    counts = count_parameters(config, tp)
    h = config.hidden_size
    layer = 2 * h + (counts.per_layer - 2 * h) // tp
    embedding = counts.embedding // tp
    total = embedding + (counts.lm_head // tp) + counts.num_layers * layer + counts.final_norm
    return total, embedding, layer


def block_activation_bytes(config: ModelConfig, shape: JobShape) -> float:
    """Bytes one block saves for backward per micro batch without recompute (module docstring)."""
    h, f, d = config.hidden_size, config.ffn_hidden_size, config.head_dim
    a, g = config.num_heads, config.num_kv_heads
    t, p = shape.tp, shape.value_bytes
    sp = t if shape.sequence_parallel else 1
    norms = 2 * (8 * h + p * h + 4) / sp
    attention = (p * (a + 2 * g) * d + p * (a + g) * d + p * a * d + 4 * a) / t
    if shape.gpu:
        attention += p * a * d / t  # the reshape into the output projection is a copy
    mask = 0 if shape.gpu else p * shape.seq_len
    mlp = 4 * p * f / t
    tokens = shape.micro_batch * shape.seq_len
    weights = 2 * 4 * h if shape.bf16 else 0  # the norms' fp32 copies of their bf16 weights
    return tokens * (norms + attention + mask + mlp) + weights


def loss_head_bytes(shape: JobShape) -> int:
    """Peak bytes per token per local vocabulary column of the logits and the cross-entropy:
    forward, the logits (p), the fp32 copy of padded columns masked out (4; in bf16 first a plain
    fp32 copy, 4, freed once masked) and the shifted/exp/softmax tensor (4), plus, with gradient
    accumulation, the previous micro batch's logits the trainer's output still holds (p);
    backward, the logits, the saved softmax, its gradient (4) and, in bf16, the gradient cast back
    (2)."""
    p = shape.value_bytes
    forward = (p if shape.accumulation > 1 else 0) + p + 8
    backward = p + 8 + (p if p != 4 else 0)
    return max(forward, backward)


def selective_saving(config: ModelConfig, shape: JobShape) -> float:
    """Bytes per block that recomputing the attention core does not keep."""
    a, d, p = config.num_heads, config.head_dim, shape.value_bytes
    per_token = 4 * a / shape.tp + (p * a * d / shape.tp if shape.gpu else p * shape.seq_len)
    return shape.micro_batch * shape.seq_len * per_token


def activation_bytes(config: ModelConfig, shape: JobShape) -> float:
    """Peak activation bytes of one micro batch (at the start of backward, or for ``full``
    while a block is rebuilt)."""
    h, p = config.hidden_size, shape.value_bytes
    sp = shape.tp if shape.sequence_parallel else 1
    tokens = shape.micro_batch * shape.seq_len
    vocab = config.padded_vocab_size(shape.tp) / shape.tp
    head = tokens * (8 * h + p * h + 4) / sp
    loss = tokens * vocab * loss_head_bytes(shape)
    block = block_activation_bytes(config, shape)
    bool_mask = 0 if shape.gpu else shape.micro_batch * shape.seq_len ** 2  # the prepared [B, 1, S, S] mask
    layers = config.num_layers
    if shape.recompute == "full":
        inputs = layers * tokens * p * h / sp
        return inputs + head + bool_mask + max(loss, block)
    if shape.recompute == "selective":
        block -= selective_saving(config, shape)
    return layers * block + head + bool_mask + loss


def state_bytes(psi: int, largest: int, layer: int, shape: JobShape, buffers: ZeroBuffers) -> MemoryEstimate:
    """Parameters, gradients, optimizer state, buffers and the optimizer step's temporaries per GPU."""
    n, p, bf16 = shape.dp, shape.value_bytes, shape.bf16
    touched = (lambda elements: elements) if shape.gpu else (lambda elements: min(elements, psi))
    # AdamW's temporaries (ZeRO: of the flat partition; ZeRO-0: of the model's tensors): none for the
    # fused kernel; sqrt(v) of all at once for foreach; sqrt(v) and its quotient one tensor at a time
    # for the single-tensor for-loop
    adam = {"fused": 0, "foreach": 4 * psi / n, "for-loop": 8 * psi / n}[shape.optimizer]
    cast = 4 * psi / n if bf16 else 0  # the gradients cast to fp32 for the master weights' step
    if shape.zero == 0:
        adam = {"fused": 0, "foreach": 4 * psi, "for-loop": 8 * largest}[shape.optimizer]
        return MemoryEstimate(parameters=p * psi, gradients=p * psi, optimizer=8 * psi + (4 * psi if bf16 else 0),
                              buffers=0, activations=0, optimizer_step_temporary=adam + 4 * psi * bf16)
    if shape.zero in (1, 2):
        gradients = p * psi + p * psi / n if shape.zero == 1 else p * psi / n
        bucket = p * touched(buffers.reduce_bucket) if shape.zero == 2 else 0
        return MemoryEstimate(parameters=p * psi, gradients=gradients, optimizer=12 * psi / n, buffers=bucket,
                              activations=0, optimizer_step_temporary=adam + 4 * psi / n)
    # gathered weights stay for the backward within the reuse distance: the whole model if it is shorter
    working = psi if psi <= buffers.max_reuse_distance else layer + buffers.prefetch_bucket
    gathered = p * min(working, buffers.max_live_parameters)
    return MemoryEstimate(parameters=p * psi / n, gradients=p * psi / n, optimizer=12 * psi / n,
                          buffers=p * touched(buffers.reduce_bucket) + gathered, activations=0,
                          optimizer_step_temporary=adam + cast)


def estimate(config: ModelConfig, shape: JobShape, buffers: ZeroBuffers) -> MemoryEstimate:
    """The whole per-GPU estimate for ``config`` under ``shape``."""
    psi, largest, layer = rank_parameters(config, shape.tp)
    result = state_bytes(psi, largest, layer, shape, buffers)
    result.activations = activation_bytes(config, shape)
    return result
