"""Tensor parallel (TP) x data parallel (DP) building blocks.

``state`` (process groups, DeepSpeed ``mpu``), ``mappings`` (autograd collectives),
``layers`` (Column/RowParallelLinear, VocabParallelEmbedding), ``cross_entropy``
(vocab_parallel_cross_entropy), ``random`` (TP-invariant initialisation), ``sharding``
(split/gather full tensors), ``grads`` (DP averaging, TP-aware grad norm and clipping).
See docs/parallel.md.
"""
