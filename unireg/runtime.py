"""Where a registration runs: the device, the machine and scheduler it runs on, and its memory.

* :func:`select_device`: ``auto`` (:data:`unireg.defaults.DEVICE`), ``cpu`` or ``cuda`` (``cuda:N``)
  as a torch device, with a one-line error when a GPU is requested but torch sees none.
* :func:`execution_environment`: host, device, GPU name and the scheduler's variables
  (:data:`SCHEDULER_VARIABLES`), recorded in ``registration.json`` and the job log.
* :func:`check_memory`: on the CPU, the memory a registration on a grid needs
  (:data:`BASE_BYTES` + :data:`BYTES_PER_VOXEL`, measured with ``benchmarks/register_speed.py``)
  against :func:`available_memory_bytes` (the cgroup limit or MemAvailable), so that a job too
  small fails early with what to change instead of being OOM-killed.
* :func:`keep_freed_memory`: glibc's allocator told to keep freed memory for reuse, which makes a
  CPU registration 12-20 % faster (torch frees and allocates tensors of tens of MB at every step).

Used by :mod:`unireg.register`; nothing here registers anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import socket
import sys

import numpy as np
import torch

from .defaults import DEVICE
from .errors import UniregError


def select_device(requested: str = DEVICE) -> torch.device:
    """``auto``: CUDA when visible, else CPU. ``cuda`` without a visible GPU is an error.

    Under SLURM a job that was allocated a GPU sees it as ``cuda:0`` (SLURM sets
    CUDA_VISIBLE_DEVICES to the allocated device), so ``cuda`` always means "the GPU this job got".
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
        raise UniregError(
            f"a GPU was requested (device cuda) but torch sees none ({seen}, torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}): check the job's GPU "
            "allocation and that the env has a CUDA build of torch, or set register.device: cpu"
        )
    return torch.device(requested)


# what a SLURM job (or any scheduler) tells the process about where it runs
SCHEDULER_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_JOB_PARTITION",
    "SLURM_JOB_GPUS",
    "SLURM_GPUS_ON_NODE",
    "CUDA_VISIBLE_DEVICES",
)


def execution_environment(device: torch.device) -> dict:
    """Where this registration ran: host, device (with the GPU's name) and the scheduler's variables
    (recorded in registration.json and the job log, so a cohort run can be audited afterwards)."""
    env = {
        "host": socket.gethostname(),
        "device": str(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu_name"] = torch.cuda.get_device_name(device)
    env.update({name.lower(): os.environ[name] for name in SCHEDULER_VARIABLES if name in os.environ})
    return env


# measured with benchmarks/register_speed.py (CPU): bytes per voxel of the atlas grid on top of
# the ~0.4 GB that torch and the model take; instance optimisation keeps MIND features and
# their gradients
BASE_BYTES = 0.45e9
BYTES_PER_VOXEL = {"predict": 350, "instance_opt": 950}


def available_memory_bytes() -> float:
    """Memory this process may still use: the cgroup limit (SLURM, containers) or MemAvailable."""
    limits = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = open(path).read().strip()
            if value.isdigit():
                limits.append(float(value))
        except OSError:
            pass
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                limits.append(float(line.split()[1]) * 1024)
    except OSError:
        pass
    return min(limits) if limits else float("inf")


def check_memory(shape: tuple[int, ...], instance_opt_steps: int, device: torch.device) -> None:
    """Fail early, naming the grid and the settings to lower, instead of being OOM-killed."""
    if device.type != "cpu":
        return
    mode = "instance_opt" if instance_opt_steps > 0 else "predict"
    needed = BASE_BYTES + BYTES_PER_VOXEL[mode] * float(np.prod(shape))
    available = available_memory_bytes()
    if needed > available:
        grid = "x".join(str(s) for s in shape)
        raise UniregError(
            f"registration on the {grid} atlas grid"
            f"{' with instance optimisation' if instance_opt_steps else ''} needs about "
            f"{needed / 1e9:.1f} GB but only {available / 1e9:.1f} GB is available; use a coarser "
            "atlas (atlas_spacing / unireg atlas prepare --spacing), set register.instance_opt: 0, "
            "or give the job more memory"
        )


#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory in the process for reuse; True when it now does.

    By default glibc serves every block above its mmap threshold (at most 32 MB) with a fresh
    mmap and returns it to the kernel when freed; below it, it trims the heap top when freed.
    Torch on the CPU allocates and frees tensors of 8-80 MB at every instance-optimisation step, so
    each step pays page faults and zeroing of fresh pages again. With mmap off (``M_MMAP_MAX`` 0)
    and no trimming below 2 GB, freed blocks are reused: a 2 mm registration takes 12 % less time
    and a 1 mm one 20 % less, for up to 10 % more peak memory (``benchmarks/register_speed.py``).
    Called by :func:`unireg.register.register_images` (once per process: cached). Set
    ``UNIREG_MALLOC=default`` to leave the allocator alone; a libc that is not glibc is left alone.
    """
    if os.environ.get("UNIREG_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # no glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
