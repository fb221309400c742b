"""Domain shift: frozen pretrained features vs the same network trained end to end (prints a table).

Run (writes benchmarks/results/domain_shift.{md,csv}, prints the markdown):

    nice -n 5 .venv/bin/python benchmarks/domain_shift.py --cache runs/cache --io-pairs 5
    .venv/bin/python benchmarks/domain_shift.py --smoke --out /tmp/domain_shift     # < 2 min

Needs ../shared/data and, outside --smoke, the checkpoints of the two training runs below.

**Models.** Every model was trained on IXI T1 only (30 HH subjects, split of
config/train_default.yaml, ``data.split_seed: 0``) with the same recipe (loss, augmentation,
Adam lr 1e-3, seed 0) and differs only in its feature extractor:

* ``mobilenet``: the packaged unireg_mobilenet_v1_025.pt (frozen ImageNet MobileNetV1 x0.25),
  recipe config/train_default.yaml;
* ``mind``: the packaged unireg_mind.pt (frozen MIND-SSC, a cascade of 3 UNets),
  config/train_mind_cascade2.yaml, then config/train_mind_cascade2_more.yaml,
  config/train_mind_cascade2_smooth01.yaml and config/train_mind_cascade3_grown_smooth01.yaml, each
  from the weights of the one before;
* ``reinit``: ablation, frozen MobileNet whose first conv (the earliest layer) is re-initialised
  randomly (extractor ``mobilenet_v1_025_reinit``), config/train_reinit.yaml -> runs/reinit/model.pt;
* ``scratch``: the same encoder architecture randomly initialised and trained end to end with the
  UNet (extractor ``scratch``), config/train_scratch.yaml -> runs/scratch/model.pt;
* ``remap``: the default recipe with random-contrast augmentation (``train.augment.remap`` 0.5),
  config/train_remap.yaml -> runs/remap/model.pt;
* ``mobilenet_mind``: frozen MobileNet + MIND-SSC channels side by side (extractor
  ``mobilenet_v1_025+mind``), config/train_mobilenet_mind.yaml -> runs/mobilenet_mind/model.pt;
* ``affine``: no deformable step (the floor).

Each checkpoint's own model card gives the seed, steps and training time reported in the table;
the validation subjects of every card are checked to be the ones tested here. Each method's rows
are kept in ``<cache>/scores/`` under a key of its checkpoint (path and sha256), grid, pairs and IO
settings: a rerun with one more method, or a retrained checkpoint, only scores what changed.

**Test pairs.** The 10 validation subjects of that split, paired as ``unireg train`` validates
(fixed = subject k, moving = subject k + 1, k = 0..8), preprocessed like the training data
(:func:`unireg.train.prepare_subject`: deepbet, percentile normalisation, MI affine to the MNI
2009a atlas grid, 80x96x96 at 2 mm); the moving subject's 148 DLMUSE labels are warped onto the
fixed one and scored with mean Dice over the fixed subject's labels (a lost label counts 0), the
number ``unireg train`` logs as ``val_dice``. Test cases (:data:`CASES`): ``T1`` (the source
domain); *same contrast*, both images remapped to T2-, PD- or CT-like (the paper's cross-domain
case: a domain no model saw); *cross contrast*, T1 moving (the atlas's role) -> fixed remapped (the
pipeline's case). The remaps are benchmarks/peers.py's (:data:`CONTRASTS`,
:func:`synthetic_contrast`: piecewise linear through each image's own CSF/GM/WM means of a 3-class
k-means in the brain, then unireg's normalisation). Drop = Dice(T1) - Dice(case). Every method is
scored twice: the network alone, and + ``--io-steps`` of the shipped instance optimisation.

**Real T2.** IXI002-Guys-0828 (another site, not in the 40) in T1 and T2, HD-BET
brain-extracted, preprocessed without brain extraction: brain-mask Dice of T2 (moving) -> T1
(fixed), and agreement = mean label Dice between the atlas (validation subject 0) labels
propagated to the T1 (T1 -> T1) and to the T2 (T1 -> T2), the latter mapped onto the T1 grid
through the two preprocessing affines (the scans share scanner space), as in peers.py.

% det J <= 0 over the whole grid, from :func:`unireg.fields.jacobian_stats`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import peers  # noqa: E402  (the same contrast remaps, IXI002 cases and report helpers)
from peers import CONTRASTS, fmt, synthetic_contrast, write_csv  # noqa: E402

SHARED = Path(os.environ.get("UNIREG_SHARED_DATA", REPO.parent / "shared" / "data"))
IXI = SHARED / "ixi_t1_dlmuse"
IXI002 = SHARED / "ixi002_t1_t2"
MODELS = REPO / "unireg" / "data" / "models"

# key: (label, recipe, default checkpoint); affine has neither
METHODS = {
    "affine": ("affine only (floor)", None, None),
    "mobilenet": (
        "UniReg, frozen ImageNet MobileNet",
        "config/train_default.yaml",
        MODELS / "unireg_mobilenet_v1_025.pt",
    ),
    "mind": ("UniReg, frozen MIND-SSC", "config/train_mind_cascade3_grown_smooth01.yaml", MODELS / "unireg_mind.pt"),
    "reinit": (
        "UniReg, frozen MobileNet, 1st conv re-initialised",
        "config/train_reinit.yaml",
        REPO / "runs" / "reinit" / "model.pt",
    ),
    "scratch": (
        "same network, encoder trained end to end (scratch)",
        "config/train_scratch.yaml",
        REPO / "runs" / "scratch" / "model.pt",
    ),
    "remap": (
        "UniReg, frozen ImageNet MobileNet, random-contrast augmentation",
        "config/train_remap.yaml",
        REPO / "runs" / "remap" / "model.pt",
    ),
    "mobilenet_mind": (
        "UniReg, frozen ImageNet MobileNet + MIND-SSC",
        "config/train_mobilenet_mind.yaml",
        REPO / "runs" / "mobilenet_mind" / "model.pt",
    ),
    "mind_remap": (
        "UniReg, frozen MIND-SSC, random-contrast augmentation",
        "config/train_mind_remap.yaml",
        REPO / "runs" / "mind_remap" / "model.pt",
    ),
    "mobilenet_mind_remap": (
        "UniReg, frozen ImageNet MobileNet + MIND-SSC, random-contrast augmentation",
        "config/train_mobilenet_mind_remap.yaml",
        REPO / "runs" / "mobilenet_mind_remap" / "model.pt",
    ),
}
# checkpoints trained from config/ into runs/, not packaged
TRAINED_HERE = ("reinit", "scratch", "remap", "mobilenet_mind", "mind_remap", "mobilenet_mind_remap")
# test case key -> (fixed contrast, moving contrast, title); the moving image is the T1 subject's own remap
CASES = {
    "t1": ("t1", "t1", "T1 (source)"),
    "t2/t2": ("t2", "t2", "T2-like -> T2-like"),
    "pd/pd": ("pd", "pd", "PD-like -> PD-like"),
    "ct/ct": ("ct", "ct", "CT-like -> CT-like"),
    "t1/t2": ("t2", "t1", "T1 -> T2-like"),
    "t1/pd": ("pd", "t1", "T1 -> PD-like"),
    "t1/ct": ("ct", "t1", "T1 -> CT-like"),
}
CONTRAST_TITLES = {key: title for key, (_, _, title) in CASES.items()}
REAL = "IXI002 real T2 (T2 -> T1)"
SAME = ("t2/t2", "pd/pd", "ct/ct")  # the paper's cross-domain case: both images in an unseen contrast
CROSS = ("t1/t2", "t1/pd", "t1/ct")  # the pipeline's case: T1 atlas -> subject of another contrast
NETWORK = "network alone"
IO_STEPS = 30  # the shipped default's instance-optimisation steps (register.instance_opt)
SMOKE = {"grid_mm": 4.0, "pairs": 1, "io_steps": 3}
COLUMNS = [
    "method",
    "mode",
    "contrast",
    "pairs",
    "dice_mean",
    "dice_sd_over_pairs",
    "drop_from_t1",
    "drop_percent",
    "brain_mask_dice",
    "agreement_dice",
    "folding_percent",
    "checkpoint",
    "extractor",
    "train_seed",
    "train_steps",
    "train_seconds",
    "train_device",
]


def log(message: str) -> None:
    print(f"[domain_shift {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def validation_split() -> tuple[list[str], list[str]]:
    """(train, validation) ids of config/train_default.yaml's split (all recipes share it)."""
    from unireg.train import discover_dataset, load_config, split_dataset

    data = load_config(REPO / "config" / "train_default.yaml")["data"]
    items = discover_dataset(IXI / "t1", IXI / "labels")
    train, val = split_dataset(items, data["n_train"], data["n_val"], data["split_seed"], data["exclude"])
    return [r["id"] for r in train], [r["id"] for r in val]


