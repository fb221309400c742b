"""1 mm inter-subject registration on real brains with manual labels: UniReg vs ANTs SyN vs elastix vs affine.

Run (writes benchmarks/results/mindboggle.{md,csv} and mindboggle.pairs.csv, prints the markdown;
``--pair-set tune`` and ``--io-option`` add ``_tune`` / ``.KEY-VALUE`` to the names):

    nice -n 10 .venv/bin/python benchmarks/mindboggle.py                          # PAIRS_DEFAULT pairs, 1 mm
    nice -n 10 .venv/bin/python benchmarks/mindboggle.py --pair-set tune --methods unireg_io --io-option weight=0.1
    nice -n 10 .venv/bin/python benchmarks/mindboggle.py --pairs 90 --methods affine,unireg,unireg_io
    .venv/bin/python benchmarks/mindboggle.py --smoke --out /tmp/mb                # 4 mm, 1 pair: a test

Needs ../shared/data/mindboggle_oasis_trt20 (or $UNIREG_SHARED_DATA; CC BY-NC-SA 3.0: read here, never
committed) and, for the peers, ``pip install -r benchmarks/requirements.txt``.

**Data.** The 10 OASIS-TRT-20 subjects of Mindboggle-101: skull-stripped 1 mm T1 in native space
with "DKT31 manual + FreeSurfer aseg" labels. Scored labels: the ids present in all 10 label maps
(98: 62 manually edited DKT31 cortical regions, ids 1000-2999, plus subcortical and cerebellar
structures), and the cortical ones alone.

**Pairs** (``--pairs N``: the first N of :func:`pair_order`): ordered (moving -> fixed) pairs in an
order that spreads a subset over the subjects: the first 10 are a ring (each subject once fixed and
once moving, the next subject moving onto it), the next 10 the ring with offset 2, and so on up to
all 90 ordered pairs. Every method registers the same pairs.

**Inputs, identical for every method** (as in :mod:`peers`): each subject goes through
:mod:`unireg.preprocess` once (no brain extraction: the images are skull-stripped, as in
benchmarks/allen_mindboggle.py; percentile normalisation; MI affine to the MNI 2009a template;
resampling onto its 1 mm grid, 160x192x160), its labels follow the same affine (nearest
neighbour). Each method registers the moving subject's preprocessed array onto the fixed one's
and returns a displacement on that grid. Affine only = the identity there (both subjects affinely
aligned to MNI: the Learn2Reg/LUMIR setting).

**Methods.** ``affine``; ``unireg`` (packaged default model alone); ``unireg_io`` (the shipped
default: what ``unireg register`` does on a 1 mm grid, the network on the images pooled to its 2 mm
training spacing, then :data:`unireg.defaults.INSTANCE_OPT_STEPS` instance-optimisation steps at 1
mm); ``ants``: antspyx ``SyNOnly`` with antsRegistrationSyN.sh's deformable stage: SyN[0.1, 3, 0],
CC radius 4 (4 mm), iterations 100x70x50x20 at shrink 8x4x2x1, smoothing 3x2x1x0 voxels (full-
resolution iterations included; the schedule LUMIR's ANTs baseline used); ``elastix``: itk-elastix's
default ``bspline`` map (4 resolutions, 256 iterations, 10 mm final control-point spacing, Mattes MI).
Each runs in its own subprocess (``peers.run_worker``) with ``--threads`` threads.

**Scoring** (one code path, :func:`peers.score_run`): every displacement warps the moving labels
with ``unireg.fields.warp`` (nearest neighbour, as Learn2Reg scores); Dice per label of the fixed
subject's labels (a lost label counts 0), HD95 (labels present in both), % det J <= 0 over the
whole grid.

**Cache.** Preprocessed subjects and every method's fields (with their seconds and peak memory)
are kept under ``<cache>/<grid>mm/``, keyed by the settings that made them: a rerun, or a run with
more pairs, only registers what is missing. ANTs at 1 mm costs many minutes per pair.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import peers  # noqa: E402  (the shared workers, scoring and report helpers)

from unireg.defaults import INSTANCE_OPT_STEPS, MIRROR  # noqa: E402  (pure Python)

SHARED = Path(os.environ.get("UNIREG_SHARED_DATA", REPO.parent / "shared" / "data"))
DATA = SHARED / "mindboggle_oasis_trt20"
SUBJECTS = tuple(f"OASIS-TRT-20-{n:02d}" for n in range(1, 20, 2))
METHODS = ("affine", "unireg", "unireg_io", "ants", "elastix")
PAIRS_DEFAULT = 5  # the first 5 pairs of pair_order(): subjects 01-11 only
TUNE_SUBJECTS = SUBJECTS[-4:]  # 13, 15, 17, 19: --pair-set tune (settings are tuned on their 12 ordered pairs)
CORTICAL = (1000, 3000)  # DKT31 cortical ids (FreeSurfer: 1000s left, 2000s right)
# antsRegistrationSyN.sh's SyN stage (-t s): SyN[0.1,3,0], CC[f,m,1,4], 100x70x50x20, 8x4x2x1, 3x2x1x0vox;
# antspyx SyNOnly derives shrink 2^k and smoothing k from the number of levels
ANTS = {"ants_iterations": "100,70,50,20", "ants_cc_radius": 4, "ants_grad_step": 0.1}
SMOKE = {"grid_mm": 4.0, "pairs": 1, "instance_opt": 5, "ants_iterations": "20,10", "elastix_iterations": 32}


def log(message: str) -> None:
    print(f"[mindboggle {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pair_order(subjects=SUBJECTS) -> list[tuple[str, str]]:
    """All ordered (moving, fixed) pairs: rings of increasing offset (see the module docstring)."""
    n = len(subjects)
    return [(subjects[(k + offset) % n], subjects[k]) for offset in range(1, n) for k in range(n)]


def pair_set(name: str) -> list[tuple[str, str]]:
    """``eval``: :func:`pair_order` of all subjects; ``tune``: that of :data:`TUNE_SUBJECTS` alone."""
    return pair_order() if name == "eval" else pair_order(TUNE_SUBJECTS)


def parse_io_options(items: list[str]) -> dict:
    """``KEY=VALUE`` words -> keyword arguments of :class:`unireg.register.InstanceOptOptions`."""
    from dataclasses import fields

    from unireg.register import InstanceOptOptions

    types = {f.name: type(getattr(InstanceOptOptions(), f.name)) for f in fields(InstanceOptOptions)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in types or key in ("steps", "coarse_steps") or not value:
            raise SystemExit(f"mindboggle: --io-option {item!r}: use KEY=VALUE, KEY one of {sorted(types)} but steps")
        out[key] = types[key](value)
    return out


def common_labels(cache: Path) -> np.ndarray:
    """The label ids (> 0) present in every subject's native label map (cached in ``cache``)."""
    path = cache / "common_labels.json"
    if path.is_file():
        return np.array(json.loads(path.read_text()), dtype=np.int64)
    import nibabel as nib

    common = None
    for sid in SUBJECTS:
        ids = np.unique(np.asarray(nib.load(DATA / "labels" / f"{sid}_labels.nii.gz").dataobj).astype(np.int64))
        common = set(ids[ids > 0]) if common is None else common & set(ids)
    ids = sorted(int(i) for i in common)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ids))
    return np.array(ids, dtype=np.int64)


