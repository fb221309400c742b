"""Peer benchmark: UniReg against ANTs SyN, elastix B-spline and affine only, on the same pairs.

Run (writes benchmarks/results/peers.{md,csv} and peers.pairs.csv, prints the markdown):

    nice -n 10 .venv/bin/python benchmarks/peers.py                  # default: 2 pairs, 2 mm, ~30 min on 2 cores
    .venv/bin/python benchmarks/peers.py --smoke --out /tmp/peers     # 4 mm grid, 1 T1 pair, all methods,
                                                                      # fewer iterations (SMOKE): a test, not a result
    .venv/bin/python benchmarks/peers.py --pairs 9 --methods unireg,ants --tasks mono

Needs ``pip install -r benchmarks/requirements.txt`` (antspyx, itk-elastix) and ../shared/data.

**Inputs, identical for every method.** Every image goes through :mod:`unireg.preprocess` once
(reorient, brain extraction, normalisation, MI affine to the MNI 2009a atlas, resampling onto
the atlas grid: 80x96x96 at 2 mm, the grid the default model was trained on), exactly as
``unireg train`` prepares its data (:func:`unireg.train.prepare_subject`); labels follow the
same affine (nearest neighbour). Each method then registers the same two float32 arrays on that
grid: the *moving* atlas (one subject's T1 with its DLMUSE labels) onto the *fixed* subject, and
returns a dense displacement on the fixed grid. Affine only = the identity on that grid.

**Scoring, one code path for every method.** Each method's displacement (ANTs: the composed
forward transform; elastix: transformix's deformation field; both converted from mm to voxels)
warps the moving labels with unireg's own nearest-neighbour ``unireg.fields.warp``; Dice
(:func:`unireg.metrics.dice_per_label`, every label of the fixed reference; a label lost
entirely counts as Dice 0) and HD95 (:func:`unireg.metrics.surface_distances`, labels present in
both) per label and pair; % folding = % voxels of the whole grid with det J <= 0 from
:func:`unireg.fields.jacobian_stats` on that displacement. As a convention check the tool's own
warped image is compared with ours (``rewarp_error`` in peers.pairs.csv).

**Tasks.**

* ``mono``: real inter-subject T1 -> T1. The atlas is the first validation subject of the
  packaged model (``model_card.val_subjects``, the split of config/train_default.yaml, which is
  re-derived and checked here), the fixed subjects the next ``--pairs``; no subject the model
  was trained on is used. Scored against the fixed subject's own 148 DLMUSE labels.
* ``t2``, ``pd``, ``ct``: the same pairs with the fixed subject's preprocessed T1 remapped to a
  synthetic contrast (see :data:`CONTRASTS`) and renormalised like any preprocessed image; the
  atlas stays T1; scored with the real labels. Tissue classes are a 3-class k-means of the T1
  intensities inside the brain mask; the remap is piecewise linear through the class means, so
  partial-volume voxels get intermediate values as in a real scan.
* ``ixi002``: the real pair of ../shared/data/ixi002_t1_t2 (same subject, HD-BET brain-extracted
  T1 and T2, preprocessed without brain extraction). ``T2 -> T1``: brain-mask Dice of the warped
  T2 mask against the T1 mask. Agreement: the atlas labels propagated to the subject's T1 (T1 ->
  T1) and to its T2 (T1 -> T2, cross-modal), the latter mapped onto the T1's grid through the two
  preprocessing affines (the scans share scanner space); mean Dice over labels between the two.

**Methods** (``--methods``): ``affine``; ``unireg`` (packaged default model); ``unireg_io``
(plus ``--instance-opt`` steps of :meth:`unireg.register.InstanceOptOptions.schedule`: the shipped
default, squared LNCC for every contrast); ``ants`` (antspyx ``SyNOnly`` from the identity: SyN[0.2, 3, 0],
shrink 4x2x1, smoothing 2x1x0 voxels, ``--ants-iterations``; metric CC radius 2 voxels (4 mm) for same-contrast
pairs as in antsRegistrationSyN.sh, Mattes MI 32 bins for cross-modal pairs); ``elastix``
(itk-elastix's default ``bspline`` parameter map: 4 resolutions, 256 iterations, final control-point
spacing 10 mm, Mattes MI + bending energy, for both kinds of pair). With a CUDA GPU visible, UniReg
also runs on it (extra rows).

**Time and memory.** Each method runs in its own subprocess (numpy + its own library only), so
its peak RSS is its own; seconds per pair time the registration call only (UniReg after one
untimed warm-up), with ``--threads`` threads (torch, ITK).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np  # the only module-level dependency: method workers must not load torch/ITK/ANTs they do not use

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from unireg.defaults import INSTANCE_OPT_STEPS, MIRROR  # noqa: E402  (no heavy imports)

SHARED = Path(os.environ.get("UNIREG_SHARED_DATA", REPO.parent / "shared" / "data"))
IXI = SHARED / "ixi_t1_dlmuse"
IXI002 = SHARED / "ixi002_t1_t2"
TRAIN_CONFIG = REPO / "config" / "train_default.yaml"

METHODS = {
    "affine": "affine only",
    "unireg": "UniReg",
    "unireg_io": "UniReg + IO",
    "ants": "ANTs SyN",
    "elastix": "elastix B-spline",
}
TASKS = ("mono", "t2", "pd", "ct", "ixi002")
TASK_TITLES = {
    "mono": "T1 -> T1",
    "t2": "T1 -> T2-like",
    "pd": "T1 -> PD-like",
    "ct": "T1 -> CT-like",
    "ixi002": "IXI002 real T2 / T1",
}

# Synthetic contrasts: output value at the control points (0, CSF mean, GM mean, WM mean, 1) of the
# preprocessed T1 intensity, linear in between; 0 outside the brain mask. ``noise``: Gaussian, same units.
# CT-like is in Hounsfield units (typical CSF / GM / WM values), shown in a brain window [0, 80] HU.
CONTRASTS = {
    "t2": {
        "points": (1.00, 0.95, 0.55, 0.35, 0.30),
        "noise": 0.0,
        "what": "monotone decreasing (contrast inversion): CSF brightest, then GM, WM darkest",
    },
    "pd": {
        "points": (0.75, 0.80, 0.90, 0.65, 0.60),
        "noise": 0.0,
        "what": "non-monotone: GM brightest, CSF between GM and WM, low contrast",
    },
    "ct": {
        "points": (8.0, 8.0, 38.0, 28.0, 28.0),
        "noise": 3.0,
        "window": (0.0, 80.0),
        "what": "non-monotone, very low contrast (HU): CSF 8, GM 38, WM 28, noise sd 3 HU, window 0-80 HU",
    },
}

ANTS_CC_RADIUS = 2  # voxels: 4 mm at 2 mm, as radius 4 at antsRegistrationSyN.sh's 1 mm
ANTS_MI_BINS = 32
ANTS_GRAD_STEP = 0.2
ANTS_ITERATIONS = "100,70,20"  # SyN iterations at shrink 4, 2, 1
SMOKE = {
    "grid_mm": 4.0,
    "pairs": 1,
    "tasks": "mono",
    "instance_opt": 5,
    "ants_iterations": "40,20,10",
    "elastix_iterations": 64,
}


# ----------------------------------------------------------------------------------------------
# Cases: what each method registers (written once, read by every method's worker)
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    task: str
    kind: str  # "mono" (same contrast) or "cross"
    fixed: str  # subject ids, for the pairs table
    moving: str
    score: str  # "labels", "mask" (brain-mask Dice) or "agreement" (scored with another case)


def log(message: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def checkpoint_arg(parser: argparse.ArgumentParser, model: Path | None) -> Path | None:
    """A ``--model`` argument checked and made absolute (the method workers run in another folder)."""
    if model is None:
        return None
    if not model.is_file():
        parser.error(f"--model {model}: no such checkpoint")
    return model.resolve()


def model_name(model: str | Path | None) -> str:
    """How a table names the scored checkpoint: its path and sha256 prefix."""
    from unireg.model import DEFAULT_MODEL
    from unireg.weights import sha256_file

    path = Path(model) if model else DEFAULT_MODEL
    shown = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
    return f"{'packaged default ' if not model else ''}{shown} (sha256 {sha256_file(path)[:12]})"


def model_split(model: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(train, validation) subject ids of the packaged default model (or ``model``), checked against
    the recipes' split (every recipe in config/ shares it)."""
    from unireg.model import load_checkpoint
    from unireg.train import discover_dataset, load_config, split_dataset

    _, payload = load_checkpoint(model)
    card = payload["model_card"]
    config = load_config(TRAIN_CONFIG)
    data = config["data"]
    items = discover_dataset(IXI / "t1", IXI / "labels")
    train, val = split_dataset(items, data["n_train"], data["n_val"], data["split_seed"], data["exclude"])
    if [r["id"] for r in val] != card["val_subjects"] or [r["id"] for r in train] != card["train_subjects"]:
        raise SystemExit(
            "peers: the split of config/train_default.yaml no longer matches the packaged "
            "model's model_card; the benchmark would score subjects the model was trained on"
        )
    assert not set(card["train_subjects"]) & set(card["val_subjects"])
    return card["train_subjects"], card["val_subjects"]