def prepare(atlas, val_ids: list[str], n_pairs: int, cache: Path) -> tuple[list[dict], dict]:
    """The labelled test cases (one per pair and contrast) and the IXI002 arrays."""
    subjects = peers.preprocess_ixi(val_ids[: n_pairs + 1], atlas, cache)  # Images: synthetic_contrast needs them
    cases = []
    for k in range(n_pairs):
        fixed, moving = subjects[val_ids[k]], subjects[val_ids[k + 1]]

        def view(subject, contrast: str, seed: int) -> np.ndarray:
            if contrast == "t1":
                return subject["image"].data.astype(np.float32)
            return synthetic_contrast(subject["image"], subject["mask"], contrast, seed=seed).data.astype(np.float32)

        for key, (fixed_contrast, moving_contrast, _) in CASES.items():
            cases.append(
                {
                    "contrast": key,
                    "pair": k,
                    "fixed": view(fixed, fixed_contrast, seed=k),
                    "moving": view(moving, moving_contrast, seed=100 + k),  # its own noise
                    "moving_id": f"{moving['id']}:{moving_contrast}",
                    "reference": fixed["labels"],
                    "moving_labels": moving["labels"],
                }
            )
    # IXI002: peers.py's own cases (same preprocessing, masks and grid mapping), moving atlas = val_ids[0]
    _, arrays, refs, atlas_id, _ = peers.preprocess_all(
        argparse.Namespace(pairs=0, tasks=["ixi002"]), atlas, val_ids, cache
    )
    ixi002 = {
        name: {"fixed": arrays[name][0], "moving": arrays[name][1], **refs[name]}
        for name in ("ixi002_T2_to_T1", "ixi002_atlas_to_T1", "ixi002_atlas_to_T2")
    }
    ixi002["atlas_id"] = atlas_id
    return cases, ixi002


