"""Tune the default instance optimisation (IO) on *training* pairs, away from the benchmark pairs.

    .venv/bin/python benchmarks/io_tuning.py                 # the grid below, 3 pairs x (T1, T2-like)
    .venv/bin/python benchmarks/io_tuning.py --pairs 1 --grid-mm 4 --variants "flow:mind:20:0.1:0.2"

Pairs: the first training subject of the packaged model (moving, like an atlas) -> the next
``--pairs`` training subjects (fixed), on the same preprocessing as benchmarks/peers.py; the
fixed image is T1 or the T2-like remap of benchmarks/peers.py. Training subjects are used on
purpose: the settings chosen here are then scored on the validation pairs of benchmarks/peers.py,
which this script never reads. A variant is ``similarity:coarse_steps:steps:weight:lr:integrate``. Prints a markdown
table (mean label Dice, % det J <= 0, seconds per pair on this machine) and writes it with
``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import peers  # noqa: E402  (same data, preprocessing, contrasts and scoring as the peer benchmark)

DEFAULT_VARIANTS = (
    "none",  # the network alone
    "mind:0:20:0.1:0.2:step",  # the previous default: MIND-SSC, 20 image-grid velocity steps
    "mind:20:10:0.1:0.3:fine",  # MIND-SSC on the shipped schedule
    "lncc:20:10:0.3:0.3:none",  # squared LNCC, plain displacement (may fold)
    "lncc:20:10:0.3:0.3:end",  # ... integrated once at the end
    "lncc:20:10:0.3:0.3:fine",  # ... velocity at the image-grid steps: the shipped default
)


def parse_variant(text: str):
    from unireg.register import InstanceOptOptions

    if text == "none":
        return InstanceOptOptions(steps=0)
    similarity, coarse, steps, weight, lr, integrate = text.split(":")
    return InstanceOptOptions(
        steps=int(steps),
        coarse_steps=int(coarse),
        similarity=similarity,
        weight=float(weight),
        learning_rate=float(lr),
        integrate=integrate,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--grid-mm", type=float, default=2.0)
    parser.add_argument("--contrasts", default="t1,t2")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the packaged model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args(argv)

    import torch

    from unireg.atlas import builtin_atlas
    from unireg.defaults import TISSUE_ATLAS
    from unireg.io import Image
    from unireg.metrics import dice_per_label
    from unireg.model import load_checkpoint
    from unireg.preprocess import PreprocessOptions
    from unireg.register import register_images
    from unireg.train import load_config, prepare_subject

    torch.set_num_threads(args.threads)
    atlas = builtin_atlas(TISSUE_ATLAS, args.grid_mm)
    home = Path(os.environ.get("UNIREG_HOME", Path.home() / ".cache" / "unireg"))
    cache = (args.cache or home / "peers") / f"{args.grid_mm:g}mm"
    train_ids, val_ids = peers.model_split()
    options = PreprocessOptions(**load_config(peers.TRAIN_CONFIG)["preprocess"])
    ids = train_ids[: 1 + args.pairs]
    subjects = {}
    for sid in ids:
        item = {
            "id": sid,
            "image": str(peers.IXI / "t1" / f"{sid}.nii.gz"),
            "labels": str(peers.IXI / "labels" / f"{sid}_DLMUSE.nii.gz"),
        }
        subjects[sid] = prepare_subject(item, atlas, cache, options)
        peers.log(f"preprocessed {sid}")
    affine = atlas.grid.affine
    moving = subjects[ids[0]]
    cases = []
    for k, sid in enumerate(ids[1:]):
        fixed = subjects[sid]
        for contrast in args.contrasts.split(","):
            image = (
                fixed["image"]
                if contrast == "t1"
                else peers.synthetic_contrast(Image(fixed["image"], affine), fixed["mask"], contrast, seed=k).data
            )
            cases.append((contrast, sid, image, fixed["labels"]))
    model, _ = load_checkpoint(args.model)
    moving_img = Image(moving["image"], affine)
    register_images(Image(cases[0][2], affine), moving_img, model)  # warm-up
    rows = []
    for text in args.variants.split(","):
        opt = parse_variant(text)
        per = {}
        for contrast, _sid, fixed_np, labels in cases:
            t0 = time.perf_counter()
            result = register_images(Image(fixed_np, affine), moving_img, model, instance_opt=opt)
            seconds = time.perf_counter() - t0
            warped = peers.warp_labels(moving["labels"], result.ddf[0].numpy())
            present = np.unique(labels)
            present = present[present > 0]
            dice = dice_per_label(labels, warped, present)
            per.setdefault(contrast, []).append(
                (float(np.mean([dice[int(k)] for k in present])), seconds, result.info["jacobian"]["folding_percent"])
            )
        for contrast, values in per.items():
            d, s, f = (np.array(v) for v in zip(*values))
            rows.append((text, contrast, len(values), d.mean(), s.mean(), f.mean()))
            peers.log(f"{text} {contrast}: Dice {d.mean():.3f}, {s.mean():.1f} s/pair, fold {f.mean():.4f}%")
    lines = [
        f"# Instance-optimisation tuning on training pairs ({datetime.date.today()}, "
        f"{peers.machine()}, commit {peers.git_commit()})",
        "",
        f"moving {ids[0]} -> fixed {', '.join(ids[1:])}; grid {args.grid_mm:g} mm; "
        f"{args.threads} threads; variant = similarity:coarse_steps:steps:weight:lr:integrate",
        f"model: {peers.model_name(args.model)}; command: `{peers.command_line(argv, 'benchmarks/io_tuning.py')}`",
        "",
        "| variant | fixed contrast | pairs | mean Dice | s / pair | % det J <= 0 |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {v} | {c} | {n} | {d:.3f} | {s:.1f} | {f:.4f} |" for v, c, n, d, s, f in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
