"""Deformable registration of one pair with a trained UniReg model (+ optional instance optimisation).

Both images must be on the same grid (``unireg preprocess`` puts every subject and the atlas
template on the atlas grid). In the cohort workflow the **fixed** image is the subject and the
**moving** image is the atlas template, so warping the atlas labels with the field gives the
labels in the subject's (preprocessed) space.

Outputs of :func:`register_files` in ``out_dir``::

    warped.nii.gz            moving image warped onto the fixed image
    displacement.nii.gz      field d (RAS mm, shape X,Y,Z,1,3, intent "vector"): fixed world point p
                             corresponds to moving world point p + d(p)
    displacement_itk.nii.gz  the same in ITK/ANTs convention (LPS: x and y components negated),
                             usable as a displacement-field transform by antsApplyTransforms
    warped_labels.nii.gz     (with --moving-labels) label map warped without interpolating values
    registration.json        device, timings, Jacobian statistics (% det <= 0, std log det)
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import UniregError
from .io import Image, load_image, save_displacement, save_image, write_text_atomic
from .losses import ImageSimilarity, regulariser
from .model import UniRegNet, jacobian_stats, load_checkpoint
from .transforms import resample

OUTPUT_FILES = {"warped": "warped.nii.gz", "displacement": "displacement.nii.gz",
                "displacement_itk": "displacement_itk.nii.gz", "labels": "warped_labels.nii.gz",
                "info": "registration.json"}


@dataclass
class InstanceOptOptions:
    steps: int = 0
    similarity: str = "mind"
    regulariser: str = "diffusion"
    weight: float = 0.1          # regulariser weight (diffusion of the flow-grid velocity)
    learning_rate: float = 0.2   # Adam step, flow-grid voxels


@dataclass
class RegistrationResult:
    warped: Image
    displacement_mm: np.ndarray  # (3, D, H, W), RAS mm on the fixed grid
    ddf: torch.Tensor            # (1, 3, D, H, W), fixed-grid voxels (unireg.model convention)
    warped_labels: Image | None = None
    info: dict = field(default_factory=dict)


def select_device(requested: str = "auto") -> torch.device:
    """``auto``: CUDA when visible, else CPU. ``cuda`` without a visible GPU is an error.

    Under SLURM a job that was allocated a GPU sees it as ``cuda:0`` (SLURM sets
    CUDA_VISIBLE_DEVICES to the allocated device), so ``cuda`` always means "the GPU this job got".
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
        raise UniregError(f"a GPU was requested (device cuda) but torch sees none ({seen}, torch "
                          f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}): check the job's GPU "
                          "allocation and that the env has a CUDA build of torch, or set register.device: cpu")
    return torch.device(requested)


# what a SLURM job (or any scheduler) tells the process about where it runs
SCHEDULER_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE",
                       "CUDA_VISIBLE_DEVICES")


def execution_environment(device: torch.device) -> dict:
    """Where this registration ran: host, device (with the GPU's name) and the scheduler's variables
    (recorded in registration.json and the job log, so a cohort run can be audited afterwards)."""
    env = {"host": socket.gethostname(), "device": str(device), "torch": torch.__version__,
           "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu_name"] = torch.cuda.get_device_name(device)
    env.update({name.lower(): os.environ[name] for name in SCHEDULER_VARIABLES if name in os.environ})
    return env


def _tensor(image: Image, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.data, dtype=np.float32))[None, None].to(device)


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
        raise UniregError(f"registration on the {grid} atlas grid"
                          f"{' with instance optimisation' if instance_opt_steps else ''} needs about "
                          f"{needed / 1e9:.1f} GB but only {available / 1e9:.1f} GB is available; use a coarser "
                          "atlas (atlas_spacing / unireg atlas prepare --spacing), set register.instance_opt: 0, "
                          "or give the job more memory")


def check_pair(fixed: Image, moving: Image, multiple: int = 16) -> None:
    if fixed.shape != moving.shape or not np.allclose(fixed.affine, moving.affine, atol=1e-3):
        raise UniregError("fixed and moving images are not on the same grid; run 'unireg preprocess' "
                          "on both (or resample them onto one grid) first", path=moving.path)
    if any(s % multiple for s in fixed.shape):
        raise UniregError(f"grid shape {fixed.shape} is not divisible by {multiple}; use an atlas made by "
                          "'unireg atlas prepare/import'", path=fixed.path)