def preprocess_subjects(subjects, atlas, cache: Path) -> dict[str, dict]:
    """Each subject on the atlas grid (cached): ``image`` (float32) and ``labels`` (int32)."""
    from unireg.defaults import AFFINE_SIMILARITY
    from unireg.preprocess import PreprocessOptions
    from unireg.train import prepare_subject

    options = PreprocessOptions(brain_extraction=False, similarity=AFFINE_SIMILARITY)
    out = {}
    for sid in subjects:
        t0 = time.perf_counter()
        item = {
            "id": sid,
            "image": str(DATA / "t1" / f"{sid}_brain.nii.gz"),
            "labels": str(DATA / "labels" / f"{sid}_labels.nii.gz"),
        }
        out[sid] = prepare_subject(item, atlas, cache / "subjects", options)
        log(f"preprocessed {sid} ({time.perf_counter() - t0:.0f} s)")
    return out


def worker_settings(args, atlas) -> dict:
    """What peers' method workers read (and :func:`method_key` digests) for these arguments."""
    return {
        "spacing": float(atlas.grid.spacing[0]),
        "threads": args.threads,
        "grid_affine": atlas.grid.affine.tolist(),
        "instance_opt": args.instance_opt,
        "instance_opt_options": args.io_options,
        "elastix_iterations": args.elastix_iterations,
        **ANTS,
        "ants_iterations": args.ants_iterations,
        "model": str(args.model) if getattr(args, "model", None) else None,  # None: the packaged default
        "mirror": MIRROR,  # unireg register's test-time mirroring
    }