def tissue_means(t1: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean intensity of the three tissue classes (CSF < GM < WM): 1-D k-means inside the brain."""
    values = t1[mask]
    centres = np.percentile(values, [10, 50, 90])
    for _ in range(50):
        assign = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        new = np.array([values[assign == k].mean() for k in range(3)])
        if np.allclose(new, centres, atol=1e-6):
            break
        centres = new
    return np.sort(centres)


def synthetic_contrast(t1, mask: np.ndarray, name: str, seed: int):
    """The preprocessed T1 ``t1`` (unireg Image, [0, 1]) remapped to contrast ``name``, renormalised."""
    from unireg.intensity import normalise_intensity

    spec = CONTRASTS[name]
    inside = mask > 0
    csf, gm, wm = tissue_means(t1.data, inside)
    out = np.interp(t1.data, (0.0, csf, gm, wm, 1.0), spec["points"]).astype(np.float32)
    if spec["noise"]:
        out += np.random.default_rng(seed).normal(0.0, spec["noise"], out.shape).astype(np.float32)
    if "window" in spec:
        lo, hi = spec["window"]
        out = np.clip((out - lo) / (hi - lo), 0.0, 1.0)
    out[~inside] = 0.0
    # what unireg preprocess does to any image: percentile normalisation inside the brain mask
    return normalise_intensity(t1.with_data(out), mask=inside)


def preprocess_ixi(subject_ids: list[str], atlas, cache: Path) -> dict[str, dict]:
    """Preprocess (cached under ``cache``) IXI T1 subjects and their labels with the training recipe's
    options; each record's ``image`` is the preprocessed :class:`unireg.io.Image` (affine kept)."""
    from unireg.io import load_image
    from unireg.preprocess import OUTPUT_FILES, PreprocessOptions
    from unireg.train import load_config, prepare_subject

    options = PreprocessOptions(**load_config(TRAIN_CONFIG)["preprocess"])
    subjects = {}
    for sid in subject_ids:
        t0 = time.perf_counter()
        item = {
            "id": sid,
            "image": str(IXI / "t1" / f"{sid}.nii.gz"),
            "labels": str(IXI / "labels" / f"{sid}_DLMUSE.nii.gz"),
        }
        record = prepare_subject(item, atlas, cache, options)
        record["image"] = load_image(cache / sid / OUTPUT_FILES["image"])
        subjects[sid] = record
        log(f"preprocessed {sid} ({time.perf_counter() - t0:.0f} s, cache {cache / sid})")
    return subjects


def preprocess_all(args, atlas, val_ids: list[str], cache: Path):
    """Preprocess (cached) every subject the tasks need; return the cases and their arrays."""
    from unireg.affine import read_affine_txt
    from unireg.io import load_image
    from unireg.preprocess import OUTPUT_FILES, PreprocessOptions, preprocess_file
    from unireg.train import load_config
    from unireg.transforms import resample

    atlas_id, targets = val_ids[0], val_ids[1 : 1 + args.pairs]
    subjects = preprocess_ixi([atlas_id] + targets, atlas, cache)
    cases, arrays, refs = [], {}, {}
    moving = subjects[atlas_id]

    def add(case: Case, fixed_img: np.ndarray, moving_img: np.ndarray, **ref):
        cases.append(case)
        arrays[case.name] = (fixed_img.astype(np.float32), moving_img.astype(np.float32))
        refs[case.name] = ref

    for k, sid in enumerate(targets):
        fixed = subjects[sid]
        if "mono" in args.tasks:
            add(
                Case(f"mono_{sid}", "mono", "mono", sid, atlas_id, "labels"),
                fixed["image"].data,
                moving["image"].data,
                reference=fixed["labels"],
                moving_labels=moving["labels"],
            )
        for name in CONTRASTS:
            if name in args.tasks:
                image = synthetic_contrast(fixed["image"], fixed["mask"], name, seed=k)
                add(
                    Case(f"{name}_{sid}", name, "cross", f"{sid} ({name.upper()}-like)", atlas_id, "labels"),
                    image.data,
                    moving["image"].data,
                    reference=fixed["labels"],
                    moving_labels=moving["labels"],
                )
    if "ixi002" in args.tasks:
        options = PreprocessOptions(**load_config(TRAIN_CONFIG)["preprocess"])
        plain = PreprocessOptions(brain_extraction=False, similarity=options.similarity)
        scans = {}
        for contrast in ("T1", "T2"):
            out = cache / f"IXI002-Guys-0828_{contrast}"
            t0 = time.perf_counter()
            if not (out / OUTPUT_FILES["info"]).is_file():
                preprocess_file(
                    IXI002 / f"hd_bet_IXI002-Guys-0828-{contrast}.nii.gz",
                    atlas,
                    out,
                    plain,
                    subject=f"IXI002{contrast}",
                )
            matrix = read_affine_txt(out / OUTPUT_FILES["affine"])
            mask = resample(
                load_image(IXI002 / f"hd_bet_mask_IXI002-Guys-0828-{contrast}.nii.gz", label=True), atlas.grid, matrix
            )
            scans[contrast] = {
                "image": load_image(out / OUTPUT_FILES["image"]).data,
                "matrix": matrix,
                "mask": (mask.data > 0).astype(np.int32),
            }
            log(f"preprocessed IXI002 {contrast} ({time.perf_counter() - t0:.0f} s)")
        t1, t2 = scans["T1"], scans["T2"]
        add(
            Case("ixi002_T2_to_T1", "ixi002", "cross", "IXI002 T1", "IXI002 T2", "mask"),
            t1["image"],
            t2["image"],
            reference=t1["mask"],
            moving_labels=t2["mask"],
        )
        add(
            Case("ixi002_atlas_to_T1", "ixi002", "mono", "IXI002 T1", atlas_id, "agreement"),
            t1["image"],
            moving["image"].data,
            moving_labels=moving["labels"],
        )
        add(
            Case("ixi002_atlas_to_T2", "ixi002", "cross", "IXI002 T2", atlas_id, "agreement"),
            t2["image"],
            moving["image"].data,
            moving_labels=moving["labels"],
            # T1-grid point p -> subject (scanner) world A_T1 p -> T2-grid point A_T2^-1 A_T1 p
            to_t1_grid=np.linalg.inv(t2["matrix"]) @ t1["matrix"],
        )
    return cases, arrays, refs, atlas_id, targets


# ----------------------------------------------------------------------------------------------
# Method workers: one subprocess per method; each writes a displacement (3, D, H, W) in fixed-grid
# voxels (unireg.model convention) per case, plus the tool's own warped image
# ----------------------------------------------------------------------------------------------


def register_unireg(cases, work: Path, settings: dict, device: str, steps: int) -> dict:
    import torch

    from unireg.io import Image
    from unireg.model import load_checkpoint
    from unireg.register import InstanceOptOptions, network_pooling, register_images

    torch.set_num_threads(settings["threads"])
    affine = np.array(settings["grid_affine"])
    model, checkpoint = load_checkpoint(settings.get("model"), device=device)
    images = {c.name: [Image(a, affine) for a in load_case(work, c.name)] for c in cases}
    first = images[cases[0].name][0]
    # what `unireg register` does on this grid (--network-grid default): pool to the model's spacing
    factor = network_pooling(first.shape, first.spacing, (checkpoint.get("grid") or {}).get("spacing_mm"))
    mirror = settings.get("mirror", MIRROR)
    register_images(*images[cases[0].name], model, device=device, network_factor=factor, mirror=mirror)  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, cpu = {}, {}
    for case in cases:
        fixed, moving = images[case.name]
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        c0 = time.process_time()  # CPU seconds of every thread of this process
        result = register_images(
            fixed,
            moving,
            model,
            device=device,
            instance_opt=InstanceOptOptions.schedule(steps, **settings.get("instance_opt_options", {})),
            network_factor=factor,
            mirror=mirror,
        )
        if device == "cuda":
            torch.cuda.synchronize()
        seconds[case.name] = time.perf_counter() - t0
        cpu[case.name] = time.process_time() - c0
        save_field(work, case.name, result.ddf[0].numpy(), result.warped.data)
        log(f"  {case.name}: {seconds[case.name]:.1f} s")
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_gpu_mb": gpu}


def register_ants(cases, work: Path, settings: dict) -> dict:
    import ants

    spacing = (settings["spacing"],) * 3
    iterations = tuple(int(i) for i in settings["ants_iterations"].split(","))
    seconds, cpu = {}, {}
    for case in cases:
        fixed_np, moving_np = load_case(work, case.name)
        # numpy axis order = ITK index order in antspyx; origin 0, identity direction: mm along array axes
        fixed, moving = ants.from_numpy(fixed_np, spacing=spacing), ants.from_numpy(moving_np, spacing=spacing)
        cc_radius = settings.get("ants_cc_radius", ANTS_CC_RADIUS)
        metric, sampling = ("CC", cc_radius) if case.kind == "mono" else ("mattes", ANTS_MI_BINS)
        tmp = Path(tempfile.mkdtemp(dir=work))
        t0 = time.perf_counter()
        c0 = time.process_time()  # CPU seconds of every thread of this process
        reg = ants.registration(
            fixed,
            moving,
            "SyNOnly",
            initial_transform="Identity",
            outprefix=str(tmp / "ants_"),
            syn_metric=metric,
            syn_sampling=sampling,
            reg_iterations=iterations,
            grad_step=settings.get("ants_grad_step", ANTS_GRAD_STEP),
            flow_sigma=3,
            total_sigma=0,
        )
        seconds[case.name] = time.perf_counter() - t0
        cpu[case.name] = time.process_time() - c0
        composed = ants.apply_transforms(fixed, moving, reg["fwdtransforms"], compose=str(tmp / "composed_"))
        field_mm = ants.image_read(composed).numpy()  # (D, H, W, 3), mm along array axes
        save_field(work, case.name, np.moveaxis(field_mm, -1, 0) / settings["spacing"], reg["warpedmovout"].numpy())
        shutil.rmtree(tmp)
        log(f"  {case.name}: {seconds[case.name]:.1f} s ({metric})")
    return {"seconds": seconds, "cpu_seconds": cpu}


def register_elastix(cases, work: Path, settings: dict) -> dict:
    import itk

    def to_itk(array):
        # itk.image_from_array reverses axes; transpose first so that ITK's x is array axis 0
        image = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))
        image.SetSpacing([settings["spacing"]] * 3)
        return image

    seconds, cpu = {}, {}
    for case in cases:
        fixed_np, moving_np = load_case(work, case.name)
        fixed, moving = to_itk(fixed_np), to_itk(moving_np)
        parameters = itk.ParameterObject.New()
        bspline = parameters.GetDefaultParameterMap("bspline")
        bspline["FinalBSplineInterpolationOrder"] = ["1"]  # its own warped image: linear, as ours (check only)
        if settings.get("elastix_iterations"):
            bspline["MaximumNumberOfIterations"] = [str(settings["elastix_iterations"])]
        parameters.AddParameterMap(bspline)
        t0 = time.perf_counter()
        c0 = time.process_time()  # CPU seconds of every thread of this process
        # (number_of_threads= crashes itk-elastix 0.25.4; ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS sets it)
        warped, transform = itk.elastix_registration_method(
            fixed, moving, parameter_object=parameters, log_to_console=False
        )
        seconds[case.name] = time.perf_counter() - t0
        cpu[case.name] = time.process_time() - c0
        field_mm = itk.array_from_image(itk.transformix_deformation_field(moving, transform)).transpose(2, 1, 0, 3)
        save_field(
            work,
            case.name,
            np.moveaxis(field_mm, -1, 0) / settings["spacing"],
            itk.array_from_image(warped).transpose(2, 1, 0),
        )
        log(f"  {case.name}: {seconds[case.name]:.1f} s")
    return {"seconds": seconds, "cpu_seconds": cpu}