def instance_optimise(model: UniRegNet, fixed: torch.Tensor, moving: torch.Tensor, velocity: torch.Tensor,
                      options: InstanceOptOptions) -> torch.Tensor:
    """Refine a predicted velocity by gradient descent on similarity + smoothness (test time)."""
    similarity = ImageSimilarity(options.similarity)
    smooth = regulariser(options.regulariser)
    with torch.no_grad():
        target = similarity.descriptor(fixed)
    velocity = velocity.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([velocity], lr=options.learning_rate)
    for _ in range(options.steps):
        optimiser.zero_grad()
        ddf = model.displacement(velocity, fixed.shape[2:])
        loss = similarity(model.transformer(moving, ddf), fixed, target) + options.weight * smooth(velocity)
        loss.backward()
        optimiser.step()
    return velocity.detach()


def register_images(fixed: Image, moving: Image, model: UniRegNet, *, moving_labels: Image | None = None,
                    instance_opt: InstanceOptOptions | None = None, device: torch.device | str = "cpu",
                    fixed_mask: Image | None = None) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` (same grid). Returns the warped image and the field."""
    check_pair(fixed, moving)
    device = torch.device(device)
    check_memory(fixed.shape, (instance_opt or InstanceOptOptions()).steps, device)
    model = model.to(device).eval()
    timings = {}
    fixed_t, moving_t = _tensor(fixed, device), _tensor(moving, device)
    t0 = time.perf_counter()
    with torch.no_grad():
        velocity = model.velocity(model.features(fixed_t), model.features(moving_t))
    timings["predict_s"] = time.perf_counter() - t0
    opt = instance_opt or InstanceOptOptions()
    if opt.steps > 0:
        t0 = time.perf_counter()
        velocity = instance_optimise(model, fixed_t, moving_t, velocity, opt)
        timings["instance_opt_s"] = time.perf_counter() - t0
    with torch.no_grad():
        ddf = model.displacement(velocity, fixed_t.shape[2:])
        warped = model.transformer(moving_t, ddf)
        warped_labels = None
        if moving_labels is not None:
            if moving_labels.shape != moving.shape:
                moving_labels = resample(moving_labels, moving.grid)
            lab = torch.from_numpy(moving_labels.data.astype(np.int64))[None, None].to(device)
            warped_labels = model.transformer(lab.float(), ddf, label=True).round().long()
        mask_t = _tensor(fixed_mask, device) if fixed_mask is not None else None
        stats = jacobian_stats(ddf, mask_t)
    ddf_np = ddf[0].cpu().numpy().astype(np.float64)
    displacement_mm = np.tensordot(fixed.affine[:3, :3], ddf_np, axes=(1, 0))
    info = {"device": str(device), "instance_opt_steps": opt.steps,
            "instance_opt": vars(opt) if opt.steps else None, "jacobian": stats,
            "timings_s": {k: round(v, 3) for k, v in timings.items()}}
    return RegistrationResult(
        warped=fixed.with_data(warped[0, 0].cpu().numpy(), is_label=False),
        displacement_mm=displacement_mm.astype(np.float32), ddf=ddf.cpu(),
        warped_labels=None if warped_labels is None else fixed.with_data(
            warped_labels[0, 0].cpu().numpy().astype(np.int32), is_label=True),
        info=info)


def register_files(fixed_path, moving_path, out_dir, *, model_path=None, moving_labels_path=None,
                   instance_opt: InstanceOptOptions | None = None, device: str = "auto",
                   subject: str | None = None, fixed_mask_path=None) -> RegistrationResult:
    """Load, register, and write the outputs listed in the module docstring (JSON last)."""
    try:
        dev = select_device(device)
        model, checkpoint = load_checkpoint(model_path, dev)
    except UniregError as err:
        raise err.with_context(subject=subject)
    fixed = load_image(fixed_path, subject=subject)
    moving = load_image(moving_path, subject=subject)
    labels = load_image(moving_labels_path, label=True, subject=subject) if moving_labels_path else None
    mask = load_image(fixed_mask_path, label=True, subject=subject) if fixed_mask_path else None
    try:
        result = register_images(fixed, moving, model, moving_labels=labels, instance_opt=instance_opt,
                                 device=dev, fixed_mask=mask)
    except UniregError as err:
        raise err.with_context(subject=subject)
    out_dir = Path(out_dir)
    save_image(result.warped, out_dir / OUTPUT_FILES["warped"])
    save_displacement(result.displacement_mm, fixed.affine, out_dir / OUTPUT_FILES["displacement"])
    save_displacement(result.displacement_mm, fixed.affine, out_dir / OUTPUT_FILES["displacement_itk"], lps=True)
    if result.warped_labels is not None:
        save_image(result.warped_labels, out_dir / OUTPUT_FILES["labels"])
    result.info.update({"subject": subject, "model": str(model_path or "default"),
                        "extractor": checkpoint.get("extractor"), "environment": execution_environment(dev),
                        "displacement": "RAS mm, fixed world p -> moving world p + d(p)"})
    write_text_atomic(out_dir / OUTPUT_FILES["info"], json.dumps(result.info, indent=2) + "\n")
    return result