# ----------------------------------------------------------------------------------------------
# Models and registration
# ----------------------------------------------------------------------------------------------


def load_model(method: str, checkpoint: Path | None, val_ids: list[str], smoke: bool):
    """(model or None, record of where it came from); in --smoke the two new runs are untrained stand-ins."""
    import torch

    from unireg.model import build_model, load_checkpoint
    from unireg.train import load_config, steps_seen

    _, recipe, _ = METHODS[method]
    if method == "affine":
        return None, {
            "checkpoint": "-",
            "extractor": "-",
            "train_seed": None,
            "train_steps": None,
            "train_seconds": None,
            "train_device": None,
        }
    if smoke and method in TRAINED_HERE:
        torch.manual_seed(0)
        model = build_model(load_config(REPO / recipe)["model"]).eval()
        return model, {
            "checkpoint": "untrained stand-in (--smoke)",
            "extractor": model.extractor.name,
            "train_seed": 0,
            "train_steps": 0,
            "train_seconds": 0.0,
            "train_device": None,
        }
    if not checkpoint.is_file():
        raise SystemExit(
            f"domain_shift: {method}: checkpoint {checkpoint} not found; train it with "
            f"`nice -n 5 .venv/bin/python -m unireg train --config {recipe} --no-progress`"
        )
    model, payload = load_checkpoint(checkpoint)
    card = payload["model_card"]
    if card["val_subjects"] != val_ids:
        raise SystemExit(
            f"domain_shift: {checkpoint} was validated on other subjects than the test subjects here; "
            "it may have been trained on them"
        )
    shown = checkpoint.relative_to(REPO) if checkpoint.is_relative_to(REPO) else checkpoint
    sha = checkpoint.with_name(checkpoint.name + ".sha256").read_text().split()[0]
    # a --checkpoint of another network than the method's recipe says how it differs
    recipe_model = load_config(REPO / recipe)["model"]
    network, recipe_network = ({"cascade": 1, **cfg} for cfg in (payload["config"], recipe_model))
    differs = {k: v for k, v in network.items() if recipe_network.get(k) != v}
    if differs:
        recipe = f"{recipe} but model {', '.join(f'{k}: {v}' for k, v in differs.items())}"
    # a run from trained weights (train.init) says how many steps came before it
    before = (card.get("init") or {}).get("steps") or 0
    device = card.get("device")
    if before and device:
        device = f"{device} (its run; {before} steps before it: train.init)"
    return model, {
        "checkpoint": f"{shown} (sha256 {sha[:12]})",
        "extractor": card["extractor"],
        "train_seed": card["seed"],
        "train_steps": steps_seen(card),  # the steps the shipped weights saw, their lineage included
        "train_seconds": card.get("train_seconds", card.get("train_seconds_this_run")),
        "train_device": device,
        "recipe": recipe,
    }


