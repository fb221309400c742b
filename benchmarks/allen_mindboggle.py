"""Allen atlas -> 10 real Mindboggle brains: propagated subcortical structures vs FreeSurfer aseg.

Run (writes benchmarks/results/allen_mindboggle.{md,csv} and allen_mindboggle.subjects.csv,
prints the markdown):

    nice -n 10 .venv/bin/python benchmarks/allen_mindboggle.py                    # atlas at 2 mm (the default)
    nice -n 10 .venv/bin/python benchmarks/allen_mindboggle.py --spacings 2,1     # and at 1 mm (atlas_spacing: 1)
    .venv/bin/python benchmarks/allen_mindboggle.py --smoke --out /tmp/am         # 1 subject, 10 IO steps: a test

Needs ../shared/data/mindboggle_oasis_trt20 (or $UNIREG_SHARED_DATA): 10 OASIS-TRT-20 subjects of
Mindboggle-101, skull-stripped 1 mm T1 in native space with "DKT31 manual + FreeSurfer aseg"
labels (CC BY-NC-SA 3.0: used here, never committed).

**Pipeline, per subject, the calls the workflow's verbs make** (workflow/rules/*.smk), in process:
``unireg atlas prepare --name mni2009a-allen --spacing S`` once; ``unireg preprocess`` (MI affine to
the atlas; brain extraction off, ``--no-brain-extraction``: the images are already skull-stripped,
see :data:`BRAIN_EXTRACTION_NOTE`); ``unireg register`` (atlas template moving onto the subject,
packaged default model, default instance optimisation: 30 steps, squared LNCC); ``unireg
propagate`` (atlas labels -> the subject's native 1 mm grid, affine + displacement, one
nearest-neighbour resampling). Affine only = ``unireg propagate`` without the displacement.

**Scoring.** :data:`CORRESPONDENCE` groups Allen structures (by abbreviation, per side) into the
structure one FreeSurfer aseg id stands for, only where the definitions roughly match; per
group and side, Dice of the union of the propagated Allen labels against the aseg label, and
both volumes (mL). Summaries are mean +- sd (ddof 1) over subjects.

**Cache.** Each subject's stage outputs (the workflow's files) and its propagated label maps are
kept in ``<cache>/<spacing>mm_<settings key>/<subject>/``: a rerun only re-scores them.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import command_line, fmt, provenance, write_csv  # noqa: E402  (the shared report helpers)

from unireg.defaults import ALLEN_ATLAS, NETWORK_GRID, NETWORK_GRIDS  # noqa: E402  (pure Python)

SHARED = Path(os.environ.get("UNIREG_SHARED_DATA", REPO.parent / "shared" / "data"))
DATA = SHARED / "mindboggle_oasis_trt20"
SUBJECTS = tuple(f"OASIS-TRT-20-{n:02d}" for n in range(1, 20, 2))
ATLAS = ALLEN_ATLAS
METHODS = {"affine": "affine only", "unireg": "UniReg"}  # UniReg: the packaged default model + instance optimisation
SMOKE = {"subjects": 1, "spacings": (2.0,), "instance_opt": 10}
BRAIN_EXTRACTION_NOTE = (
    "brain extraction off (`unireg preprocess --no-brain-extraction`, the documented choice for skull-stripped "
    "images): the brain mask is the image's non-zero voxels. deepbet does run on these stripped images, but "
    "its mask is larger than the stripped brain (measured once on OASIS-TRT-20-01 with the 2 mm atlas: 1686 mL "
    "against 1375 mL of non-zero voxels, it adds zero-valued voxels back around the brain; the affine then moved "
    "by at most 0.044 in any matrix entry), so it would only widen the affine's mask"
)


@dataclass(frozen=True)
class Group:
    """Allen structures (abbreviations, taken on each side, or the midline label) <-> aseg id(s)."""

    name: str
    allen: tuple[str, ...]
    aseg: tuple[int, ...]  # (left, right), or (midline,)
    caveat: str = ""

    @property
    def sides(self) -> tuple[str, ...]:
        return ("left", "right") if len(self.aseg) == 2 else ("midline",)


# The correspondence table: Allen Human Reference Atlas 3D (2020) abbreviations <-> FreeSurfer aseg ids.
CORRESPONDENCE = (
    Group(
        "hippocampus",
        ("HiH", "HiB", "HiT"),
        (17, 53),
        "close definitions (hippocampus proper, dentate gyrus, subiculum); the borders with the amygdala and at "
        "the tail are drawn differently",
    ),
    Group(
        "amygdala",
        ("AMY", "AAA", "CEN", "La", "BL", "BM", "CoA", "CoP", "Me", "AHA"),
        (18, 54),
        "Allen's amygdaloid complex + its nuclei; the amygdalohippocampal area (AHA) sits on the "
        "FreeSurfer hippocampus/amygdala border; BNST excluded",
    ),
    Group("caudate", ("CaH", "CaB", "CaT"), (11, 50), "the thin tail is where the two differ most"),
    Group("putamen", ("Pu", "PuPV"), (12, 51)),
    Group("pallidum", ("GPe", "GPi"), (13, 52)),
    Group(
        "thalamus",
        ("THM", "ANC", "LD", "MD", "LP", "Pul", "VA", "VL", "VPL", "VPM", "DLG", "MG", "CM", "Pf"),
        (10, 49),
        "Allen's THM is what its named nuclei leave; the midline labels (reuniens Re, midline nuclear complex "
        "MiN) have no side and are left out, the habenula (HN) and zona incerta (ZI) too; FreeSurfer's "
        "thalamus is the whole thalamus of each side, geniculate bodies and midline nuclei included",
    ),
    Group("accumbens", ("NAC",), (26, 58), "the accumbens-caudate-putamen border is drawn differently"),
    Group(
        "lateral ventricle",
        ("aLV", "bLV", "pLV", "xLV"),
        (4, 43),
        "the atlas has one brain's ventricles; living adults' differ several-fold (here aseg sd ~4 mL)",
    ),
    Group("inferior lateral ventricle", ("iLV",), (5, 44), "a thin CSF space, a few hundred mm^3"),
    Group("third ventricle", ("3V",), (14,)),
    Group("fourth ventricle", ("4V",), (15,)),
)
# FreeSurfer aseg names (FreeSurferColorLUT.txt) of the ids above, checked on the data by check_aseg_ids
ASEG_NAMES = {
    4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent",
    10: "Left-Thalamus-Proper",
    11: "Left-Caudate",
    12: "Left-Putamen",
    13: "Left-Pallidum",
    14: "3rd-Ventricle",
    15: "4th-Ventricle",
    17: "Left-Hippocampus",
    18: "Left-Amygdala",
    26: "Left-Accumbens-area",
    43: "Right-Lateral-Ventricle",
    44: "Right-Inf-Lat-Vent",
    49: "Right-Thalamus-Proper",
    50: "Right-Caudate",
    51: "Right-Putamen",
    52: "Right-Pallidum",
    53: "Right-Hippocampus",
    54: "Right-Amygdala",
    58: "Right-Accumbens-area",
}
SUMMARY_COLUMNS = [
    "atlas_spacing_mm",
    "method",
    "structure",
    "side",
    "aseg_id",
    "allen_ids",
    "subjects",
    "dice_mean",
    "dice_sd",
    "volume_reference_ml_mean",
    "volume_reference_ml_sd",
    "volume_propagated_ml_mean",
    "volume_propagated_ml_sd",
    "volume_ratio_mean",
    "volume_ratio_sd",
    "volume_difference_percent_mean",
    "volume_difference_percent_sd",
]
SUBJECT_COLUMNS = [
    "atlas_spacing_mm",
    "subject",
    "method",
    "structure",
    "side",
    "dice",
    "volume_reference_ml",
    "volume_propagated_ml",
    "seconds",
]
MEAN_ROW = "(mean over matched structures)"


def log(message: str) -> None:
    print(f"[allen_mindboggle {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Atlas and correspondence
# ----------------------------------------------------------------------------------------------


def read_atlas_table(atlas_dir: Path) -> list[dict]:
    with open(atlas_dir / "atlas_labels.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def resolve_groups(atlas_dir: Path) -> dict[tuple[str, str], dict]:
    """Per (group, side): the atlas's label ids of the group's abbreviations on that side, the
    abbreviations the atlas lacks there (dropped as too small at this spacing), and the aseg id.

    An abbreviation that is not an Allen structure at all is an error (a typo in the table)."""
    from unireg.atlas_allen import source_structures

    known = {s.abbreviation for s in source_structures().values()}
    unknown = sorted({a for g in CORRESPONDENCE for a in g.allen} - known)
    if unknown:
        raise SystemExit(f"allen_mindboggle: {unknown} are not Allen structure abbreviations")
    rows = read_atlas_table(atlas_dir)
    out = {}
    for group in CORRESPONDENCE:
        for side, aseg in zip(group.sides, group.aseg):
            ids = {
                r["abbreviation"]: int(r["index"])
                for r in rows
                if r["side"] == side and r["abbreviation"] in group.allen
            }
            out[(group.name, side)] = {
                "allen_ids": sorted(ids.values()),
                "present": [a for a in group.allen if a in ids],
                "missing": [a for a in group.allen if a not in ids],
                "aseg": aseg,
            }
    return out


def lookup(ids_by_key: dict[int, list[int]], size: int) -> np.ndarray:
    """A label -> group-number table (0: no group) of ``size`` entries."""
    table = np.zeros(size, dtype=np.int32)
    for number, ids in ids_by_key.items():
        table[np.asarray(ids, dtype=np.int64)] = number
    return table


# ----------------------------------------------------------------------------------------------
# One subject through the pipeline (the workflow's files, cached)
# ----------------------------------------------------------------------------------------------


def settings_key(spacing: float, steps: int, brain_extraction: bool, atlas_dir: Path, pooling: int) -> tuple[str, dict]:
    """The run folder's name and what it depends on (a change means a fresh run folder); ``pooling``:
    :func:`unireg.register.network_pooling` on this atlas."""
    from unireg import __version__
    from unireg.defaults import AFFINE_SIMILARITY, INSTANCE_OPT_SIMILARITY, MIRROR
    from unireg.model import DEFAULT_MODEL
    from unireg.weights import sha256_file

    settings = {
        "unireg": __version__,
        "atlas": ATLAS,
        "atlas_spacing_mm": spacing,
        "atlas_labels_sha256": sha256_file(atlas_dir / "atlas_labels.nii.gz"),
        "affine_similarity": AFFINE_SIMILARITY,
        "brain_extraction": brain_extraction,
        "model_sha256": sha256_file(DEFAULT_MODEL),
        "instance_opt": steps,
        "instance_opt_similarity": INSTANCE_OPT_SIMILARITY,
        "mirror": MIRROR,
    }
    if pooling > 1:  # only then does the network grid change the computation
        settings["network_pooling"] = pooling
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"{spacing:g}mm_io{steps}_{'bet' if brain_extraction else 'nobet'}_{digest}", settings


def run_subject(
    subject: str, atlas_dir: Path, folder: Path, steps: int, brain_extraction: bool, network_grid: str
) -> dict:
    """Preprocess, register and propagate (affine only and UniReg) one subject into ``folder``;
    returns the wall seconds of each stage. A folder with ``timings.json`` (written last) is
    complete: its timings are returned and nothing runs."""
    from unireg.atlas import ATLAS_FILES, load_atlas
    from unireg.defaults import AFFINE_SIMILARITY, DEVICE, INSTANCE_OPT_SIMILARITY
    from unireg.layout import PLAIN_NAMES
    from unireg.preprocess import PreprocessOptions, preprocess_file
    from unireg.propagate import propagate_files
    from unireg.register import InstanceOptOptions, register_files

    done = folder / "timings.json"
    if done.is_file():
        return json.loads(done.read_text())
    atlas_files = {key: atlas_dir / name for key, name in ATLAS_FILES.items()}
    pre, reg = PLAIN_NAMES["preprocess"], PLAIN_NAMES["register"]
    native = DATA / "t1" / f"{subject}_brain.nii.gz"
    timings = {}
    t0 = time.perf_counter()
    options = PreprocessOptions(brain_extraction=brain_extraction, similarity=AFFINE_SIMILARITY)
    preprocess_file(native, load_atlas(atlas_dir), folder, options, subject=subject)
    timings["preprocess_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    register_files(
        folder / pre["image"],
        atlas_files["image"],
        folder,
        moving_labels_path=atlas_files["labels"],
        instance_opt=InstanceOptOptions.schedule(steps, similarity=INSTANCE_OPT_SIMILARITY),
        device=DEVICE,
        subject=subject,
        fixed_mask_path=folder / pre["mask"],
        moving_mask_path=atlas_files["mask"],
        network_grid=network_grid,
    )
    timings["register_s"] = time.perf_counter() - t0
    for method, displacement in (("affine", None), ("unireg", folder / reg["displacement"])):
        t0 = time.perf_counter()
        propagate_files(
            atlas_files["labels"],
            native,
            folder / pre["affine"],
            folder / f"labels_{method}.nii.gz",
            displacement,
            subject=subject,
            table_path=atlas_files["table"],
        )
        timings[f"propagate_{method}_s"] = time.perf_counter() - t0
    timings = {k: round(v, 2) for k, v in timings.items()}
    done.write_text(json.dumps(timings, indent=2) + "\n")
    return timings


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


def load_reference(subject: str):
    from unireg.io import load_image

    return load_image(DATA / "labels" / f"{subject}_labels.nii.gz", label=True, subject=subject)


def check_aseg_ids(reference) -> dict[int, dict]:
    """Volume (mL) and world x centroid (mm, RAS) of every aseg id used, after checking that each
    is present and on its side (left ids at x < 0, right at x > 0, midline within 10 mm of the
    brain's centre)."""
    from unireg.io import apply_affine

    data = reference.data
    brain_x = apply_affine(reference.affine, np.argwhere(data > 0)[::97].astype(float))[:, 0].mean()
    voxel_ml = float(np.prod(reference.spacing)) / 1000.0
    out = {}
    for group in CORRESPONDENCE:
        for side, aseg in zip(group.sides, group.aseg):
            voxels = np.argwhere(data == aseg)
            if not len(voxels):
                raise SystemExit(f"allen_mindboggle: aseg id {aseg} ({group.name}) absent in {reference.path}")
            x = float(apply_affine(reference.affine, voxels.astype(float))[:, 0].mean() - brain_x)
            ok = {"left": x < 0, "right": x > 0, "midline": abs(x) < 10}[side]
            if not ok:
                raise SystemExit(f"allen_mindboggle: aseg id {aseg} ({group.name}, {side}) lies at x {x:+.1f} mm")
            out[aseg] = {"volume_ml": len(voxels) * voxel_ml, "x_mm": x}
    return out


def score_subject(reference, propagated: dict, groups: dict) -> list[dict]:
    """Per (method, group, side): Dice of the group's propagated labels against its aseg label, and
    both volumes (mL). ``propagated``: method -> label Image on the reference's grid."""
    from unireg.metrics import dice_per_label

    keys = list(groups)
    numbers = range(1, len(keys) + 1)
    voxel_ml = float(np.prod(reference.spacing)) / 1000.0
    ref = lookup({n: [groups[k]["aseg"]] for n, k in zip(numbers, keys)}, int(reference.data.max()) + 1)[reference.data]
    ref_counts = np.bincount(ref.ravel(), minlength=len(keys) + 1)
    rows = []
    for method, labels in propagated.items():
        if labels.shape != reference.shape or not np.allclose(labels.affine, reference.affine, atol=1e-3):
            raise SystemExit(f"allen_mindboggle: {labels.path} is not on the reference labels' grid")
        table = lookup({n: groups[k]["allen_ids"] for n, k in zip(numbers, keys)}, int(labels.data.max()) + 1)
        pred = table[labels.data]
        pred_counts = np.bincount(pred.ravel(), minlength=len(keys) + 1)
        dice = dice_per_label(ref, pred, list(numbers))
        for n, (name, side) in zip(numbers, keys):
            rows.append(
                {
                    "method": method,
                    "structure": name,
                    "side": side,
                    "dice": dice[n],
                    "volume_reference_ml": ref_counts[n] * voxel_ml,
                    "volume_propagated_ml": pred_counts[n] * voxel_ml,
                }
            )
    return rows


def mean_sd(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else float("nan"))


def summarise(spacing: float, rows: list[dict], groups: dict) -> list[dict]:
    out = []
    for method in METHODS:
        for name, side in groups:
            mine = [r for r in rows if (r["method"], r["structure"], r["side"]) == (method, name, side)]
            ref = np.array([r["volume_reference_ml"] for r in mine])
            prop = np.array([r["volume_propagated_ml"] for r in mine])
            row = {
                "atlas_spacing_mm": spacing,
                "method": method,
                "structure": name,
                "side": side,
                "aseg_id": groups[(name, side)]["aseg"],
                "allen_ids": " ".join(str(i) for i in groups[(name, side)]["allen_ids"]),
                "subjects": len(mine),
            }
            for key, values in (
                ("dice", [r["dice"] for r in mine]),
                ("volume_reference_ml", ref),
                ("volume_propagated_ml", prop),
                ("volume_ratio", prop / ref),
                ("volume_difference_percent", 100.0 * (prop - ref) / ref),
            ):
                row[f"{key}_mean"], row[f"{key}_sd"] = mean_sd(values)
            out.append(row)
    return out


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def pm(mean: float, sd: float, digits: int = 3) -> str:
    return f"{fmt(mean, digits)} ± {fmt(sd, digits)}"


def markdown(header, runs: dict, aseg_check: dict, notes: list[str], steps: int) -> str:
    lines = ["# Allen atlas -> Mindboggle OASIS-TRT-20: propagated subcortical structures vs FreeSurfer aseg", ""]
    lines += [f"- {h}" for h in header] + [""]
    lines += [
        "## Summary",
        "",
        "Mean over subjects of each subject's mean Dice over the matched structures (left, right and midline rows "
        "of the correspondence table), and of the mean absolute volume difference (% of the aseg volume).",
        "",
        "| atlas | method | subjects | matched structures | mean Dice | mean abs volume difference % | s / subject |",
        "|---|---|---|---|---|---|---|",
    ]
    for spacing, run in runs.items():
        for method, label in METHODS.items():
            per = [s for s in run["subjects"] if s["method"] == method]
            dice = [s["mean_dice"] for s in per]
            absdiff = [s["mean_abs_volume_difference_percent"] for s in per]
            label += f" (default model + {steps} IO steps)" if method == "unireg" else ""
            lines.append(
                f"| {spacing:g} mm | {label} | {len(per)} | {len(run['groups'])} | {pm(*mean_sd(dice))} | "
                f"{pm(*mean_sd(absdiff), 1)} | {fmt(float(np.mean([s['seconds'] for s in per])), 1)} |"
            )
    lines.append("")
    for spacing, run in runs.items():
        rows = {(r["method"], r["structure"], r["side"]): r for r in run["summary"]}
        lines += [
            f"## Per structure, atlas at {spacing:g} mm",
            "",
            "Mean ± sd over subjects. Volumes in mL on the native 1 mm grid; difference = 100 (propagated - "
            "aseg) / aseg; ratio = propagated / aseg.",
            "",
            "| structure | side | aseg id | Dice affine | Dice UniReg | aseg mL | affine mL | UniReg mL | "
            "ratio affine | ratio UniReg | difference % affine | difference % UniReg |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, side in run["groups"]:
            a, u = rows[("affine", name, side)], rows[("unireg", name, side)]
            lines.append(
                f"| {name} | {side} | {a['aseg_id']} | {pm(a['dice_mean'], a['dice_sd'])} | "
                f"{pm(u['dice_mean'], u['dice_sd'])} | "
                f"{pm(a['volume_reference_ml_mean'], a['volume_reference_ml_sd'], 2)} | "
                f"{pm(a['volume_propagated_ml_mean'], a['volume_propagated_ml_sd'], 2)} | "
                f"{pm(u['volume_propagated_ml_mean'], u['volume_propagated_ml_sd'], 2)} | "
                f"{pm(a['volume_ratio_mean'], a['volume_ratio_sd'], 2)} | "
                f"{pm(u['volume_ratio_mean'], u['volume_ratio_sd'], 2)} | "
                f"{pm(a['volume_difference_percent_mean'], a['volume_difference_percent_sd'], 0)} | "
                f"{pm(u['volume_difference_percent_mean'], u['volume_difference_percent_sd'], 0)} |"
            )
        lines += [
            "",
            f"### Per subject, atlas at {spacing:g} mm",
            "",
            "Mean Dice over the matched structures; seconds of each stage (wall clock, this machine, shared); "
            "QC from the registration record: brain-mask Dice after registration, % det J <= 0.",
            "",
            "| subject | mean Dice affine | mean Dice UniReg | preprocess s | register s | propagate s (affine + "
            "UniReg) | total s | brain-mask Dice | % det J <= 0 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        by_subject = {(s["subject"], s["method"]): s for s in run["subjects"]}
        for subject in run["subject_ids"]:
            a, u = by_subject[(subject, "affine")], by_subject[(subject, "unireg")]
            t = u["timings"]
            lines.append(
                f"| {subject} | {fmt(a['mean_dice'])} | {fmt(u['mean_dice'])} | {fmt(t['preprocess_s'], 1)} | "
                f"{fmt(t['register_s'], 1)} | {fmt(t['propagate_affine_s'] + t['propagate_unireg_s'], 1)} | "
                f"{fmt(u['seconds'], 1)} | {fmt(u['brain_mask_dice'])} | {fmt(u['folding_percent'], 4)} |"
            )
        lines.append("")
    lines += [
        "## Correspondence table",
        "",
        "Allen structures by abbreviation (the atlas table's `abbreviation`; taken on the row's side) <-> "
        "FreeSurfer aseg id. *Missing*: abbreviations the built atlas has no label for on that side (structures "
        "under 27 voxels of the atlas grid are dropped, `atlas.json` `small_structure_rule`).",
        "",
        "| structure | Allen abbreviations | aseg ids | "
        + " | ".join(f"missing at {s:g} mm" for s in runs)
        + " | caveat |",
        "|---|---|---|" + "---|" * len(runs) + "---|",
    ]
    for group in CORRESPONDENCE:
        missing = []
        for run in runs.values():
            lost = sorted({a for side in group.sides for a in run["groups"][(group.name, side)]["missing"]})
            missing.append(", ".join(lost) or "none")
        aseg = " / ".join(f"{i} {ASEG_NAMES[i]}" for i in group.aseg)
        lines.append(
            f"| {group.name} | {' + '.join(group.allen)} | {aseg} | {' | '.join(missing)} | {group.caveat or '-'} |"
        )
    lines += [
        "",
        "## aseg ids, checked on the data",
        "",
        "Every id is present in every subject and on its side (centroid x relative to the labelled brain's "
        "centre, RAS mm; left < 0 < right); volume mean ± sd over subjects.",
        "",
        "| aseg id | FreeSurfer name | mL | centroid x mm |",
        "|---|---|---|---|",
    ]
    for aseg in sorted(aseg_check):
        values = aseg_check[aseg]
        lines.append(
            f"| {aseg} | {ASEG_NAMES[aseg]} | {pm(*mean_sd([v['volume_ml'] for v in values]), 2)} | "
            f"{pm(*mean_sd([v['x_mm'] for v in values]), 1)} |"
        )
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spacings", default="2", help="atlas spacings in mm, comma-separated (default 2)")
    parser.add_argument("--subjects", type=int, default=len(SUBJECTS), help="the first N of the 10 subjects")
    parser.add_argument("--instance-opt", type=int, help="IO steps (default: unireg's default, 30)")
    parser.add_argument(
        "--brain-extraction", action="store_true", help="run deepbet in preprocess (default off: see the notes)"
    )
    parser.add_argument(
        "--network-grid",
        choices=NETWORK_GRIDS,
        default=NETWORK_GRID,
        help=f"unireg register --network-grid (default {NETWORK_GRID}); another value writes "
        "allen_mindboggle.network-<value>.{md,csv}",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--cache", type=Path, help="default runs/cache/allen_mindboggle (--smoke: <out>/cache)")
    parser.add_argument("--smoke", action="store_true", help=f"a quick test run: {SMOKE}")
    args = parser.parse_args(argv)
    from unireg.defaults import INSTANCE_OPT_STEPS

    args.spacings = tuple(float(s) for s in args.spacings.split(","))
    if args.smoke:
        args.subjects, args.spacings = SMOKE["subjects"], SMOKE["spacings"]
        args.instance_opt = args.instance_opt if args.instance_opt is not None else SMOKE["instance_opt"]
    args.instance_opt = INSTANCE_OPT_STEPS if args.instance_opt is None else args.instance_opt
    args.cache = args.cache or (args.out / "cache" if args.smoke else REPO / "runs" / "cache" / "allen_mindboggle")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from unireg.atlas import load_atlas, prepare_atlas
    from unireg.io import load_image
    from unireg.model import load_checkpoint
    from unireg.register import network_pooling

    _, checkpoint = load_checkpoint()  # the packaged model: its training grid decides the network pooling

    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()[0]
    t_start = time.perf_counter()
    subject_ids = SUBJECTS[: args.subjects]
    for subject in subject_ids:
        for kind, suffix in (("t1", "brain"), ("labels", "labels")):
            if not (DATA / kind / f"{subject}_{suffix}.nii.gz").is_file():
                raise SystemExit(f"allen_mindboggle: {DATA / kind / f'{subject}_{suffix}.nii.gz'} not found")
    references = {s: load_reference(s) for s in subject_ids}
    aseg_check: dict[int, list] = {}
    for reference in references.values():
        for aseg, value in check_aseg_ids(reference).items():
            aseg_check.setdefault(aseg, []).append(value)

    runs, all_rows, pooled = {}, [], {}
    for spacing in args.spacings:
        atlas_dir = args.cache / f"atlas-{ATLAS}-{spacing:g}mm"
        if not (atlas_dir / "atlas.json").is_file():
            log(f"building {ATLAS} at {spacing:g} mm")
            prepare_atlas(ATLAS, atlas_dir, spacing)
        groups = resolve_groups(atlas_dir)
        grid = load_atlas(atlas_dir).grid
        pooled[spacing] = network_pooling(grid.shape, grid.spacing, checkpoint["grid"]["spacing_mm"], args.network_grid)
        key, settings = settings_key(spacing, args.instance_opt, args.brain_extraction, atlas_dir, pooled[spacing])
        run_dir = args.cache / key
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        subjects, rows = [], []
        for subject in subject_ids:
            log(f"{spacing:g} mm: {subject}")
            folder = run_dir / subject
            timings = run_subject(
                subject, atlas_dir, folder, args.instance_opt, args.brain_extraction, args.network_grid
            )
            registration = json.loads((folder / "registration.json").read_text())
            propagated = {m: load_image(folder / f"labels_{m}.nii.gz", label=True) for m in METHODS}
            scored = score_subject(references[subject], propagated, groups)
            seconds = {
                "affine": timings["preprocess_s"] + timings["propagate_affine_s"],
                "unireg": timings["preprocess_s"] + timings["register_s"] + timings["propagate_unireg_s"],
            }
            for method in METHODS:
                mine = [r for r in scored if r["method"] == method]
                diffs = [abs(r["volume_propagated_ml"] / r["volume_reference_ml"] - 1) * 100 for r in mine]
                subjects.append(
                    {
                        "subject": subject,
                        "method": method,
                        "mean_dice": float(np.mean([r["dice"] for r in mine])),
                        "mean_abs_volume_difference_percent": float(np.mean(diffs)),
                        "seconds": seconds[method],
                        "timings": timings,
                        "brain_mask_dice": registration["qc"]["brain_mask_dice_after"],
                        "folding_percent": registration["jacobian"]["folding_percent"],
                    }
                )
            for r in scored:
                rows.append({"atlas_spacing_mm": spacing, "subject": subject, **r})
        for s in subjects:
            rows.append(
                {
                    "atlas_spacing_mm": spacing,
                    "subject": s["subject"],
                    "method": s["method"],
                    "structure": MEAN_ROW,
                    "dice": s["mean_dice"],
                    "seconds": s["seconds"],
                }
            )
        runs[spacing] = {
            "groups": groups,
            "subjects": subjects,
            "subject_ids": subject_ids,
            "summary": summarise(spacing, [r for r in rows if r["structure"] != MEAN_ROW], groups),
            "cache": run_dir,
        }
        all_rows += rows

    wall = time.perf_counter() - t_start
    header = provenance(
        started,
        command_line(argv, "benchmarks/allen_mindboggle.py"),
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; shared with other jobs "
        f"(load average {load:.1f} at the start)",
    ) + [
        f"wall time: {wall / 60:.1f} min (cache {args.cache}; cached subjects keep the seconds of the run that "
        "made them)",
        f"data: {len(subject_ids)} Mindboggle-101 OASIS-TRT-20 subjects ({', '.join(subject_ids)}), skull-stripped "
        "T1, 256x256x160 at 1 mm, native space (Klein & Tourville 2012, CC BY-NC-SA 3.0)",
        f"atlas: {ATLAS} (Allen Human Reference Atlas 3D 2020 on MNI ICBM152 2009a) at "
        + ", ".join(f"{s:g} mm" for s in args.spacings),
        f"UniReg: packaged default model, {args.instance_opt} instance-optimisation steps "
        f"({'the default' if args.instance_opt == 30 else 'NOT the default 30'}), squared LNCC; network grid "
        f"`{args.network_grid}` ("
        + ", ".join(f"{s:g} mm atlas: network on the images pooled by {pooled[s]}" for s in args.spacings)
        + ")",
    ]
    if args.smoke:
        header.insert(0, f"SMOKE run ({SMOKE}): a test of the script, not a result")
    notes = [
        "Reference: the subcortical labels of Mindboggle's `labels` maps are FreeSurfer's automatic aseg "
        "(Mindboggle's 'DKT31 manual + aseg': only the cortical labels are manual), so Dice here is agreement "
        "with FreeSurfer, not with manual tracing.",
        "Preprocessing: " + BRAIN_EXTRACTION_NOTE + ".",
        "Propagation: nearest neighbour from the atlas grid into the native 1 mm grid, as `unireg propagate` "
        "does; at 2 mm the Allen labels are 2 mm blocks, which alone costs Dice on small structures.",
        "Affine only: the same preprocess affine, no displacement (`unireg propagate` without --displacement).",
        "Atlas spacing: the structures dropped as too small at 2 mm (correspondence table) leave their voxels "
        "unlabelled, so the groups holding them (amygdala, thalamus, caudate) are smaller at 2 mm than at 1 mm.",
        "Seconds: per subject, preprocess + (register) + propagate of that method, wall clock; the 2 cores of "
        "this machine were shared with other jobs, so times are upper bounds.",
        "sd: sample standard deviation over subjects (ddof 1). A structure missing from the propagated labels "
        "counts Dice 0 and volume 0.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(header, runs, aseg_check, notes, args.instance_opt)
    stem = "allen_mindboggle" + ("" if args.network_grid == NETWORK_GRID else f".network-{args.network_grid}")
    (args.out / f"{stem}.md").write_text(text)
    summary = [r for run in runs.values() for r in run["summary"]]
    write_csv(args.out / f"{stem}.csv", summary, SUMMARY_COLUMNS, header)
    write_csv(args.out / f"{stem}.subjects.csv", all_rows, SUBJECT_COLUMNS, header)
    print(text)


if __name__ == "__main__":
    main()
