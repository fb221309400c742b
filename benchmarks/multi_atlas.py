"""Multi-atlas segmentation, leave-one-out on the 10 Mindboggle brains at 1 mm: K registered atlases fused.

Run (writes benchmarks/results/multi_atlas.{md,csv} and multi_atlas.targets.csv, prints the markdown):

    nice -n 10 .venv/bin/python benchmarks/multi_atlas.py                         # 3 targets, K = 1,3,5,9
    nice -n 10 .venv/bin/python benchmarks/multi_atlas.py --targets 10 --k 1,3,5,9 --methods unireg_io,ants
    .venv/bin/python benchmarks/multi_atlas.py --smoke --out /tmp/ma                # 4 mm, 1 target, K = 1,2

Shares everything but the fusion with benchmarks/mindboggle.py (its data, preprocessing, method
workers, field cache and scoring): a pair registered by either script is reused by both.

**Design.** Each target subject (``--targets N``: the first N of the 10) is segmented with the
other subjects as atlases, in the ring order of :func:`mindboggle.pair_order` (atlas at offset 1, 2,
..., 9: K = 1 is exactly mindboggle.py's pair onto that target). Each atlas (moving) is registered
onto the target (fixed) on the 1 mm MNI template grid; its labels are warped with nearest
neighbour and its image linearly; the K warped label maps are fused with :mod:`unireg.fusion`
(``majority``, ``weighted``, ``jlf``, default parameters) and scored against the target's own
manual labels (Dice over the 98 labels common to all subjects; HD95 where present in both).

**Methods.** ``unireg_io``: the shipped default (network + instance optimisation) for every
registration, fused by unireg.fusion. ``ants``: ANTs SyN (mindboggle.py's antsRegistrationSyN
schedule) for every registration; K = 1 is the single-atlas SyN row, K > 1 is fused with antspyx
``joint_label_fusion`` (antsJointFusion: beta 2, patch radius 2, search radius 3, alpha 0.1) on the
same warped atlases. ANTs rows only exist for the (target, K) whose K SyN registrations are in the
cache or fit ``--ants-k`` (default 1): at 1 mm each SyN pair costs many minutes on 2 cores.

**Time per target.** The sum of the K registrations' seconds (from the cache: the run that made
them) + warping + fusion, measured here.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import mindboggle as mb  # noqa: E402  (data, preprocessing, workers, cache, scoring)
import peers  # noqa: E402

from unireg.defaults import INSTANCE_OPT_STEPS  # noqa: E402
from unireg.fusion import FUSIONS, JLF_DEFAULTS, WEIGHTED_DEFAULTS  # noqa: E402

METHODS = ("unireg_io", "ants")
ANTS_JLF = {"beta": 2.0, "rad": 2, "r_search": 3, "rho": 0.1}  # antsJointFusion's defaults (-b 2 -p 2 -s 3 -a 0.1)
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


def atlases_of(target: str, k: int) -> list[str]:
    """The first ``k`` atlases of ``target``: the subjects at ring offsets 1..k (mindboggle.pair_order)."""
    return [moving for moving, fixed in mb.pair_order() if fixed == target][:k]


def ants_fusion(target_image: np.ndarray, images: list[np.ndarray], labels: list[np.ndarray], spacing) -> np.ndarray:
    """antspyx joint label fusion of already-warped atlases on the target's grid (mask: the union of
    the atlases' labels and the target's non-zero voxels)."""
    import ants

    def img(a):
        return ants.from_numpy(np.ascontiguousarray(a, dtype=np.float32), spacing=tuple(float(s) for s in spacing))

    mask = (target_image != 0) | np.any(np.stack(labels) > 0, axis=0)
    out = ants.joint_label_fusion(
        img(target_image),
        img(mask.astype(np.float32)),
        [img(i) for i in images],
        label_list=[img(x.astype(np.float32)) for x in labels],
        **ANTS_JLF,
    )
    return np.rint(out["segmentation"].numpy()).astype(np.int32)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    parser.add_argument("--grid-mm", type=float, default=1.0)
    parser.add_argument("--instance-opt", type=int, default=INSTANCE_OPT_STEPS)
    parser.add_argument("--ants-iterations", default=mb.ANTS["ants_iterations"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--cache", type=Path, default=None, help="cache (default $UNIREG_HOME/mindboggle)")
    parser.add_argument("--smoke", action="store_true", help=f"quick check: {SMOKE}")
    args = parser.parse_args(argv)
    if args.smoke:
        args.grid_mm, args.targets, args.k = SMOKE["grid_mm"], SMOKE["targets"], SMOKE["k"]
        args.instance_opt, args.ants_iterations, args.ants_k = (
            SMOKE["instance_opt"],
            SMOKE["ants_iterations"],
            SMOKE["ants_k"],
        )
    args.k = sorted({int(k) for k in args.k.split(",")})
    args.fusions = [f for f in args.fusions.split(",") if f]
    args.methods = [m for m in args.methods.split(",") if m]
    if not all(1 <= k < len(mb.SUBJECTS) for k in args.k):
        parser.error(f"--k values must be 1..{len(mb.SUBJECTS) - 1}")
    for given, allowed, what in ((args.fusions, FUSIONS, "fusion"), (args.methods, METHODS, "method")):
        if set(given) - set(allowed):
            parser.error(f"unknown {what} {sorted(set(given) - set(allowed))}; choose from {', '.join(allowed)}")
    if not 1 <= args.targets <= len(mb.SUBJECTS):
        parser.error(f"--targets must be 1..{len(mb.SUBJECTS)}")
    args.io_options, args.elastix_iterations = {}, None  # what mindboggle.worker_settings reads
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    started, t_start = datetime.datetime.now().astimezone(), time.perf_counter()
    if not mb.DATA.is_dir():
        raise SystemExit(f"multi_atlas: data not found: {mb.DATA} (../shared/data is absent)")
    from unireg.atlas import builtin_atlas
    from unireg.defaults import TISSUE_ATLAS
    from unireg.fusion import fuse

    atlas = builtin_atlas(TISSUE_ATLAS, args.grid_mm)
    peers.require_peer_modules(args.methods, "multi_atlas")
    cache = peers.cache_dir(args.cache, "mindboggle", args.grid_mm)
    labels = mb.common_labels(cache)
    targets = list(mb.SUBJECTS[: args.targets])
    kmax = max(args.k)
    subjects = mb.preprocess_subjects(sorted({s for t in targets for s in [t, *atlases_of(t, kmax)]}), atlas, cache)
    settings = mb.worker_settings(args, atlas)
    spacing = atlas.grid.spacing
    rows, peak = [], {}
    for method in args.methods:
        folder = cache / "fields" / mb.method_key(method, settings)
        for target in targets:
            atlases = atlases_of(target, kmax)
            cases = [peers.Case(f"{a}_to_{target}", "mindboggle", "mono", target, a, "labels") for a in atlases]
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
                with np.load(folder / f"{case.name}.npz") as data:
                    ddf = data["ddf"]
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
                        fused = ants_fusion(target_image, warped_images[:k], warped_labels[:k], spacing)
                        disagreement = float("nan")
                    else:
                        result = fuse(warped_labels[:k], fusion, images=warped_images[:k], target=target_image)
                        fused, disagreement = result.labels, 100.0 * result.disagreement_fraction
                    fusion_s = time.perf_counter() - t0 + warp_s * k
                    s = mb.score_labels(reference, fused, labels, spacing)
                    dice = s["dice"]
                    cortical = [v for i, v in dice.items() if mb.CORTICAL[0] <= i < mb.CORTICAL[1]]
                    rows.append(
                        {
                            "target": target,
                            "method": method,
                            "fusion": fusion,
                            "k": k,
                            "atlases": " ".join(a[-2:] for a in atlases[:k]),
                            "dice_mean": float(np.mean(list(dice.values()))),
                            "dice_cortical_mean": float(np.mean(cortical)),
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
                "dice_cortical_mean": float(np.mean([r["dice_cortical_mean"] for r in mine])),
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
        f"wall time: {(time.perf_counter() - t_start) / 60:.1f} min (registrations cached in {cache}; their seconds "
        "are those of the run that made them)",
        f"grid: MNI 2009a template grid {'x'.join(map(str, atlas.grid.shape))} at {args.grid_mm:g} mm"
        + ("; SMOKE settings" if args.smoke else ""),
        f"targets (leave-one-out): {', '.join(t[-2:] for t in targets)} (OASIS-TRT-20-NN); atlases of each: the "
        "next subjects in ring order (mindboggle.pair_order)",
    ]
    notes = [
        f"UniReg: the shipped default ({args.instance_opt} IO steps) for every registration; fusion by "
        f"unireg.fusion: majority; weighted = inverse local MSD {WEIGHTED_DEFAULTS}; jlf = joint label fusion "
        f"{JLF_DEFAULTS} (no patch search).",
        f"ANTs: SyN as in benchmarks/mindboggle.py ({args.ants_iterations}); K > 1 fused with antspyx "
        f"joint_label_fusion {ANTS_JLF}; rows only where all K SyN fields exist (at 1 mm each costs many minutes).",
        "Dice over the labels common to all 10 subjects present in the target (0 where lost); HD95 where present "
        "in both; seconds per target = its K registrations (the cached runs' own seconds) + warping and fusion.",
        "Data: Mindboggle-101 OASIS-TRT-20 (Klein & Tourville 2012), CC BY-NC-SA 3.0, read from ../shared/data.",
    ]
    text = markdown(header, summary, notes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multi_atlas.md").write_text(text)
    peers.write_csv(args.out / "multi_atlas.csv", summary, COLUMNS, header)
    peers.write_csv(args.out / "multi_atlas.targets.csv", rows, TARGET_COLUMNS, header)
    print(text)


def markdown(header: list[str], summary: list[dict], notes: list[str]) -> str:
    fmt = peers.fmt
    names = {"unireg_io": "UniReg default", "ants": "ANTs SyN"}
    lines = ["# Multi-atlas segmentation: leave-one-out on Mindboggle OASIS-TRT-20", ""]
    lines += [f"- {h}" for h in header] + [""]
    lines += [
        "| method | fusion | K | targets | Dice | sd over targets | Dice DKT31 cortical | HD95 mm | "
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
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