def register(model, fixed: np.ndarray, moving: np.ndarray, features: dict, key: str, io_steps: int = 0):
    """Displacement (1, 3, D, H, W) in fixed-grid voxels: the network alone, or refined by ``io_steps``
    of the shipped default's instance optimisation. The moving image's features are memoised by ``key``."""
    import torch

    from unireg.fields import resize_field
    from unireg.register import InstanceOptOptions, instance_optimise

    if model is None:
        return torch.zeros((1, 3, *fixed.shape))
    fixed_t, moving_t = torch.from_numpy(fixed)[None, None], torch.from_numpy(moving)[None, None]
    if key not in features:
        features[key] = model.features(moving_t)
    flow_ddf, velocity = model.predict(model.features(fixed_t), features[key])
    if not io_steps:
        return resize_field(flow_ddf, tuple(fixed.shape))
    with torch.enable_grad():
        options = InstanceOptOptions.schedule(io_steps)
        ddf = instance_optimise(model, fixed_t, moving_t, flow_ddf, options, velocity=velocity)
    return ddf.detach()


def evaluate(method: str, model, cases: list[dict], ixi002: dict, grid, io_steps: int = 0) -> list[dict]:
    """Rows of one method in one mode: the network alone (``io_steps`` 0) or + ``io_steps`` of IO."""
    import torch

    from unireg.fields import jacobian_stats
    from unireg.io import Image
    from unireg.metrics import mean_dice
    from unireg.transforms import resample

    def warp_labels(labels: np.ndarray, ddf) -> np.ndarray:
        return peers.warp_labels(labels, ddf[0].numpy())

    mode = NETWORK if not io_steps else f"+ {io_steps} IO steps"
    rows, features = [], {}
    with torch.no_grad():
        by_contrast: dict[str, list] = {c: [] for c in CASES}
        for case in cases:
            ddf = register(model, case["fixed"], case["moving"], features, case["moving_id"], io_steps)
            dice = mean_dice(case["reference"], warp_labels(case["moving_labels"], ddf))
            by_contrast[case["contrast"]].append((dice, jacobian_stats(ddf)["folding_percent"]))
        t1_dice = float(np.mean([d for d, _ in by_contrast["t1"]]))
        for contrast, values in by_contrast.items():
            dice = np.array([d for d, _ in values])
            rows.append(
                {
                    "method": method,
                    "mode": mode,
                    "contrast": CONTRAST_TITLES[contrast],
                    "pairs": len(values),
                    "dice_mean": float(dice.mean()),
                    "dice_sd_over_pairs": float(dice.std(ddof=1)) if len(dice) > 1 else None,
                    "drop_from_t1": t1_dice - float(dice.mean()),
                    "drop_percent": 100.0 * (t1_dice - float(dice.mean())) / t1_dice,
                    "folding_percent": float(np.mean([f for _, f in values])),
                }
            )
        # IXI002: T2 -> T1 (brain masks); atlas -> T1 and atlas -> T2 (agreement, on the T1 grid)
        real = ixi002["ixi002_T2_to_T1"]
        ddf = register(model, real["fixed"], real["moving"], features, "IXI002_T2", io_steps)
        mask_dice = mean_dice(real["reference"], warp_labels(real["moving_labels"], ddf))
        folding = jacobian_stats(ddf)["folding_percent"]
        propagated = {}
        for name in ("ixi002_atlas_to_T1", "ixi002_atlas_to_T2"):
            case = ixi002[name]
            ddf_atlas = register(model, case["fixed"], case["moving"], features, ixi002["atlas_id"], io_steps)
            propagated[name] = warp_labels(case["moving_labels"], ddf_atlas)
        on_t1 = resample(
            Image(propagated["ixi002_atlas_to_T2"], grid.affine, is_label=True),
            grid,
            ixi002["ixi002_atlas_to_T2"]["to_t1_grid"],
        ).data
        rows.append(
            {
                "method": method,
                "mode": mode,
                "contrast": REAL,
                "pairs": 1,
                "brain_mask_dice": float(mask_dice),
                "agreement_dice": float(mean_dice(propagated["ixi002_atlas_to_T1"], on_t1)),
                "folding_percent": float(folding),
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def markdown(rows: list[dict], header: list[str], notes: list[str], models: dict) -> str:
    lines = ["# Domain shift: trained on IXI T1 only, tested on T1 and unseen contrasts", ""]
    lines += [f"- {h}" for h in header] + [""]
    lines += [
        "## Models",
        "",
        "| method | extractor | checkpoint | recipe | train seed | train steps | train time | trained on |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, rec in models.items():
        seconds = rec.get("train_seconds")
        lines.append(
            f"| {METHODS[method][0]} | {rec['extractor']} | {rec['checkpoint']} | {rec.get('recipe', '-')} | "
            f"{fmt(rec['train_seed'])} | {fmt(rec['train_steps'])} | "
            f"{'-' if seconds is None else f'{seconds / 60:.0f} min'} | {rec.get('train_device') or '-'} |"
        )
    labelled = [r for r in rows if r["contrast"] != REAL]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    lines += [
        "",
        "## Summary: mean Dice (drop from T1)",
        "",
        "Same contrast = both images in a contrast no model saw (the paper's cross-domain case); cross-contrast = "
        "T1 moving (the atlas) -> fixed subject in another contrast (the pipeline's case).",
        "",
        "| method | mode | T1 (source) | "
        + " | ".join(f"same: {CONTRAST_TITLES[k].split(' ')[0]}" for k in SAME)
        + " | "
        + " | ".join(f"cross: {CONTRAST_TITLES[k]}" for k in CROSS)
        + " | IXI002 T2 -> T1 mask Dice | IXI002 agreement |",
        "|---" * (len(CASES) + 4) + "|",
    ]
    for method in models:
        for mode in modes:
            mine = {r["contrast"]: r for r in labelled if r["method"] == method and r["mode"] == mode}
            if not mine:
                continue
            cells = []
            for title in CONTRAST_TITLES.values():
                r = mine[title]
                cells.append(
                    fmt(r["dice_mean"]) + ("" if title.startswith("T1 (") else f" ({-r['drop_from_t1']:+.3f})")
                )
            real = next(r for r in rows if r["method"] == method and r["mode"] == mode and r["contrast"] == REAL)
            lines.append(
                f"| {METHODS[method][0]} | {mode} | "
                + " | ".join(cells)
                + f" | {fmt(real['brain_mask_dice'])} | {fmt(real['agreement_dice'])} |"
            )
    lines += [
        "",
        "## Per (method, mode, test case)",
        "",
        "Dice: mean over pairs of the mean over the fixed subject's DLMUSE labels; sd over pairs; drop = "
        "Dice(T1) - Dice(case), also as % of Dice(T1); % det J <= 0: mean over pairs, whole grid.",
        "",
        "| method | mode | test case | pairs | Dice | sd | drop from T1 | drop % | brain-mask Dice | "
        "agreement Dice | % det J <= 0 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {METHODS[r['method']][0]} | {r['mode']} | {r['contrast']} | {r['pairs']} | {fmt(r.get('dice_mean'))} | "
            f"{fmt(r.get('dice_sd_over_pairs'))} | {fmt(r.get('drop_from_t1'))} | "
            f"{fmt(r.get('drop_percent'), 1)} | {fmt(r.get('brain_mask_dice'))} | "
            f"{fmt(r.get('agreement_dice'))} | {fmt(r.get('folding_percent'), 4)} |"
        )
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=9, help="validation pairs (k -> k + 1), 1..9 (default 9)")
    parser.add_argument("--grid-mm", type=float, default=2.0, help="atlas grid spacing (the models: 2 mm)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="METHOD=PATH",
        help="a method's checkpoint instead of its default (repeatable), e.g. remap=runs/remap/model.pt",
    )
    parser.add_argument(
        "--io-steps",
        type=int,
        default=IO_STEPS,
        help=f"instance-optimisation steps of the '+ IO' rows (default {IO_STEPS}, as shipped; 0: none)",
    )
    parser.add_argument(
        "--io-pairs",
        type=int,
        default=None,
        help="pairs of the '+ IO' rows (default: all --pairs; IO costs ~5 s a pair)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--name", default="domain_shift", help="stem of the table files in --out (default domain_shift)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="preprocessing cache folder (default "
        "$UNIREG_HOME/domain_shift/<grid>mm; runs/cache reuses the training recipes')",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"quick check: {SMOKE}, {', '.join(TRAINED_HERE)} untrained stand-ins (no checkpoints needed)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.grid_mm, args.pairs, args.io_steps = SMOKE["grid_mm"], SMOKE["pairs"], SMOKE["io_steps"]
    args.io_pairs = min(args.io_pairs or args.pairs, args.pairs)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or "affine" not in args.methods:
        parser.error(f"methods must include affine and come from {', '.join(METHODS)} (got {unknown or args.methods})")
    if not 1 <= args.pairs <= 9:
        parser.error("--pairs must be 1..9")
    if any("=" not in item or item.split("=", 1)[0] not in METHODS for item in args.checkpoint):
        parser.error(f"--checkpoint takes METHOD=PATH with METHOD one of {', '.join(METHODS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    started, t_start = datetime.datetime.now().astimezone(), time.perf_counter()
    missing = [str(p) for p in (IXI, IXI002) if not p.is_dir()]
    if missing:
        raise SystemExit(f"domain_shift: real data not found: {', '.join(missing)} (../shared/data is absent)")
    import torch

    from unireg.atlas import builtin_atlas
    from unireg.defaults import TISSUE_ATLAS

    torch.set_num_threads(args.threads)
    atlas = builtin_atlas(TISSUE_ATLAS, args.grid_mm)
    home = Path(os.environ.get("UNIREG_HOME", Path.home() / ".cache" / "unireg"))
    cache = args.cache or home / "domain_shift" / f"{args.grid_mm:g}mm"
    train_ids, val_ids = validation_split()
    assert not set(train_ids) & set(val_ids)
    checkpoints = {method: Path(path) for method, path in (item.split("=", 1) for item in args.checkpoint)}
    models = {}
    loaded = {}
    for method in [m for m in METHODS if m in args.methods]:
        loaded[method], models[method] = load_model(
            method, checkpoints.get(method, METHODS[method][2]), val_ids, args.smoke
        )
    cases, ixi002 = prepare(atlas, val_ids, args.pairs, cache)
    t_prep = time.perf_counter() - t_start
    rows = []
    io_cases = [c for c in cases if c["pair"] < args.io_pairs]
    scored = cache / "scores"  # one method's rows, kept so that a rerun (e.g. with a new method) does not pay again
    for method, model in loaded.items():
        settings = [args.pairs, args.io_steps if model is not None else 0, args.io_pairs, models[method]["checkpoint"]]
        key = hashlib.sha256(json.dumps([method, args.grid_mm, *settings]).encode()).hexdigest()[:16]
        kept = scored / f"{method}-{key}.json"
        if kept.is_file() and not args.smoke:
            rows += json.loads(kept.read_text())
            log(f"{method}: rows from {kept} (same checkpoint, pairs and IO settings)")
            continue
        t0 = time.perf_counter()
        mine = evaluate(method, model, cases, ixi002, atlas.grid)
        log(f"{method}: {len(cases) + 3} registrations in {time.perf_counter() - t0:.0f} s")
        if args.io_steps and model is not None:
            t0 = time.perf_counter()
            mine += evaluate(method, model, io_cases, ixi002, atlas.grid, args.io_steps)
            log(f"{method} + IO: {len(io_cases) + 3} registrations in {time.perf_counter() - t0:.0f} s")
        scored.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(mine))
        rows += mine

    steps = {rec["train_steps"] for m, rec in models.items() if m != "affine"}
    for row in rows:
        row.update(
            {
                k: models[row["method"]][k]
                for k in ("checkpoint", "extractor", "train_seed", "train_steps", "train_seconds", "train_device")
            }
        )
    grid = "x".join(str(s) for s in atlas.grid.shape)
    header = [
        *peers.provenance(
            started,
            peers.command_line(argv, "benchmarks/domain_shift.py"),
            f"torch {torch.__version__}, {args.threads} threads, CPU",
        ),
        f"wall time: {(time.perf_counter() - t_start) / 60:.1f} min ({t_prep:.0f} s loading and preprocessing, "
        f"cache {cache})",
        f"grid: MNI 2009a atlas grid {grid} at {args.grid_mm:g} mm"
        + (" (the models' training grid)" if args.grid_mm == 2 else " (NOT the models' 2 mm training grid)")
        + (f"; SMOKE settings: {', '.join(TRAINED_HERE)} are untrained stand-ins" if args.smoke else ""),
        f"pairs: {args.pairs} validation pairs of the shared split (fixed {', '.join(val_ids[: args.pairs])}; moving "
        f"the next subject of {', '.join(val_ids)}); IXI002 atlas = {val_ids[0]}",
    ]
    notes = [
        "Training data of every model: IXI T1 only (30 HH subjects); none of the test subjects, and no T2/PD/CT, "
        "was seen in training. Same recipe and seed policy for all (config/train_default.yaml with only "
        "model.extractor and train.augment.remap changed; train.seed 0, Adam lr 1e-3, LNCC + diffusion + Dice on "
        "16 random labels per step); training budgets in the Models table.",
        "remap: train.augment.remap 0.5 (each image of a training pair independently, with probability 0.5, "
        "through a random piecewise-linear intensity curve, monotone or not, for the network's input only; the "
        "loss compares the original T1s). mobilenet_mind: extractor mobilenet_v1_025+mind, the 16 frozen "
        "MobileNet channels and the 12 MIND-SSC channels pooled onto the same stride-2 grid.",
        "Synthetic contrasts, the remaps of benchmarks/peers.py, through each image's own CSF/GM/WM means: "
        + "; ".join(
            f"{k.upper()}-like {v['points']} at (0, CSF, GM, WM, 1) = {v['what']}" for k, v in CONTRASTS.items()
        )
        + ". CT-like noise seed = pair index (fixed), 100 + pair index (moving). Same-contrast cases remap both "
        "images; cross-contrast cases only the fixed one (the moving image, the atlas's role, stays T1).",
        f"'+ IO' rows: the network's field refined by {args.io_steps} steps of the shipped default's "
        f"instance optimisation (unireg.register.instance_optimise, LNCC, schedule of register.instance_opt) on "
        f"the first {args.io_pairs} pairs.",
        "reinit (extractor mobilenet_v1_025_reinit): the MobileNet's first 3x3 conv (3 -> 8 channels) redrawn with "
        "PyTorch's default init from seed 0 and its BatchNorm reset to identity; the depthwise-separable block keeps "
        "the ImageNet weights; frozen like the default. It asks how much of the transfer sits in the earliest layer.",
        "scratch: the encoder architecture of the default, random init (train.seed 0), trained end to end with the "
        "UNet; its features are recomputed every step, so a step costs more than with a frozen extractor.",
        "IXI002 columns: brain-mask Dice after T2 (moving) -> T1 (fixed); agreement = mean label Dice between the "
        "atlas labels propagated to IXI002 T1 and to IXI002 T2 (mapped onto the T1 grid through the preprocessing "
        "affines; includes the residual misalignment of the two scans, HD-BET mask Dice 0.976 unregistered).",
        "Training: `unireg train --config <recipe>` on the device its card names (outputs: config.yaml as run, "
        "splits.json, log.csv, model.pt + sha256, model_card.json; benchmarks/results/training/README.md says how "
        "each run was made). Training times are the model cards' (the training loop only) on shared machines: "
        "upper bounds. 'train steps' = the steps the scored weights saw (a snapshot's step, or a card's best_step).",
        "mind_remap, mobilenet_mind_remap: extractors mind and mobilenet_v1_025+mind with remap's augmentation.",
    ]
    skipped = [m for m in METHODS if m not in models]
    if skipped:
        notes.insert(0, f"NOT RUN here: {', '.join(skipped)} (--methods {','.join(models)}); this table is partial.")
    if len(steps) > 1 and not args.smoke:
        notes.append(
            f"UNEQUAL TRAINING LENGTHS (steps {', '.join(map(str, sorted(steps)))}): compare the drops "
            "(relative to each model's own T1 Dice) rather than raw Dice."
        )
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, header, notes, models)
    (args.out / f"{args.name}.md").write_text(text)
    write_csv(args.out / f"{args.name}.csv", rows, COLUMNS, header)
    print(text)


if __name__ == "__main__":
    main()
