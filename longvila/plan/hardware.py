"""The machines a plan is made for: memory, peak compute, link bandwidths and what the runtime costs.

Each number is a documented assumption, not a measurement of the user's cluster; all can be overridden on the
command line. Sources:

- Memory is what ``torch.cuda.get_device_properties().total_memory`` reports (80 GB parts: 79.2 GiB; H200 about
  139.8 GiB, as the device tool here reports it).
- Peak dense bf16 TFLOPS from the vendors' data sheets (H100/H200 SXM 989, A100 312).
- ``dense_efficiency`` (0.55) is the share of peak a transformer's large GEMMs usually reach in training; it is an
  assumption. ``attention_efficiency`` (0.365) is our Triton flash attention's measured forward+backward on an H100
  (361 of 989 TFLOPS at 16K tokens, ``benchmarks/RESULTS.md``), measured on commit 72910d6 on 2026-11-23, before
  the kernels were rewritten on 2026-12-03, and not re-measured since.
- NVLink per GPU and direction: 450 GB/s (H100/H200), 300 GB/s (A100); inter-node 50 GB/s per GPU (one 400 Gb/s
  NIC per GPU, the usual H100 cluster) and 25 GB/s for A100 clusters (200 Gb/s). ``link_efficiency`` (0.7) is the
  share collectives reach; host links (activation offload) 25 GB/s.
- ``reserve_gib``: memory the allocator's peak does not show, kept free: the CUDA context and cuBLAS/NCCL
  workspaces (about 1.5 GiB) and allocator fragmentation (about 1.5 GiB at these tensor sizes).
- On CPU (``--device cpu``: fp32, the host's memory is the budget) the budget is compared with the resident-set
  peak that ``metrics.jsonl`` reports, which includes the interpreter and libraries: ``runtime_gib`` 0.6 GiB (importing
  torch, transformers, deepspeed and the trainer measures 0.47 GiB resident; the process group, tokenizer and data
  add the rest; fitted together with ``memory.OPTIMIZER_STEP_BYTES``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Device:
    name: str
    memory_gib: float
    peak_tflops: float
    """Dense peak in the training precision (bf16 on GPUs, fp32 on CPU)."""
    intra_node_gbps: float
    inter_node_gbps: float
    host_link_gbps: float = 25.0
    dense_efficiency: float = 0.55
    attention_efficiency: float = 0.365
    link_efficiency: float = 0.7
    reserve_gib: float = 3.0
    runtime_gib: float = 0.0
    is_cuda: bool = True

    @property
    def budget_gib(self) -> float:
        """What one rank's predicted peak may use."""
        return self.memory_gib - self.reserve_gib


GPU_PRESETS = {
    "H100-80GB": Device("H100-80GB", 79.2, 989.0, 450.0, 50.0),
    "H200-141GB": Device("H200-141GB", 139.8, 989.0, 450.0, 50.0),
    "A100-80GB": Device("A100-80GB", 79.2, 312.0, 300.0, 25.0),
}


def host_memory_gib() -> float:
    """Total memory of this machine (``/proc/meminfo``; sysconf elsewhere)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def cpu_device(memory_gib: float | None = None) -> Device:
    """This host as the device: fp32, its memory as the budget, gloo over shared memory between ranks.

    ``peak_tflops`` 0.1 with efficiency 1 is a rough figure for a few cores; CPU step times are indicative only.
    """
    return Device("cpu", memory_gib if memory_gib is not None else host_memory_gib(), 0.1, 5.0, 5.0,
                  dense_efficiency=1.0, attention_efficiency=0.5, link_efficiency=1.0, reserve_gib=0.0,
                  runtime_gib=0.6, is_cuda=False)


def resolve_device(device: str, gpu_memory_gb: float | None = None) -> Device:
    """A preset by name (``H100-80GB``, ``H200-141GB``, ``A100-80GB``, ``cpu``), optionally with another memory size.

    ``--gpu_memory_gb`` alone (no preset) means an H100-class GPU with that much memory.
    """
    if device == "cpu":
        return cpu_device(gpu_memory_gb)
    preset = {name.lower(): d for name, d in GPU_PRESETS.items()}.get(device.lower())
    if preset is None:
        raise ValueError(f"--device {device}: choose one of {', '.join([*GPU_PRESETS, 'cpu'])}")
    if gpu_memory_gb is not None:
        if gpu_memory_gb <= 0:
            raise ValueError(f"--gpu_memory_gb must be positive, got {gpu_memory_gb}")
        usable = gpu_memory_gb * 0.99  # what the driver leaves of a nominal size (80 GB parts: 79.2 GiB)
        if abs(usable - preset.memory_gib) > 0.5:
            preset = replace(preset, name=f"{preset.name.split('-')[0]}-class, {gpu_memory_gb:g} GB", memory_gib=usable)
    return preset