def method_key(method: str, settings: dict) -> str:
    """The cache folder of one method's fields: its name + a digest of what changes them."""
    from unireg.model import DEFAULT_MODEL
    from unireg.weights import sha256_file

    keys = {
        "unireg": ("threads", "mirror"),
        "unireg_io": ("threads", "instance_opt", "instance_opt_options", "mirror"),
        "ants": ("threads", "ants_iterations", "ants_cc_radius", "ants_grad_step"),
        "elastix": ("threads", "elastix_iterations"),
    }[method]
    what = {k: settings[k] for k in keys} | {"grid_affine": settings["grid_affine"]}
    if method.startswith("unireg"):
        what["model_sha256"] = sha256_file(settings.get("model") or DEFAULT_MODEL)
    return f"{method}_{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]}"


def run_method(method: str, cases, arrays, settings: dict, folder: Path, threads: int) -> dict:
    """Register the cases missing from ``folder`` (one worker per pair; UniReg: one worker for all,
    after its untimed warm-up) and cache their fields; return {case: {seconds, peak_rss_mb}}."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = [c for c in cases if not (folder / f"{c.name}.json").is_file()]
    batches = [missing] if method.startswith("unireg") and missing else [[c] for c in missing]
    for batch in batches:
        log(f"{method}: registering {', '.join(c.name for c in batch)}")
        with tempfile.TemporaryDirectory(prefix="unireg_mindboggle_") as tmp:
            work = Path(tmp)
            (work / "cases").mkdir()
            (work / "fields").mkdir()
            for case in batch:
                fixed, moving = arrays[case.name]
                np.savez(work / "cases" / f"{case.name}.npz", fixed=fixed, moving=moving)
            (work / "settings.json").write_text(json.dumps({**settings, "cases": [vars(c) for c in batch]}))
            timing = peers.run_worker(method, "cpu", work, threads)
            for case in batch:
                shutil.move(work / "fields" / f"{case.name}.npz", folder / f"{case.name}.npz")
                record = {
                    "seconds": timing["seconds"][case.name],
                    "cpu_seconds": timing.get("cpu_seconds", {}).get(case.name),
                    "peak_rss_mb": timing["peak_rss_mb"],
                    "load_average": os.getloadavg()[0],
                }
                (folder / f"{case.name}.json").write_text(json.dumps(record) + "\n")  # last: the pair is done
        seconds = timing["seconds"]
        log(f"{method}: " + ", ".join(f"{c.name} {seconds[c.name]:.0f} s" for c in batch))
    return {c.name: json.loads((folder / f"{c.name}.json").read_text()) for c in cases}


def score_case(reference: np.ndarray, moving_labels: np.ndarray, ddf: np.ndarray, labels, spacing) -> dict:
    """Dice and HD95 per label id of ``labels`` present in ``reference`` (Dice 0 for a lost label, HD95 only
    where present in both) after warping ``moving_labels`` with ``ddf`` (nearest neighbour), and det J."""
    import torch

    from unireg.fields import jacobian_stats

    jac = jacobian_stats(torch.from_numpy(ddf)[None])
    return {
        **score_labels(reference, peers.warp_labels(moving_labels, ddf), labels, spacing),
        "folding_percent": jac["folding_percent"],
        "log_jacobian_std": jac["log_jacobian_std"],
    }


def score_labels(reference: np.ndarray, propagated: np.ndarray, labels, spacing) -> dict:
    """Dice per id of ``labels`` present in ``reference`` (0 where lost) and HD95 where present in both."""
    from unireg.metrics import dice_per_label, surface_distances

    present = [int(i) for i in np.intersect1d(labels, np.unique(reference))]
    dice = dice_per_label(reference, propagated, present)
    hd95 = {}
    for label in present:
        ref, pred = reference == label, propagated == label
        if pred.any():
            hd95[label] = surface_distances(ref, pred, spacing)[0]
    return {"dice": dice, "hd95": hd95}


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

COLUMNS = [
    "method",
    "pairs",
    "labels",
    "dice_mean",
    "dice_sd_over_pairs",
    "dice_cortical_mean",
    "dice_subcortical_mean",
    "hd95_mean_mm",
    "labels_lost",
    "folding_percent_mean",
    "folding_percent_max",
    "log_jacobian_std",
    "seconds_per_pair",
    "cpu_seconds_per_pair",
    "peak_rss_mb",
]
PAIR_COLUMNS = [
    "moving",
    "fixed",
    "method",
    "dice_mean",
    "dice_cortical_mean",
    "dice_subcortical_mean",
    "hd95_mean_mm",
    "labels_lost",
    "folding_percent",
    "seconds",
    "cpu_seconds",
    "load_average",
    "peak_rss_mb",
]


def pair_row(case, method: str, s: dict, timing: dict | None) -> dict:
    dice = s["dice"]
    cortical = [v for k, v in dice.items() if CORTICAL[0] <= k < CORTICAL[1]]
    other = [v for k, v in dice.items() if not CORTICAL[0] <= k < CORTICAL[1]]
    return {
        "moving": case.moving,
        "fixed": case.fixed,
        "method": method,
        "labels": len(dice),
        "dice_mean": float(np.mean(list(dice.values()))),
        "dice_cortical_mean": float(np.mean(cortical)) if cortical else None,
        "dice_subcortical_mean": float(np.mean(other)) if other else None,
        "hd95_mean_mm": float(np.mean(list(s["hd95"].values()))) if s["hd95"] else None,
        "labels_lost": len(dice) - len(s["hd95"]),
        "folding_percent": s["folding_percent"],
        "log_jacobian_std": s["log_jacobian_std"],
        "seconds": None if timing is None else timing["seconds"],
        "cpu_seconds": None if timing is None else timing.get("cpu_seconds"),
        "load_average": None if timing is None else timing.get("load_average"),
        "peak_rss_mb": None if timing is None else timing["peak_rss_mb"],
    }


def summarise(method: str, rows: list[dict]) -> dict:
    def mean(key):
        values = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "method": method,
        "pairs": len(rows),
        "labels": max(r["labels"] for r in rows),
        "dice_mean": mean("dice_mean"),
        "dice_sd_over_pairs": float(np.std([r["dice_mean"] for r in rows], ddof=1)) if len(rows) > 1 else None,
        "dice_cortical_mean": mean("dice_cortical_mean"),
        "dice_subcortical_mean": mean("dice_subcortical_mean"),
        "hd95_mean_mm": mean("hd95_mean_mm"),
        "labels_lost": sum(r["labels_lost"] for r in rows),
        "folding_percent_mean": mean("folding_percent"),
        "folding_percent_max": max(r["folding_percent"] for r in rows),
        "log_jacobian_std": mean("log_jacobian_std"),
        "seconds_per_pair": mean("seconds"),
        "cpu_seconds_per_pair": mean("cpu_seconds"),
        "peak_rss_mb": max((r["peak_rss_mb"] for r in rows if r["peak_rss_mb"] is not None), default=None),
    }


def label(method: str, steps: int) -> str:
    return {
        "affine": "affine only",
        "unireg": "UniReg network alone",
        "unireg_io": f"UniReg (network + {steps} IO steps, the default schedule)",
        "ants": "ANTs SyN (CC, antsRegistrationSyN schedule)",
        "elastix": "elastix B-spline",
    }[method]


def markdown(header: list[str], summary: list[dict], notes: list[str], steps: int, labels: np.ndarray) -> str:
    fmt = peers.fmt
    cortical = int(np.sum((labels >= CORTICAL[0]) & (labels < CORTICAL[1])))
    lines = ["# Mindboggle OASIS-TRT-20: 1 mm inter-subject registration scored with manual labels", ""]
    lines += [f"- {h}" for h in header] + [""]
    lines += [
        f"Mean over pairs of each pair's mean Dice over the {len(labels)} labels common to all 10 subjects "
        f"({cortical} DKT31 cortical, {len(labels) - cortical} subcortical/cerebellar); HD95 over labels present "
        "in both; % det J <= 0 over the whole grid.",
        "",
        "| method | pairs | Dice all | sd over pairs | Dice DKT31 cortical | Dice non-cortical | HD95 mm | "
        "lost labels | % det J <= 0 (mean / max) | s / pair | CPU s / pair | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {label(r['method'], steps)} | {r['pairs']} | {fmt(r['dice_mean'])} | {fmt(r['dice_sd_over_pairs'])} | "
            f"{fmt(r['dice_cortical_mean'])} | {fmt(r['dice_subcortical_mean'])} | {fmt(r['hd95_mean_mm'], 2)} | "
            f"{r['labels_lost']} | {fmt(r['folding_percent_mean'], 4)} / {fmt(r['folding_percent_max'], 4)} | "
            f"{fmt(r['seconds_per_pair'], 1)} | {fmt(r['cpu_seconds_per_pair'], 0)} | {fmt(r['peak_rss_mb'], 0)} |"
        )
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pairs", type=int, default=PAIRS_DEFAULT, help=f"the first N of the 90 ordered pairs ({PAIRS_DEFAULT})"
    )
    parser.add_argument("--grid-mm", type=float, default=1.0, help="atlas grid spacing (default 1)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--instance-opt", type=int, default=INSTANCE_OPT_STEPS, help="UniReg + IO: steps")
    parser.add_argument(
        "--io-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="UniReg + IO: another InstanceOptOptions value (e.g. weight=0.1), for tuning; repeatable",
    )
    parser.add_argument(
        "--pair-set",
        choices=("eval", "tune"),
        default="eval",
        help="eval: pairs among all 10 subjects (default); tune: the 12 ordered pairs among "
        f"{', '.join(s[-2:] for s in TUNE_SUBJECTS)} (for choosing settings)",
    )
    parser.add_argument("--ants-iterations", default=ANTS["ants_iterations"], help="SyN iterations, coarse to fine")
    parser.add_argument("--elastix-iterations", type=int, default=None, help="override elastix's 256 iterations")
    parser.add_argument("--threads", type=int, default=2, help="threads of every method (default 2)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", help="file name stem of the tables (default mindboggle, or mindboggle_tune)")
    parser.add_argument("--cache", type=Path, default=None, help="cache (default $UNIREG_HOME/mindboggle)")
    parser.add_argument("--smoke", action="store_true", help=f"quick check: {SMOKE}")
    parser.add_argument(
        "--model", type=Path, default=None, help="UniReg checkpoint to score (default: the packaged default model)"
    )
    args = parser.parse_args(argv)
    args.model = peers.checkpoint_arg(parser, args.model)
    if args.smoke:
        args.grid_mm, args.pairs, args.instance_opt = SMOKE["grid_mm"], SMOKE["pairs"], SMOKE["instance_opt"]
        args.ants_iterations, args.elastix_iterations = SMOKE["ants_iterations"], SMOKE["elastix_iterations"]
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method {unknown}; choose from {', '.join(METHODS)}")
    if not 1 <= args.pairs <= len(pair_set(args.pair_set)):
        parser.error(f"--pairs must be 1..{len(pair_set(args.pair_set))} for --pair-set {args.pair_set}")
    args.io_options = parse_io_options(args.io_option)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    started, t_start = datetime.datetime.now().astimezone(), time.perf_counter()
    if not DATA.is_dir():
        raise SystemExit(f"mindboggle: data not found: {DATA} (../shared/data is absent)")
    peers.require_peer_modules(args.methods, "mindboggle")
    from unireg.atlas import builtin_atlas
    from unireg.defaults import TISSUE_ATLAS

    atlas = builtin_atlas(TISSUE_ATLAS, args.grid_mm)
    cache = peers.cache_dir(args.cache, "mindboggle", args.grid_mm)
    labels = common_labels(cache)
    pairs = pair_set(args.pair_set)[: args.pairs]
    subjects = preprocess_subjects(sorted({s for p in pairs for s in p}), atlas, cache)
    t_prep = time.perf_counter() - t_start

    cases, arrays = [], {}
    for moving, fixed in pairs:
        case = peers.Case(f"{moving}_to_{fixed}", "mindboggle", "mono", fixed, moving, "labels")
        cases.append(case)
        arrays[case.name] = (subjects[fixed]["image"].astype(np.float32), subjects[moving]["image"].astype(np.float32))
    settings = worker_settings(args, atlas)
    summary, pair_rows = [], []
    for method in args.methods:
        t0 = time.perf_counter()
        folder = None if method == "affine" else cache / "fields" / method_key(method, settings)
        timing = {} if folder is None else run_method(method, cases, arrays, settings, folder, args.threads)
        rows = []
        for case in cases:
            if folder is None:
                ddf = np.zeros((3, *atlas.grid.shape), np.float32)
            else:
                with np.load(folder / f"{case.name}.npz") as data:
                    ddf = data["ddf"]
            s = score_case(
                subjects[case.fixed]["labels"], subjects[case.moving]["labels"], ddf, labels, atlas.grid.spacing
            )
            rows.append(pair_row(case, method, s, timing.get(case.name)))
        summary.append(summarise(method, rows))
        pair_rows += rows
        log(f"{method}: mean Dice {summary[-1]['dice_mean']:.3f} ({time.perf_counter() - t0:.0f} s)")

    grid = "x".join(str(s) for s in atlas.grid.shape)
    tuned = sum(1 for pair in pairs if set(pair) & set(TUNE_SUBJECTS))
    header = [
        *peers.provenance(
            started,
            peers.command_line(argv, "benchmarks/mindboggle.py"),
            f"threads per method: {args.threads}; {peers.versions()}; load average at the end "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        ),
        f"wall time: {(time.perf_counter() - t_start) / 60:.1f} min ({t_prep:.0f} s preprocessing; fields cached in "
        f"{cache}, so seconds per pair are those of the run that registered each pair)",
        f"grid: MNI 2009a template grid {grid} at {args.grid_mm:g} mm" + ("; SMOKE settings" if args.smoke else ""),
        f"pairs (moving -> fixed, OASIS-TRT-20-NN; --pair-set {args.pair_set}: the first {len(pairs)} of its "
        f"{len(pair_set(args.pair_set))} ordered pairs): "
        + ", ".join(f"{m[-2:]} -> {f[-2:]}" for m, f in pairs)
        + (
            f" (--pair-set tune, for choosing settings, is the pairs among {', '.join(s[-2:] for s in TUNE_SUBJECTS)}; "
            f"{tuned} of these pairs involve one of them)"
        ),
    ]
    notes = [
        "Every method registers the same preprocessed arrays (unireg preprocess without brain extraction: the "
        "images are skull-stripped; percentile normalisation; MI affine to MNI 2009a; the template grid); "
        "affine only = those arrays unchanged.",
        f"UniReg: {peers.model_name(args.model)} (trained at 2 mm on IXI T1; never on these subjects); the "
        f"network predicts on the images pooled to 2 mm (`unireg register`'s default --network-grid model), "
        f"then {args.instance_opt} steps of InstanceOptOptions.schedule ("
        + peers.describe_io(args.instance_opt, **args.io_options)
        + (") on the template grid: the shipped default." if not args.io_options else ") on the template grid."),
        f"ANTs SyN (antspyx SyNOnly from the identity): SyN[{ANTS['ants_grad_step']},3,0], CC radius "
        f"{ANTS['ants_cc_radius']} vox, iterations {args.ants_iterations} (shrink 2^k, smoothing k vox: 8x4x2x1 and "
        "3x2x1x0 for 4 levels), as antsRegistrationSyN.sh's deformable stage.",
        f"elastix B-spline (itk-elastix): default 'bspline' map, {args.elastix_iterations or 256} iterations per "
        "resolution.",
        "Scoring: each displacement warps the moving subject's labels with unireg.fields.warp (nearest "
        "neighbour); Dice per label over the labels common to all 10 subjects present in the fixed subject "
        "(lost = 0 Dice), HD95 (MONAI, unireg.metrics) over labels present in both; det J from "
        "unireg.fields.jacobian_stats on the same field.",
        "Seconds: the registration call only (UniReg after an untimed warm-up; ANTs/elastix without field export), "
        f"{args.threads} threads each; CPU seconds: the worker's process time over the same call (all its threads; "
        "barely affected by other jobs on the machine, unlike wall seconds: mindboggle.pairs.csv has the load average "
        "when each pair finished); peak RSS: the method's own worker process.",
        "Data: Mindboggle-101 OASIS-TRT-20 (Klein & Tourville 2012), CC BY-NC-SA 3.0, read from ../shared/data.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(header, summary, notes, args.instance_opt, labels)
    stem = args.name or "mindboggle" + ("" if args.pair_set == "eval" else "_tune")
    stem += "".join(f".{k}-{v}" for k, v in sorted(args.io_options.items()))
    (args.out / f"{stem}.md").write_text(text)
    peers.write_csv(args.out / f"{stem}.csv", summary, COLUMNS, header)
    peers.write_csv(args.out / f"{stem}.pairs.csv", pair_rows, PAIR_COLUMNS, header)
    print(text)


if __name__ == "__main__":
    main()
