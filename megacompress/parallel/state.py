"""Process groups for tensor parallel (TP) x data parallel (DP) training.

Rank layout (Megatron's): with world size ``W = tp * dp``, global rank ``r`` has
TP rank ``r % tp`` and DP rank ``r // tp``. TP groups are blocks of contiguous ranks
(``[0..tp-1], [tp..2tp-1], ...``) so that the chatty TP all-reduces stay inside a
node; DP groups are strided (``[j, j+tp, j+2tp, ...]``). For W=4, tp=2:
TP groups ``[0,1] [2,3]``, DP groups ``[0,2] [1,3]``.

``initialize()`` reads the launcher's environment:

* torchrun and the ``deepspeed`` launcher set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``;
* inside a submitit SLURM job without ``RANK``, submitit's
  ``TorchDistributedEnvironment`` derives them from the ``SLURM_*`` variables (a bare
  multi-task ``srun python`` without either is an error);
* with none of these it runs as world size 1 without touching ``torch.distributed``
  (all groups are ``None`` and every communication function is the identity);
* if ``torch.distributed`` is already initialised (by the caller or by
  ``deepspeed.init_distributed``) that process group is reused as is.

``mpu`` is the object DeepSpeed takes as ``deepspeed.initialize(..., mpu=mpu)``; it
answers every ``mpu.get_*`` method DeepSpeed 0.19 calls for ZeRO grad norms,
overflow checks and checkpoint naming.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megacompress.errors import UserError


@dataclass(frozen=True)
class Layout:
    """The rank groups of a ``world_size = tp * dp`` job (pure data, no processes)."""

    world_size: int
    tensor_parallel_size: int
    tensor_parallel_groups: tuple[tuple[int, ...], ...]
    data_parallel_groups: tuple[tuple[int, ...], ...]

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // self.tensor_parallel_size

    def tensor_parallel_rank(self, rank: int) -> int:
        return rank % self.tensor_parallel_size

    def data_parallel_rank(self, rank: int) -> int:
        return rank // self.tensor_parallel_size

    def tensor_parallel_group_of(self, rank: int) -> tuple[int, ...]:
        return self.tensor_parallel_groups[rank // self.tensor_parallel_size]

    def data_parallel_group_of(self, rank: int) -> tuple[int, ...]:
        return self.data_parallel_groups[rank % self.tensor_parallel_size]


class LayoutError(UserError, ValueError):
    """A world size and tensor-parallel size that do not form a layout (a user error)."""


def compute_layout(world_size: int, tensor_parallel_size: int) -> Layout:
    """Megatron's rank layout: TP ranks contiguous, DP ranks strided by ``tp``."""
    if world_size < 1 or tensor_parallel_size < 1:
        raise LayoutError(f"world_size ({world_size}) and tensor_parallel_size ({tensor_parallel_size}) must be >= 1")
    if world_size % tensor_parallel_size:
        raise LayoutError(
            f"world size {world_size} is not divisible by tensor_parallel_size {tensor_parallel_size}"
        )
    tp, dp = tensor_parallel_size, world_size // tensor_parallel_size
    tp_groups = tuple(tuple(range(i * tp, (i + 1) * tp)) for i in range(dp))
    dp_groups = tuple(tuple(range(j, world_size, tp)) for j in range(tp))
    return Layout(world_size, tp, tp_groups, dp_groups)


@dataclass
class _State:
    layout: Layout
    rank: int
    tp_group: dist.ProcessGroup | None
    dp_group: dist.ProcessGroup | None
    owns_process_group: bool  # destroy() tears down torch.distributed only if we created it


_STATE: _State | None = None