def load_case(work: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(work / "cases" / f"{name}.npz") as data:
        return data["fixed"], data["moving"]


def save_field(work: Path, name: str, ddf: np.ndarray, warped: np.ndarray) -> None:
    np.savez(work / "fields" / f"{name}.npz", ddf=ddf.astype(np.float32), warped=warped.astype(np.float32))


def worker_main(method: str, device: str, work: Path) -> None:
    settings = json.loads((work / "settings.json").read_text())
    cases = [Case(**c) for c in settings["cases"]]
    if method == "unireg":
        out = register_unireg(cases, work, settings, device, 0)
    elif method == "unireg_io":
        out = register_unireg(cases, work, settings, device, settings["instance_opt"])
    elif method == "ants":
        out = register_ants(cases, work, settings)
    elif method == "elastix":
        out = register_elastix(cases, work, settings)
    else:
        raise SystemExit(f"unknown method {method}")
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: on Linux a child started by
    fork + exec inherits the parent's ru_maxrss, which would charge the parent's memory to it."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(method: str, device: str, work: Path, threads: int) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads),
        "ANTS_RANDOM_SEED": "1",
    }
    # cwd: transformix writes deformationField.nii into the current folder
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_worker", method, device, str(work)],
        env=env,
        cwd=work,
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"peers: the {method} ({device}) worker failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Scoring (parent process): the same functions for every method
# ----------------------------------------------------------------------------------------------


