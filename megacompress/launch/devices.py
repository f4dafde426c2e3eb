"""The accelerators a job can be planned for: memory and dense bf16 peak.

The peak FLOP/s come from the table the trainer uses for its logged MFU
(`megacompress.training.metrics.PEAK_BF16_FLOPS`), so a plan's tokens/s estimate and a run's
MFU line divide by the same number. Memory is what ``torch.cuda.get_device_properties(i)
.total_memory`` reports for the card (a little under the marketing size); the planner keeps
a headroom below it for the CUDA context, NCCL buffers and allocator fragmentation.

``cpu`` is this machine, for checking the memory model against a measured CPU run
(benchmarks/plan_memory.py): its memory is the RAM, it has no peak (no tokens/s estimate),
``precision: auto`` means fp32 there and attention runs the dense SDPA path.
"""

from __future__ import annotations

from dataclasses import dataclass

from megacompress.training.metrics import PEAK_BF16_FLOPS

GIB = 2**30


@dataclass(frozen=True)
class Device:
    name: str
    memory_bytes: int
    peak_flops: float | None  # dense bf16 FLOP/s; None: unknown (no throughput estimate)
    gpu: bool = True

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


def _gpu(name: str, table_key: str, memory_bytes: int) -> Device:
    return Device(name, memory_bytes, PEAK_BF16_FLOPS[table_key])


DEVICES = {d.name: d for d in (
    _gpu("h100-80gb", "H100", 85_031_714_816),    # 79.2 GiB
    _gpu("h200-141gb", "H200", 150_754_820_096),  # 140.4 GiB
    _gpu("a100-80gb", "A100", 85_198_045_184),    # 79.3 GiB
    _gpu("a100-40gb", "A100", 42_505_273_344),    # 39.6 GiB
)}


def cpu_device() -> Device:
    """This machine's RAM as one "device" (measurement checks of the memory model)."""
    import psutil

    return Device("cpu", psutil.virtual_memory().total, None, gpu=False)


def device_names() -> list[str]:
    return [*DEVICES, "cpu"]


def get_device(name: str) -> Device:
    return cpu_device() if name == "cpu" else DEVICES[name]