def _export_slurm_env() -> None:
    """Fill RANK/WORLD_SIZE/... inside a submitit job when no launcher set them.

    A bare multi-task ``srun python ...`` (no submitit, no torchrun) is refused rather
    than silently running every task as its own world of size 1.
    """
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        from submitit.helpers import TorchDistributedEnvironment

        # set_cuda_visible_devices=False: we pick the device with set_device(LOCAL_RANK) instead.
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        raise RuntimeError(
            f"running as SLURM task {os.environ['SLURM_PROCID']} of {os.environ['SLURM_NTASKS']} without RANK/"
            "WORLD_SIZE: submit through submitit or start `srun torchrun ...` so the tasks form one job"
        )


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def initialize(tensor_parallel_size: int = 1, backend: str | None = None,
               timeout_minutes: float = 30.0) -> None:
    """Create the TP and DP groups (and the default process group if needed).

    ``backend`` defaults to nccl on GPU, gloo on CPU. Idempotent for the same
    ``tensor_parallel_size``; raises if called again with a different one.
    """
    global _STATE
    if _STATE is not None:
        if _STATE.layout.tensor_parallel_size != tensor_parallel_size:
            raise RuntimeError(
                f"megacompress.parallel.state is already initialised with tensor_parallel_size="
                f"{_STATE.layout.tensor_parallel_size}; call destroy() first to use {tensor_parallel_size}"
            )
        return

    owns = False
    if not dist.is_initialized():
        _export_slurm_env()
        if "WORLD_SIZE" not in os.environ:
            _STATE = _State(compute_layout(1, tensor_parallel_size), 0, None, None, False)
            return
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE is set but {', '.join(missing)} is not: cannot initialise "
                               "torch.distributed (launch with torchrun, deepspeed or under SLURM)")
        backend = backend or _default_backend()
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, init_method="env://",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
        owns = True
    elif torch.cuda.is_available() and dist.get_backend() == "nccl" and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))

    world, rank = dist.get_world_size(), dist.get_rank()
    layout = compute_layout(world, tensor_parallel_size)
    # new_group is collective: every rank must create every group, in the same order.
    tp_group = dp_group = None
    for ranks in layout.tensor_parallel_groups:
        group = dist.new_group(list(ranks))
        if rank in ranks:
            tp_group = group
    for ranks in layout.data_parallel_groups:
        group = dist.new_group(list(ranks))
        if rank in ranks:
            dp_group = group
    _STATE = _State(layout, rank, tp_group, dp_group, owns)


def is_initialized() -> bool:
    return _STATE is not None


def destroy() -> None:
    """Forget the groups (and destroy the default process group if ``initialize`` created it)."""
    global _STATE
    if _STATE is not None and _STATE.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()
    _STATE = None


def _state() -> _State:
    if _STATE is None:
        raise RuntimeError("megacompress.parallel.state.initialize() has not been called")
    return _STATE


def get_layout() -> Layout:
    return _state().layout


def get_rank() -> int:
    """Global rank (0 when running without torch.distributed)."""
    return _state().rank


def get_world_size() -> int:
    return _state().layout.world_size


def get_tensor_parallel_group() -> dist.ProcessGroup | None:
    """This rank's TP group; ``None`` in a single-process run."""
    return _state().tp_group


def get_tensor_parallel_rank() -> int:
    s = _state()
    return s.layout.tensor_parallel_rank(s.rank)


def get_tensor_parallel_world_size() -> int:
    return _state().layout.tensor_parallel_size


def get_tensor_parallel_src_rank() -> int:
    """Global rank of TP rank 0 in this rank's TP group (broadcast source)."""
    s = _state()
    return s.layout.tensor_parallel_group_of(s.rank)[0]


def get_data_parallel_group() -> dist.ProcessGroup | None:
    """This rank's DP group; ``None`` in a single-process run."""
    return _state().dp_group


def get_data_parallel_rank() -> int:
    s = _state()
    return s.layout.data_parallel_rank(s.rank)


def get_data_parallel_world_size() -> int:
    return _state().layout.data_parallel_size


def get_data_parallel_group_ranks() -> list[int]:
    s = _state()
    return list(s.layout.data_parallel_group_of(s.rank))


class _MPU:
    """DeepSpeed's ``mpu`` interface over this module's groups.

    "Model parallel" means tensor parallel here (there is no pipeline parallelism):
    DeepSpeed all-reduces grad norms and overflow flags over the model-parallel group
    and counts a parameter once unless it has ``tensor_model_parallel=True``.
    """

    get_model_parallel_group = staticmethod(get_tensor_parallel_group)
    get_model_parallel_rank = staticmethod(get_tensor_parallel_rank)
    get_model_parallel_world_size = staticmethod(get_tensor_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(get_tensor_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(get_tensor_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(get_tensor_parallel_world_size)
    get_tensor_model_parallel_src_rank = staticmethod(get_tensor_parallel_src_rank)
    get_data_parallel_group = staticmethod(get_data_parallel_group)
    get_data_parallel_rank = staticmethod(get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(get_data_parallel_world_size)
    get_data_parallel_group_ranks = staticmethod(get_data_parallel_group_ranks)

    @staticmethod
    def get_pipeline_model_parallel_world_size() -> int:
        return 1

    @staticmethod
    def get_pipeline_model_parallel_rank() -> int:
        return 0


mpu = _MPU()