def warp_labels(labels: np.ndarray, ddf: np.ndarray) -> np.ndarray:
    import torch

    from unireg.fields import warp

    lab = torch.from_numpy(np.asarray(labels, dtype=np.float32))[None, None]
    warped = warp(lab, torch.from_numpy(ddf)[None], label=True)
    return warped[0, 0].round().numpy().astype(np.int32)


def warp_image(image: np.ndarray, ddf: np.ndarray) -> np.ndarray:
    import torch

    from unireg.fields import warp

    return warp(torch.from_numpy(image)[None, None], torch.from_numpy(ddf)[None])[0, 0].numpy()


def label_scores(reference: np.ndarray, propagated: np.ndarray, spacing) -> dict:
    from unireg.metrics import dice_per_label, surface_distances

    labels = np.unique(reference)
    labels = labels[labels > 0]
    dice = dice_per_label(reference, propagated, labels)
    hd95, missing = [], 0
    for label in labels:
        ref, pred = reference == label, propagated == label
        if pred.any():
            hd95.append(surface_distances(ref, pred, spacing)[0])
        else:
            missing += 1
    return {"dice": [dice[int(k)] for k in labels], "hd95": hd95, "labels_lost": missing}


def score_run(cases, refs, work: Path, spacing, atlas_grid, method: str) -> dict:
    """Per-case scores of one method's displacements (affine: identity)."""
    import torch

    from unireg.fields import jacobian_stats
    from unireg.io import Image
    from unireg.metrics import mean_dice
    from unireg.transforms import resample

    shape = atlas_grid.shape
    out, propagated = {}, {}
    for case in cases:
        if method == "affine":
            ddf, own = np.zeros((3, *shape), np.float32), None
        else:
            with np.load(work / "fields" / f"{case.name}.npz") as data:
                ddf, own = data["ddf"], data["warped"]
        jac = jacobian_stats(torch.from_numpy(ddf)[None])
        row = {"folding_percent": jac["folding_percent"], "log_jacobian_std": jac["log_jacobian_std"]}
        if own is not None:
            moving = load_case(work, case.name)[1]
            row["rewarp_error"] = float(np.abs(warp_image(moving, ddf) - own).mean())
        warped = warp_labels(refs[case.name]["moving_labels"], ddf)
        if case.score == "labels":
            row.update(label_scores(refs[case.name]["reference"], warped, spacing))
        elif case.score == "mask":
            row["mask_dice"] = float(mean_dice(refs[case.name]["reference"], warped))
        else:
            transform = refs[case.name].get("to_t1_grid")
            if transform is not None:
                warped = resample(Image(warped, atlas_grid.affine, is_label=True), atlas_grid, transform).data
            propagated[case.name] = warped
        out[case.name] = row
    if {"ixi002_atlas_to_T1", "ixi002_atlas_to_T2"} <= set(propagated):
        out["ixi002_atlas_to_T2"]["agreement_dice"] = float(
            mean_dice(propagated["ixi002_atlas_to_T1"], propagated["ixi002_atlas_to_T2"])
        )
    return out


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

