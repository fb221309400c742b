"""Multi-atlas segmentation, leave-one-out: K registered atlases fused, on the 10 Mindboggle brains at
1 mm (manual labels) or on the 10 IXI validation subjects at 2 mm (148 DLMUSE labels).

Run (writes benchmarks/results/multi_atlas.{md,csv} and multi_atlas.targets.csv, or multi_atlas_ixi.*
with ``--dataset ixi``, and prints the markdown):

    nice -n 10 .venv/bin/python benchmarks/multi_atlas.py                         # 3 targets, K = 1,3,5,9
    nice -n 10 .venv/bin/python benchmarks/multi_atlas.py --targets 10 --k 1,3,5,9 --methods unireg_io,ants
    .venv/bin/python benchmarks/multi_atlas.py --dataset ixi --targets 10 --ants-targets 2 --ants-k 9
    .venv/bin/python benchmarks/multi_atlas.py --grid-mm 2 --targets 2 --ants-k 9   # Mindboggle, 2 mm: *_2mm.*
    .venv/bin/python benchmarks/multi_atlas.py --smoke --out /tmp/ma                # 4 mm, 1 target, K = 1,2

**IXI** (``--dataset ixi``): the 10 validation subjects of the packaged model's split
(:func:`peers.model_split`; never trained or tuned on), preprocessed as in benchmarks/peers.py (its
cache), on the 2 mm grid the model was trained on, in the same ring order; ANTs SyN with the
peers.py schedule (CC radius 2 at 2 mm, 100,70,20 at shrink 4,2,1). Scored over the labels present
in every one of the 10 subjects; no cortical column (DLMUSE is not DKT31).

Shares everything but the fusion with benchmarks/mindboggle.py (its data, preprocessing, method
workers, field cache and scoring): a pair registered by either script is reused by both.

**Design.** Each target subject (``--targets N``: the first N of the 10) is segmented with the
other subjects as atlases, in the ring order of :func:`mindboggle.pair_order` (atlas at offset 1, 2,
..., 9: K = 1 is exactly mindboggle.py's pair onto that target). Each atlas (moving) is registered
onto the target (fixed) on the 1 mm MNI template grid; its labels are warped with nearest
neighbour and its image linearly; the K warped label maps are fused with :mod:`unireg.fusion`
(``majority``, ``weighted``, ``jlf``, default parameters: jlf's radii are set in mm, so 1 and 2 voxels
at 2 mm) and scored against the target's own
manual labels (Dice over the 98 labels common to all subjects; HD95 where present in both).

**Methods.** ``unireg_io``: the shipped default (network + instance optimisation) for every
registration, fused by unireg.fusion. ``ants``: ANTs SyN (mindboggle.py's antsRegistrationSyN
schedule at 1 mm; with ``--grid-mm 2`` the 2 mm schedule of IXI, so that K = 9 SyN + JLF fits in
minutes per target, not hours) for every registration; K = 1 is the single-atlas SyN row, K > 1 is fused with antspyx
``joint_label_fusion`` (antsJointFusion: beta 2, patch radius 2, search radius 3, alpha 0.1; others
with ``--ants-jlf-option KEY=VALUE``, e.g. ``rad=1 r_search=2`` for the same mm at 2 mm) on the same
warped atlases. ANTs rows only exist for the (target, K) whose K SyN registrations are in the
cache or fit ``--ants-k`` (default 1): at 1 mm each SyN pair costs many minutes on 2 cores.

**Head to head.** Where ANTs rows exist for fewer targets than UniReg's (``--ants-targets``, or the
cache holds fewer SyN fields for some targets), the summary's means are over different targets; the
second table (``multi_atlas*.paired.csv``) compares the two on exactly the targets ANTs has at
each K: ANTs SyN (+ JLF) against each UniReg fusion, and the best fusion's difference.

**Tuning** (``--dataset ixi --split train``): the same on the model's first 10 *training* subjects
(``multi_atlas_ixi_train.*``), with ``--jlf-option KEY=VALUE`` (unireg.fusion.JLF_DEFAULTS) and
``--io-option KEY=VALUE`` (InstanceOptOptions) to try settings; defaults are chosen there, never on
the validation subjects (benchmarks/results/multi_atlas_ixi_train.md).

**Time per target.** The sum of the K registrations' seconds (from the cache: the run that made
them) + warping + fusion, measured here.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import mindboggle as mb  # noqa: E402  (data, preprocessing, workers, cache, scoring)
import peers  # noqa: E402

from unireg.defaults import INSTANCE_OPT_STEPS  # noqa: E402
from unireg.fusion import FUSIONS, JLF_DEFAULTS, JLF_VOXEL_OPTIONS, WEIGHTED_DEFAULTS, jlf_parameters  # noqa: E402

METHODS = ("unireg_io", "ants")
ANTS_JLF = {"beta": 2.0, "rad": 2, "r_search": 3, "rho": 0.1}  # antsJointFusion's defaults (-b 2 -p 2 -s 3 -a 0.1)
JLF_OPTION_TYPES = {
    **{key: type(value) for key, value in JLF_DEFAULTS.items()},
    **dict.fromkeys(JLF_VOXEL_OPTIONS, int),
}
SMOKE = {"grid_mm": 4.0, "targets": 1, "k": "1,2", "instance_opt": 5, "ants_iterations": "20,10", "ants_k": 2}
COLUMNS = [
    "method",
    "fusion",
    "k",
    "targets",
    "dice_mean",
    "dice_sd_over_targets",
    "dice_cortical_mean",
    "hd95_mean_mm",
    "seconds_per_target",
    "registration_seconds_per_target",
    "fusion_seconds_per_target",
    "peak_rss_mb",
]
PAIRED_COLUMNS = [
    "k",
    "targets",
    "ants_dice_mean",
    "unireg_single_dice_mean",
    "unireg_majority_dice_mean",
    "unireg_weighted_dice_mean",
    "unireg_jlf_dice_mean",
    "best_unireg_minus_ants",
    "ants_seconds_per_target",
    "unireg_seconds_per_target",
]
TARGET_COLUMNS = [
    "target",
    "method",
    "fusion",
    "k",
    "atlases",
    "dice_mean",
    "dice_cortical_mean",
    "hd95_mean_mm",
    "disagreement_percent",
    "registration_seconds",
    "fusion_seconds",
]


def log(message: str) -> None:
    print(f"[multi_atlas {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def atlases_of(target: str, k: int, subjects=mb.SUBJECTS) -> list[str]:
    """The first ``k`` atlases of ``target``: the subjects at ring offsets 1..k (mindboggle.pair_order)."""
    return [moving for moving, fixed in mb.pair_order(subjects) if fixed == target][:k]


@dataclass
class Dataset:
    """What differs between the two data sets: subjects, grid, preprocessing, labels, ANTs schedule."""

    name: str
    title: str
    subjects: tuple
    atlas: object
    cache: Path
    preprocess: Callable  # subject ids -> {id: {"image": array, "labels": array}}
    labels: Callable  # preprocessed subjects -> label ids to score
    cortical: tuple | None  # id range of the cortical column, or None
    ants: dict  # ANTs settings for mindboggle.worker_settings
    short: Callable  # subject id -> its short name in the tables
    data_note: str


def ants_schedule_2mm(iterations: str | None) -> dict:
    """The project's SyN at 2 mm (peers.py): CC radius 2 (the 4 mm window of antsRegistrationSyN's
    radius 4 at 1 mm), 100,70,20 at shrink 4, 2, 1."""
    return {
        "ants_iterations": iterations or peers.ANTS_ITERATIONS,
        "ants_cc_radius": peers.ANTS_CC_RADIUS,
        "ants_grad_step": peers.ANTS_GRAD_STEP,
    }


def mindboggle_ants(args) -> dict:
    """mindboggle.py's antsRegistrationSyN schedule on a grid finer than 2 mm; on a 2 mm (or coarser)
    grid the 2 mm schedule that IXI and peers.py use, so a SyN registration costs about 100 s, not 35 min."""
    if args.grid_mm >= 2.0:
        return ants_schedule_2mm(args.ants_iterations)
    return {**mb.ANTS, "ants_iterations": args.ants_iterations or mb.ANTS["ants_iterations"]}


def mindboggle_dataset(args) -> Dataset:
    from unireg.atlas import builtin_atlas
    from unireg.defaults import TISSUE_ATLAS

    if not mb.DATA.is_dir():
        raise SystemExit(f"multi_atlas: data not found: {mb.DATA} (../shared/data is absent)")
    atlas = builtin_atlas(TISSUE_ATLAS, args.grid_mm)
    cache = peers.cache_dir(args.cache, "mindboggle", args.grid_mm)
    return Dataset(
        name="mindboggle",
        title="Mindboggle OASIS-TRT-20",
        subjects=mb.SUBJECTS,
        atlas=atlas,
        cache=cache,
        preprocess=lambda ids: mb.preprocess_subjects(ids, atlas, cache),
        labels=lambda subjects: mb.common_labels(cache),
        cortical=mb.CORTICAL,
        ants=mindboggle_ants(args),
        short=lambda sid: sid[-2:],
        data_note="Data: Mindboggle-101 OASIS-TRT-20 (Klein & Tourville 2012), CC BY-NC-SA 3.0, read from "
        "../shared/data. Dice over the labels common to all 10 subjects present in the target (0 where lost).",
    )


def ixi_dataset(args) -> Dataset:
    from unireg.atlas import builtin_atlas
    from unireg.defaults import TISSUE_ATLAS

    if not peers.IXI.is_dir():
        raise SystemExit(f"multi_atlas: data not found: {peers.IXI} (../shared/data is absent)")
    atlas = builtin_atlas(TISSUE_ATLAS, args.grid_mm)
    cache = peers.cache_dir(args.cache, "peers", args.grid_mm)  # shared with peers.py's preprocessing
    train_ids, val_ids = peers.model_split(args.model)
    tuning = args.split == "train"
    ids = train_ids[:10] if tuning else val_ids

    def preprocess(ids):
        records = peers.preprocess_ixi(list(ids), atlas, cache)
        return {sid: {**r, "image": r["image"].data} for sid, r in records.items()}

    def labels(subjects):
        common = None
        for record in subjects.values():
            ids = set(int(i) for i in np.unique(record["labels"]) if i > 0)
            common = ids if common is None else common & ids
        return np.array(sorted(common), dtype=np.int64)

    return Dataset(
        name="ixi",
        title=f"IXI {'training subjects (for tuning)' if tuning else 'validation subjects'}, 2 mm",
        subjects=tuple(ids),
        atlas=atlas,
        cache=cache,
        preprocess=preprocess,
        labels=labels,
        cortical=None,
        ants=ants_schedule_2mm(args.ants_iterations),
        short=lambda sid: sid.split("-")[0],
        data_note="Data: IXI T1 heads (CC BY-SA 3.0) with DLMUSE labels, read from ../shared/data; the packaged "
        f"model's {'first 10 training' if tuning else '10 validation'} subjects. Dice over the labels present in all "
        "10 subjects (0 where lost).",
    )


def ants_fusion(
    target_image: np.ndarray, images: list[np.ndarray], labels: list[np.ndarray], spacing, options: dict | None = None
) -> np.ndarray:
    """antspyx joint label fusion of already-warped atlases on the target's grid (mask: the union of
    the atlases' labels and the target's non-zero voxels).

    antspyx fuses only the non-zero labels it is given and gives every voxel of the mask one of them,
    so a voxel that every atlas calls background would still get a structure. Background is fused
    like any label instead (as antsJointFusion does): labels are passed shifted by one, background
    as 1, and shifted back."""
    import ants

    def img(a):
        return ants.from_numpy(np.ascontiguousarray(a, dtype=np.float32), spacing=tuple(float(s) for s in spacing))

    mask = (target_image != 0) | np.any(np.stack(labels) > 0, axis=0)
    out = ants.joint_label_fusion(
        img(target_image),
        img(mask.astype(np.float32)),
        [img(i) for i in images],
        label_list=[img(x.astype(np.float32) + 1.0) for x in labels],
        **{**ANTS_JLF, **(options or {})},
    )
    return np.maximum(np.rint(out["segmentation"].numpy()).astype(np.int32) - 1, 0)  # outside the mask: 0


def key_values(parser, flag: str, items: list[str], types: dict) -> dict:
    """``KEY=VALUE`` words -> {key: types[key](value)}; anything else is a parser error naming ``flag``."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in types or not value:
            parser.error(f"{flag} {item!r}: use KEY=VALUE, KEY one of {sorted(types)}")
        out[key] = types[key](value)
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=("mindboggle", "ixi"), default="mindboggle")
    parser.add_argument("--targets", type=int, default=3, help="the first N subjects as targets (default 3)")
    parser.add_argument("--k", default="1,3,5,9", help="atlases per target, comma list (default 1,3,5,9)")
    parser.add_argument("--fusions", default=",".join(FUSIONS), help=f"comma list of {', '.join(FUSIONS)}")
    parser.add_argument("--methods", default="unireg_io,ants", help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument(
        "--ants-k",
        type=int,
        default=1,
        help="register with ANTs up to this K per target (larger K, or 0: only as far as the cache has the fields)",
    )
    parser.add_argument(
        "--ants-targets", type=int, default=None, help="ANTs rows for the first N targets only (default: all)"
    )
    parser.add_argument("--grid-mm", type=float, default=None, help="default 1 (mindboggle), 2 (ixi)")
    parser.add_argument("--instance-opt", type=int, default=INSTANCE_OPT_STEPS)
    parser.add_argument(
        "--io-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="UniReg: another InstanceOptOptions value (e.g. weight=0.1), for tuning; repeatable",
    )
    parser.add_argument(
        "--jlf-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"jlf: another value of {sorted(JLF_OPTION_TYPES)} (e.g. beta=1; radius, search: in voxels), for "
        "tuning; repeatable",
    )
    parser.add_argument(
        "--ants-jlf-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"ANTs rows: another antspyx joint_label_fusion value of {sorted(ANTS_JLF)} (e.g. rad=1); repeatable",
    )
    parser.add_argument(
        "--split",
        choices=("validation", "train"),
        default="validation",
        help="ixi: the model's 10 validation subjects (default), or its first 10 training subjects (for tuning)",
    )
    parser.add_argument("--ants-iterations", default=None, help="default: mindboggle.py's or peers.py's schedule")
    parser.add_argument("--model", type=Path, default=None, help="UniReg checkpoint (default: the packaged default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default=None, help="stem of the table files (default multi_atlas, multi_atlas_ixi)")
    parser.add_argument("--cache", type=Path, default=None, help="cache (default $UNIREG_HOME/mindboggle or /peers)")
    parser.add_argument("--smoke", action="store_true", help=f"quick check: {SMOKE}")
    args = parser.parse_args(argv)
    if args.grid_mm is None:
        args.grid_mm = 2.0 if args.dataset == "ixi" else 1.0
    if args.smoke:
        args.grid_mm, args.targets, args.k = SMOKE["grid_mm"], SMOKE["targets"], SMOKE["k"]
        args.instance_opt, args.ants_iterations, args.ants_k = (
            SMOKE["instance_opt"],
            SMOKE["ants_iterations"],
            SMOKE["ants_k"],
        )
    if args.split == "train" and args.dataset != "ixi":
        parser.error("--split train: only with --dataset ixi (Mindboggle has no training subjects)")
    if not args.name:  # Mindboggle off its 1 mm grid (not --smoke) gets its own tables, e.g. multi_atlas_2mm
        other_grid = args.dataset == "mindboggle" and args.grid_mm != 1.0 and not args.smoke
        args.name = ("multi_atlas_ixi" if args.dataset == "ixi" else "multi_atlas") + (
            "_train" if args.split == "train" else f"_{args.grid_mm:g}mm" if other_grid else ""
        )
    args.model = peers.checkpoint_arg(parser, args.model)
    args.k = sorted({int(k) for k in args.k.split(",")})
    args.fusions = [f for f in args.fusions.split(",") if f]
    args.methods = [m for m in args.methods.split(",") if m]
    if not all(1 <= k < 10 for k in args.k):
        parser.error("--k values must be 1..9 (10 subjects, leave-one-out)")
    for given, allowed, what in ((args.fusions, FUSIONS, "fusion"), (args.methods, METHODS, "method")):
        if set(given) - set(allowed):
            parser.error(f"unknown {what} {sorted(set(given) - set(allowed))}; choose from {', '.join(allowed)}")
    if not 1 <= args.targets <= 10:
        parser.error("--targets must be 1..10")
    args.io_options, args.elastix_iterations = mb.parse_io_options(args.io_option), None  # mb.worker_settings
    args.jlf_options = key_values(parser, "--jlf-option", args.jlf_option, JLF_OPTION_TYPES)
    ants_types = {key: type(value) for key, value in ANTS_JLF.items()}
    args.ants_jlf_options = key_values(parser, "--ants-jlf-option", args.ants_jlf_option, ants_types)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    started, t_start = datetime.datetime.now().astimezone(), time.perf_counter()
    from unireg.fusion import fuse

    data = ixi_dataset(args) if args.dataset == "ixi" else mindboggle_dataset(args)
    peers.require_peer_modules(args.methods, "multi_atlas")
    targets = list(data.subjects[: args.targets])
    kmax = max(args.k)
    needed = sorted({s for t in targets for s in [t, *atlases_of(t, kmax, data.subjects)]})
    subjects = data.preprocess(needed)
    labels = data.labels(subjects)
    settings = {**mb.worker_settings(args, data.atlas), **data.ants}
    spacing = data.atlas.grid.spacing
    rows, peak = [], {}
    for method in args.methods:
        folder = data.cache / "fields" / mb.method_key(method, settings)
        for position, target in enumerate(targets):
            if method == "ants" and args.ants_targets is not None and position >= args.ants_targets:
                continue
            atlases = atlases_of(target, kmax, data.subjects)
            cases = [peers.Case(f"{a}_to_{target}", data.name, "mono", target, a, "labels") for a in atlases]
            if method == "ants":  # register the first --ants-k atlases; then only as far as the cache goes
                n = args.ants_k
                while n < len(cases) and (folder / f"{cases[n].name}.json").is_file():
                    n += 1
                cases = cases[:n]
            arrays = {c.name: (subjects[target]["image"], subjects[c.moving]["image"]) for c in cases}
            timing = mb.run_method(method, cases, arrays, settings, folder, args.threads)
            peak[method] = max([peak.get(method, 0.0)] + [t["peak_rss_mb"] for t in timing.values()])
            warped_labels, warped_images = [], []
            t0 = time.perf_counter()
            for case in cases:
                with np.load(folder / f"{case.name}.npz") as fields:
                    ddf = fields["ddf"]
                warped_labels.append(peers.warp_labels(subjects[case.moving]["labels"], ddf))
                warped_images.append(peers.warp_image(subjects[case.moving]["image"].astype(np.float32), ddf))
            warp_s = (time.perf_counter() - t0) / max(len(cases), 1)
            reference, target_image = subjects[target]["labels"], subjects[target]["image"].astype(np.float32)
            for k in args.k:
                if k > len(cases):
                    continue
                reg_s = sum(timing[c.name]["seconds"] for c in cases[:k])
                fusions = ["single"] if k == 1 else (["jlf"] if method == "ants" else args.fusions)
                for fusion in fusions:
                    t0 = time.perf_counter()
                    if fusion == "single":
                        fused, disagreement = warped_labels[0], 0.0
                    elif method == "ants":
                        fused = ants_fusion(
                            target_image, warped_images[:k], warped_labels[:k], spacing, args.ants_jlf_options
                        )
                        disagreement = float("nan")
                    else:
                        result = fuse(
                            warped_labels[:k],
                            fusion,
                            images=warped_images[:k],
                            target=target_image,
                            options=args.jlf_options if fusion == "jlf" else None,
                            spacing=spacing,
                        )
                        fused, disagreement = result.labels, 100.0 * result.disagreement_fraction
                    fusion_s = time.perf_counter() - t0 + warp_s * k
                    s = mb.score_labels(reference, fused, labels, spacing)
                    dice = s["dice"]
                    cortical = (
                        [v for i, v in dice.items() if data.cortical[0] <= i < data.cortical[1]]
                        if data.cortical
                        else []
                    )
                    rows.append(
                        {
                            "target": target,
                            "method": method,
                            "fusion": fusion,
                            "k": k,
                            "atlases": " ".join(data.short(a) for a in atlases[:k]),
                            "dice_mean": float(np.mean(list(dice.values()))),
                            "dice_cortical_mean": float(np.mean(cortical)) if cortical else None,
                            "hd95_mean_mm": float(np.mean(list(s["hd95"].values()))),
                            "disagreement_percent": disagreement,
                            "registration_seconds": reg_s,
                            "fusion_seconds": fusion_s,
                        }
                    )
                    log(f"{target} {method} K={k} {fusion}: Dice {rows[-1]['dice_mean']:.3f}")

    summary = []
    for key in dict.fromkeys((r["method"], r["fusion"], r["k"]) for r in rows):
        mine = [r for r in rows if (r["method"], r["fusion"], r["k"]) == key]
        dice = [r["dice_mean"] for r in mine]
        summary.append(
            {
                "method": key[0],
                "fusion": key[1],
                "k": key[2],
                "targets": len(mine),
                "dice_mean": float(np.mean(dice)),
                "dice_sd_over_targets": float(np.std(dice, ddof=1)) if len(dice) > 1 else None,
                "dice_cortical_mean": float(np.mean([r["dice_cortical_mean"] for r in mine]))
                if data.cortical
                else None,
                "hd95_mean_mm": float(np.mean([r["hd95_mean_mm"] for r in mine])),
                "registration_seconds_per_target": float(np.mean([r["registration_seconds"] for r in mine])),
                "fusion_seconds_per_target": float(np.mean([r["fusion_seconds"] for r in mine])),
                "seconds_per_target": float(np.mean([r["registration_seconds"] + r["fusion_seconds"] for r in mine])),
                "peak_rss_mb": peak.get(key[0]),
            }
        )
    header = [
        *peers.provenance(
            started,
            peers.command_line(argv, "benchmarks/multi_atlas.py"),
            f"threads per method: {args.threads}; {peers.versions()}; load average at the end "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        ),
        f"wall time: {(time.perf_counter() - t_start) / 60:.1f} min (registrations cached in {data.cache}; "
        "their seconds are those of the run that made them); peak RSS of this process (the preprocessed subjects, "
        f"warping, every fusion and scoring; the registrations run in workers): {peers.peak_rss_mb():.0f} MB",
        f"grid: MNI 2009a template grid {'x'.join(map(str, data.atlas.grid.shape))} at {args.grid_mm:g} mm"
        + ("; SMOKE settings" if args.smoke else ""),
        f"targets (leave-one-out): {', '.join(data.short(t) for t in targets)}; atlases of each: the next subjects "
        f"in ring order (mindboggle.pair_order over {', '.join(data.short(t) for t in data.subjects)})"
        + (f"; ANTs on the first {args.ants_targets} targets only" if args.ants_targets is not None else ""),
    ]
    notes = [
        f"UniReg: {peers.model_name(args.model)}, IO {peers.describe_io(args.instance_opt, **args.io_options)}, "
        "for every registration; fusion by "
        f"unireg.fusion: majority; weighted = inverse local MSD {WEIGHTED_DEFAULTS}; jlf = joint label fusion "
        f"{jlf_parameters(spacing, args.jlf_options)} (patch and search radii in voxels: "
        f"{JLF_DEFAULTS['radius_mm']:g} and {JLF_DEFAULTS['search_mm']:g} mm over the {np.mean(spacing):g} mm voxel, "
        "rounded, unless --jlf-option sets them; local patch search and patch voting, as antsJointFusion).",
        f"ANTs: SyN {data.ants}; K > 1 fused with antspyx joint_label_fusion {ANTS_JLF | args.ants_jlf_options}; "
        "rows only where all K SyN fields exist (at 1 mm each costs many minutes).",
        "HD95 where present in both; seconds per target = its K registrations (the cached runs' own seconds) + "
        "warping and fusion.",
        data.data_note,
    ]
    head_to_head = paired(rows, data.short)
    text = markdown(header, summary, notes, data.title, head_to_head)
    args.out.mkdir(parents=True, exist_ok=True)
    peers.write_csv(args.out / f"{args.name}.paired.csv", head_to_head, PAIRED_COLUMNS, header)
    (args.out / f"{args.name}.md").write_text(text)
    peers.write_csv(args.out / f"{args.name}.csv", summary, COLUMNS, header)
    peers.write_csv(args.out / f"{args.name}.targets.csv", rows, TARGET_COLUMNS, header)
    print(text)


def paired(rows: list[dict], short: Callable) -> list[dict]:
    """For each K with ANTs rows: ANTs and every UniReg fusion, averaged over exactly the targets ANTs
    has at that K (UniReg's seconds: those of its best fusion)."""

    def mean(rs, key):
        return float(np.mean([r[key] for r in rs]))

    def seconds(rs):
        return float(np.mean([r["registration_seconds"] + r["fusion_seconds"] for r in rs]))

    out = []
    for k in sorted({r["k"] for r in rows if r["method"] == "ants"}):
        ants = {r["target"]: r for r in rows if r["method"] == "ants" and r["k"] == k}
        by_fusion = {}
        for r in rows:
            if r["method"] == "unireg_io" and r["k"] == k and r["target"] in ants:
                by_fusion.setdefault(r["fusion"], []).append(r)
        by_fusion = {f: rs for f, rs in by_fusion.items() if len(rs) == len(ants)}
        if not by_fusion:
            continue
        entry = {"k": k, "targets": " ".join(short(t) for t in sorted(ants))}
        entry["ants_dice_mean"] = mean(ants.values(), "dice_mean")
        for fusion in ("single", *FUSIONS):
            entry[f"unireg_{fusion}_dice_mean"] = mean(by_fusion[fusion], "dice_mean") if fusion in by_fusion else None
        best = max(by_fusion, key=lambda f: mean(by_fusion[f], "dice_mean"))
        entry["best_unireg_minus_ants"] = mean(by_fusion[best], "dice_mean") - entry["ants_dice_mean"]
        entry["ants_seconds_per_target"] = seconds(ants.values())
        entry["unireg_seconds_per_target"] = seconds(by_fusion[best])
        out.append(entry)
    return out


def markdown(
    header: list[str], summary: list[dict], notes: list[str], title: str, head_to_head: list[dict] = ()
) -> str:
    fmt = peers.fmt
    names = {"unireg_io": "UniReg + IO", "ants": "ANTs SyN"}
    lines = [f"# Multi-atlas segmentation: leave-one-out on {title}", ""]
    lines += [f"- {h}" for h in header] + [""]
    lines += [
        "| method | fusion | K | targets | Dice | sd over targets | Dice cortical (DKT31) | HD95 mm | "
        "s / target (registration + fusion) | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {names[r['method']]} | {r['fusion']} | {r['k']} | {r['targets']} | {fmt(r['dice_mean'])} | "
            f"{fmt(r['dice_sd_over_targets'])} | {fmt(r['dice_cortical_mean'])} | {fmt(r['hd95_mean_mm'], 2)} | "
            f"{fmt(r['seconds_per_target'], 0)} ({fmt(r['registration_seconds_per_target'], 0)} + "
            f"{fmt(r['fusion_seconds_per_target'], 0)}) | {fmt(r['peak_rss_mb'], 0)} |"
        )
    if head_to_head:
        lines += [
            "",
            "## Head to head: the targets ANTs was run on",
            "",
            "| K | targets | ANTs SyN (K > 1: + JLF) | UniReg single | UniReg majority | UniReg weighted | "
            "UniReg JLF | best UniReg - ANTs | s / target ANTs | s / target UniReg (best fusion) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in head_to_head:
            lines.append(
                f"| {r['k']} | {r['targets']} | {fmt(r['ants_dice_mean'])} | {fmt(r['unireg_single_dice_mean'])} | "
                f"{fmt(r['unireg_majority_dice_mean'])} | {fmt(r['unireg_weighted_dice_mean'])} | "
                f"{fmt(r['unireg_jlf_dice_mean'])} | {r['best_unireg_minus_ants']:+.3f} | "
                f"{fmt(r['ants_seconds_per_target'], 0)} | {fmt(r['unireg_seconds_per_target'], 0)} |"
            )
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