COLUMNS = [
    "task",
    "method",
    "device",
    "pairs",
    "dice_mean",
    "dice_median",
    "dice_sd_over_pairs",
    "hd95_mean_mm",
    "hd95_median_mm",
    "labels_lost",
    "brain_mask_dice",
    "agreement_dice",
    "folding_percent",
    "log_jacobian_std",
    "seconds_per_pair",
    "peak_rss_mb",
    "peak_gpu_mb",
]


def summarise(cases, scores: dict, timing: dict, method: str, device: str) -> list[dict]:
    rows = []
    for task in TASKS:
        group = [c for c in cases if c.task == task]
        if not group:
            continue
        per = [scores[c.name] for c in group]
        secs = [timing.get("seconds", {}).get(c.name) for c in group]
        row = {
            "task": task,
            "method": method,
            "device": device,
            "pairs": len(group),
            "folding_percent": float(np.mean([p["folding_percent"] for p in per])),
            "log_jacobian_std": float(np.nanmean([p["log_jacobian_std"] for p in per])),
            "seconds_per_pair": float(np.mean(secs)) if method != "affine" else None,
            "peak_rss_mb": timing.get("peak_rss_mb"),
            "peak_gpu_mb": timing.get("peak_gpu_mb"),
        }
        if task == "ixi002":
            row["pairs"] = 1
            row["brain_mask_dice"] = scores["ixi002_T2_to_T1"].get("mask_dice")
            row["agreement_dice"] = scores.get("ixi002_atlas_to_T2", {}).get("agreement_dice")
            row["folding_percent"] = scores["ixi002_T2_to_T1"]["folding_percent"]
        else:
            dice = np.concatenate([p["dice"] for p in per])
            hd95 = np.concatenate([p["hd95"] for p in per])
            row.update(
                dice_mean=float(dice.mean()),
                dice_median=float(np.median(dice)),
                dice_sd_over_pairs=float(np.std([np.mean(p["dice"]) for p in per])),
                hd95_mean_mm=float(hd95.mean()),
                hd95_median_mm=float(np.median(hd95)),
                labels_lost=int(sum(p["labels_lost"] for p in per)),
            )
        rows.append(row)
    return rows


def fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def describe_io(total: int, **options) -> str:
    from unireg.register import InstanceOptOptions

    opt = InstanceOptOptions.schedule(total, **options)
    return (
        f"{opt.coarse_steps} steps at the flow grid + {opt.steps} at the image grid, {opt.similarity.upper()}, "
        f"diffusion weight {opt.weight}, Adam lr {opt.learning_rate}, integrate {opt.integrate!r}"
    )


def method_label(method: str, device: str, steps: int) -> str:
    label = METHODS[method].replace("IO", f"{steps} IO steps")
    return label + (" (GPU)" if device == "cuda" else "")


def markdown(rows: list[dict], header: list[str], notes: list[str], steps: int) -> str:
    lines = ["# Peer benchmark: UniReg vs ANTs SyN vs elastix B-spline vs affine only", ""]
    lines += [f"- {h}" for h in header] + [""]
    label_rows = [r for r in rows if r["task"] != "ixi002"]
    if label_rows:
        lines += [
            "## Atlas -> subject, scored with the subject's own DLMUSE labels",
            "",
            "Dice and HD95 over all labels x pairs (mean, median); sd of the per-pair mean Dice; "
            "% det J <= 0 over the whole grid; seconds per pair and peak RSS of the method's process.",
            "",
            "| task | method | pairs | Dice mean | Dice median | Dice sd (pairs) | HD95 mean mm | "
            "HD95 median mm | % det J <= 0 | s / pair | peak RSS MB | peak GPU MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in label_rows:
            lines.append(
                f"| {TASK_TITLES[r['task']]} | {method_label(r['method'], r['device'], steps)} | {r['pairs']} | "
                f"{fmt(r['dice_mean'])} | {fmt(r['dice_median'])} | {fmt(r['dice_sd_over_pairs'])} | "
                f"{fmt(r['hd95_mean_mm'], 2)} | {fmt(r['hd95_median_mm'], 2)} | "
                f"{fmt(r['folding_percent'], 4)} | {fmt(r['seconds_per_pair'], 1)} | "
                f"{fmt(r['peak_rss_mb'], 0)} | {fmt(r['peak_gpu_mb'], 0)} |"
            )
        lines.append("")
    real = [r for r in rows if r["task"] == "ixi002"]
    if real:
        lines += [
            "## Real cross-modal pair: IXI002 T2 and T1 (same subject)",
            "",
            "Brain-mask Dice: T2 (moving) -> T1 (fixed), warped HD-BET T2 mask vs T1 mask. Agreement: mean "
            "label Dice between the atlas labels propagated to the T1 (T1 -> T1) and to the T2 (T1 -> T2, "
            "cross-modal) after mapping the latter onto the T1 grid. % det J <= 0 of the T2 -> T1 field; "
            "seconds: mean of the three registrations.",
            "",
            "| method | brain-mask Dice T2 -> T1 | agreement Dice (atlas->T2 vs atlas->T1) | % det J <= 0 | "
            "s / pair | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        for r in real:
            lines.append(
                f"| {method_label(r['method'], r['device'], steps)} | {fmt(r['brain_mask_dice'])} | "
                f"{fmt(r['agreement_dice'])} | {fmt(r['folding_percent'], 4)} | "
                f"{fmt(r['seconds_per_pair'], 1)} | {fmt(r['peak_rss_mb'], 0)} |"
            )
        lines.append("")
    lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {cores} cores, {mem:.0f} GB RAM, {platform.system()} {platform.release()}"


def provenance(started, command: str, details: str) -> list[str]:
    """The date, machine (+ ``details``), commit and command lines every benchmark table starts with."""
    return [
        f"date: {started.strftime('%Y-%m-%d %H:%M %Z')}",
        f"machine: {machine()}; {details}",
        f"git commit: {git_commit()}",
        f"command: `{command}`",
    ]


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        return head + (" (working tree has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("torch", "monai", "antspyx", "itk-elastix"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=2,
        help="fixed subjects (validation subjects after the atlas; "
        "9 exist); every task uses the same ones (default 2, to fit 30 min on 2 shared cores)",
    )
    parser.add_argument(
        "--grid-mm",
        type=float,
        default=2.0,
        help="atlas grid spacing; the default model was trained at 2 mm (default 2)",
    )
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    parser.add_argument(
        "--instance-opt",
        type=int,
        default=INSTANCE_OPT_STEPS,
        help=f"UniReg + IO: test-time steps (default {INSTANCE_OPT_STEPS}, the shipped default)",
    )
    parser.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=MIRROR,
        help=f"UniReg: test-time mirroring, as unireg register --mirror (default {'on' if MIRROR else 'off'})",
    )
    parser.add_argument("--ants-iterations", default=ANTS_ITERATIONS, help="SyN iterations at shrink 4,2,1")
    parser.add_argument(
        "--elastix-iterations", type=int, default=None, help="override elastix's 256 iterations per resolution"
    )
    parser.add_argument("--threads", type=int, default=2, help="threads of every method (default 2)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="peers", help="stem of the table files in --out (default peers)")
    parser.add_argument(
        "--model", type=Path, default=None, help="UniReg checkpoint to score (default: the packaged default model)"
    )
    parser.add_argument("--cache", type=Path, default=None, help="preprocessing cache (default $UNIREG_HOME/peers)")
    parser.add_argument("--smoke", action="store_true", help=f"quick check: {SMOKE}")
    parser.add_argument("--_worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.grid_mm, args.pairs, args.tasks = SMOKE["grid_mm"], SMOKE["pairs"], SMOKE["tasks"]
        args.instance_opt = SMOKE["instance_opt"]
        args.ants_iterations, args.elastix_iterations = SMOKE["ants_iterations"], SMOKE["elastix_iterations"]
    args.methods = [m for m in args.methods.split(",") if m]
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.model = checkpoint_arg(parser, args.model)
    for given, allowed, what in ((args.methods, METHODS, "method"), (args.tasks, TASKS, "task")):
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            parser.error(f"unknown {what} {unknown}; choose from {', '.join(allowed)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._worker:
        worker_main(args._worker[0], args._worker[1], Path(args._worker[2]))
        return
    started, t_start = datetime.datetime.now().astimezone(), time.perf_counter()
    missing = [str(p) for p in (IXI, IXI002) if not p.is_dir()]
    if missing:
        raise SystemExit(f"peers: real data not found: {', '.join(missing)} (../shared/data is absent)")
    require_peer_modules(args.methods, "peers")
    import torch

    from unireg.atlas import builtin_atlas
    from unireg.defaults import TISSUE_ATLAS

    atlas = builtin_atlas(TISSUE_ATLAS, args.grid_mm)
    cache = cache_dir(args.cache, "peers", args.grid_mm)
    train_ids, val_ids = model_split(args.model)
    if not 1 <= args.pairs <= len(val_ids) - 1:
        raise SystemExit(f"peers: --pairs must be 1..{len(val_ids) - 1}")
    cases, arrays, refs, atlas_id, targets = preprocess_all(args, atlas, val_ids, cache)
    assert not ({atlas_id, *targets} & set(train_ids))
    t_prep = time.perf_counter() - t_start

    runs = [(m, "cpu") for m in args.methods]
    gpu = torch.cuda.is_available()
    if gpu:
        runs += [(m, "cuda") for m in args.methods if m.startswith("unireg")]
    spacing = atlas.grid.spacing
    rows, pair_rows = [], []
    with tempfile.TemporaryDirectory(prefix="unireg_peers_") as tmp:
        work = Path(tmp)
        (work / "cases").mkdir()
        (work / "fields").mkdir()
        for case in cases:
            fixed, moving = arrays[case.name]
            np.savez(work / "cases" / f"{case.name}.npz", fixed=fixed, moving=moving)
        settings = {
            "cases": [vars(c) for c in cases],
            "spacing": float(spacing[0]),
            "threads": args.threads,
            "grid_affine": atlas.grid.affine.tolist(),
            "instance_opt": args.instance_opt,
            "model": args.model and str(args.model),
            "mirror": args.mirror,
            "ants_iterations": args.ants_iterations,
            "elastix_iterations": args.elastix_iterations,
        }
        (work / "settings.json").write_text(json.dumps(settings))
        for method, device in runs:
            t0 = time.perf_counter()
            log(f"{method} ({device}): {len(cases)} registrations")
            timing = {} if method == "affine" else run_worker(method, device, work, args.threads)
            scores = score_run(cases, refs, work, spacing, atlas.grid, method)
            for f in (work / "fields").iterdir():
                f.unlink()
            rows += summarise(cases, scores, timing, method, device)
            for case in cases:
                s = scores[case.name]
                pair_rows.append(
                    {
                        "case": case.name,
                        "task": case.task,
                        "fixed": case.fixed,
                        "moving": case.moving,
                        "method": method,
                        "device": device,
                        "dice_mean": float(np.mean(s["dice"])) if "dice" in s else None,
                        "hd95_mean_mm": float(np.mean(s["hd95"])) if s.get("hd95") else None,
                        "brain_mask_dice": s.get("mask_dice"),
                        "agreement_dice": s.get("agreement_dice"),
                        "folding_percent": s["folding_percent"],
                        "seconds": timing.get("seconds", {}).get(case.name),
                        "rewarp_error": s.get("rewarp_error"),
                    }
                )
            log(f"{method} ({device}) done in {time.perf_counter() - t0:.0f} s")

    wall = time.perf_counter() - t_start
    command = command_line(argv)
    grid = "x".join(str(s) for s in atlas.grid.shape)
    header = [
        *provenance(
            started,
            command,
            f"GPU: {torch.cuda.get_device_name(0) if gpu else 'none (no GPU rows)'}; threads per method: "
            f"{args.threads}; {versions()}",
        ),
        f"wall time: {wall / 60:.1f} min ({t_prep:.0f} s preprocessing, cached in {cache})",
        f"grid: MNI 2009a atlas grid {grid} at {args.grid_mm:g} mm"
        + (
            " (the default model's training grid)"
            if args.grid_mm == 2
            else " (NOT the 2 mm grid the default model was trained on)"
        )
        + ("; SMOKE settings" if args.smoke else ""),
        f"pairs: atlas {atlas_id} -> {len(targets)} of the {len(val_ids) - 1} other validation subjects of the "
        f"packaged model ({', '.join(targets)})"
        + (
            "; fewer pairs than available, to fit the 30 min budget on 2 cores"
            if len(targets) < len(val_ids) - 1
            else ""
        ),
    ]
    notes = [
        "Every method registers the same preprocessed arrays (unireg preprocess: deepbet, percentile "
        "normalisation, MI affine to MNI 2009a, atlas grid); affine only = those arrays unchanged.",
        f"UniReg: {model_name(args.model)}, "
        + ("test-time mirroring (left-right, unireg register's default)" if args.mirror else "no test-time mirroring")
        + f"; + IO: {args.instance_opt} steps of the shipped "
        f"InstanceOptOptions.schedule ({describe_io(args.instance_opt)}), the same for every contrast; chosen on "
        "training pairs with benchmarks/io_tuning.py (benchmarks/results/io_tuning.md), never on these pairs.",
        f"ANTs SyN (antspyx SyNOnly from the identity): SyN[0.2,3,0], iterations {args.ants_iterations} at shrink "
        f"4x2x1, smoothing 2x1x0 vox; CC radius {ANTS_CC_RADIUS} vox for T1 -> T1 and atlas -> IXI002 T1, Mattes MI "
        f"{ANTS_MI_BINS} bins for every cross-modal pair.",
        "elastix B-spline (itk-elastix): default 'bspline' parameter map (4 resolutions, "
        f"{args.elastix_iterations or 256} iterations, final grid spacing 10 mm, AdvancedMattesMutualInformation + "
        "bending energy weight 1, 2048 random samples) for every pair.",
        "Synthetic contrasts (fixed image only; atlas stays T1): piecewise-linear remap of the preprocessed T1 "
        "through (0, CSF, GM, WM means of a 3-class k-means in the brain, 1), then unireg's percentile "
        "normalisation: "
        + "; ".join(f"{k.upper()}-like {v['points']} = {v['what']}" for k, v in CONTRASTS.items() if k in args.tasks)
        + ".",
        "Scoring: each method's displacement warps the atlas labels with unireg's nearest-neighbour "
        "unireg.fields.warp; Dice over every label of the fixed reference (a lost label counts 0), HD95 (MONAI, "
        "unireg.metrics) over labels present in both; det J from unireg.fields.jacobian_stats on the same field.",
        "IXI002: HD-BET images preprocessed without brain extraction; its T1 -> T2 agreement assumes the two scans "
        "share scanner space (their HD-BET masks overlap at Dice 0.976 unregistered), so it includes that residual.",
        "Agreement is consistency, not accuracy: affine only scores high by construction (the same undeformed "
        "atlas labels, moved only by the two preprocessing affines); among deforming methods, higher means the "
        "cross-modal result reproduces that method's own T1 result more closely.",
        "Seconds: the registration call only (ANTs/elastix field export and UniReg's first warm-up call excluded); "
        "peak RSS: the method's own process (UniReg includes torch). The machine is shared with other jobs, so "
        "times are upper bounds.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, header, notes, args.instance_opt)
    (args.out / f"{args.name}.md").write_text(text)
    write_csv(args.out / f"{args.name}.csv", rows, COLUMNS, header)
    write_csv(args.out / f"{args.name}.pairs.csv", pair_rows, list(pair_rows[0]), header)
    print(text)


def require_peer_modules(methods, script: str) -> None:
    """Exit with one line naming the module a requested peer method needs when it is not installed."""
    for method, module in (("ants", "ants"), ("elastix", "itk")):
        if method in methods:
            try:
                __import__(module)
            except ImportError:
                raise SystemExit(
                    f"{script}: method {method} needs the '{module}' module: "
                    ".venv/bin/pip install -r benchmarks/requirements.txt"
                ) from None


def cache_dir(given: Path | None, name: str, grid_mm: float) -> Path:
    """``<given or $UNIREG_HOME/<name>>/<grid>mm``: a benchmark's cache for one grid spacing."""
    home = Path(os.environ.get("UNIREG_HOME", Path.home() / ".cache" / "unireg"))
    return (given or home / name) / f"{grid_mm:g}mm"


def command_line(argv, script: str = "benchmarks/peers.py") -> str:
    """How this run of ``script`` was started, as one would type it from the repository root."""
    python = Path(sys.executable)
    python = str(python.relative_to(REPO)) if python.is_relative_to(REPO) else python.name
    niceness = os.nice(0)
    words = ([f"nice -n {niceness}"] if niceness else []) + [python, script]
    return " ".join(words + list(sys.argv[1:] if argv is None else argv))


def write_csv(path: Path, rows: list[dict], columns: list[str], header: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        for line in header:
            fh.write(f"# {line}\n")
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: ("" if row.get(k) is None else f"{row[k]:.6g}" if isinstance(row.get(k), float) else row[k])
                    for k in columns
                }
            )


if __name__ == "__main__":
    main()
