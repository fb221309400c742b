"""Test-time mirroring on the training recipes' validation pairs: which axis, and how much it gains.

    .venv/bin/python benchmarks/mirror.py                       # the packaged models, 9 pairs
    .venv/bin/python benchmarks/mirror.py --models a.pt,b.pt --pairs 3 --name mirror_candidates
    .venv/bin/python benchmarks/mirror.py --smoke --out /tmp/mirror   # 1 pair, the default model: a test

For each checkpoint, the network alone (no instance optimisation) on the validation pairs that
``unireg train`` scores (subject k -> subject k + 1 of the recipes' 10 validation subjects,
preprocessed onto the 2 mm MNI 2009a grid as training prepares them; 148 DLMUSE labels), once
as one prediction and once with :meth:`unireg.model.UniRegNet.predict_images`' mirroring along
each voxel axis of that (RAS) grid: 0 = left-right, what ``unireg register --mirror`` uses, 1 =
front-back, 2 = up-down. These are the pairs the training recipes validate on, not the peer
benchmark's atlas -> subject pairs (benchmarks/peers.py ``--mirror/--no-mirror`` scores those).
Writes a markdown table (mean label Dice, pairs that gain, % det J <= 0, seconds per pair) to
``<--out>/<--name>.md`` (default benchmarks/results/mirror.md) and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import peers  # noqa: E402  (provenance, model names)

RECIPE = REPO / "config" / "train_mind_cascade2.yaml"  # data, split and atlas of every recipe's validation
AXES = {None: "one prediction", 0: "mirrored left-right (default)", 1: "mirrored front-back", 2: "mirrored up-down"}


def default_models() -> list[Path]:
    from unireg.model import DEFAULT_MODEL, MODELS_DIR

    return [DEFAULT_MODEL, MODELS_DIR / "unireg_mobilenet_v1_025.pt"]


def validation_pairs(pairs: int, cache: Path | None = None) -> list[tuple[dict, dict]]:
    """(fixed, moving) prepared records of the first ``pairs`` validation pairs (k -> k + 1),
    preprocessed into ``cache`` (default: the recipe's ``data.cache``, which training shares)."""
    from unireg.atlas import load_atlas
    from unireg.preprocess import PreprocessOptions
    from unireg.train import discover_dataset, load_config, prepare_subject, split_dataset

    cfg = load_config(RECIPE)
    data = cfg["data"]
    items = discover_dataset(data["images"], data["labels"])
    _, val = split_dataset(items, data["n_train"], data["n_val"], data["split_seed"], data["exclude"])
    atlas = load_atlas(cfg["atlas"])
    options = PreprocessOptions(**cfg["preprocess"])
    n = len(val)
    keys = [(k % n, (k + 1) % n) for k in range(min(pairs, n - 1))]
    needed = sorted({i for pair in keys for i in pair})  # only those subjects are prepared
    records = {i: prepare_subject(val[i], atlas, Path(cache or data["cache"]), options) for i in needed}
    return [(records[i], records[j]) for i, j in keys]


def score(model, pairs, axis) -> dict:
    import torch

    from unireg.fields import jacobian_stats, resize_field
    from unireg.metrics import mean_dice

    dice, folding, seconds = [], [], []
    with torch.no_grad():
        for fixed, moving in pairs:
            f, m = (torch.from_numpy(r["image"].astype(np.float32))[None, None] for r in (fixed, moving))
            t0 = time.perf_counter()
            ddf = resize_field(model.predict_images(f, m, mirror_axis=axis)[0], fixed["image"].shape)
            seconds.append(time.perf_counter() - t0)
            dice.append(mean_dice(fixed["labels"], peers.warp_labels(moving["labels"], ddf[0].numpy())))
            folding.append(jacobian_stats(ddf)["folding_percent"])
    return {"dice": np.array(dice), "folding": max(folding), "seconds": float(np.median(seconds))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help="comma list of checkpoints (default: the two packaged models)")
    parser.add_argument("--pairs", type=int, default=9, help="validation pairs, 1..9 (default 9)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="folder of the table")
    parser.add_argument("--name", default="mirror", help="file name stem of the table (default mirror)")
    parser.add_argument("--cache", type=Path, help="preprocessing cache (default: the recipes' runs/cache)")
    parser.add_argument("--smoke", action="store_true", help="1 pair, the default model, cache in --out: a test")
    args = parser.parse_args(argv)
    if args.smoke:
        args.pairs, args.cache = 1, args.cache or args.out / "cache"

    import torch

    from unireg.model import DEFAULT_MODEL, load_checkpoint

    torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.timezone.utc)
    models = [Path(p) for p in args.models.split(",")] if args.models else default_models()[: 1 if args.smoke else None]
    pairs = validation_pairs(args.pairs, args.cache)
    lines = [
        "| model | prediction | mean Dice | change | pairs that gain | % det J <= 0 (worst pair) | s / pair |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in models:
        model, _ = load_checkpoint(path)
        name = peers.model_name(None if path.resolve() == DEFAULT_MODEL.resolve() else path)
        model.eval()
        score(model, pairs[:1], None)  # warm-up, untimed
        plain = None
        for axis, what in AXES.items():
            s = score(model, pairs, axis)
            plain = s if axis is None else plain
            change = "" if axis is None else f"{s['dice'].mean() - plain['dice'].mean():+.4f}"
            gains = "" if axis is None else f"{int((s['dice'] > plain['dice']).sum())} / {len(pairs)}"
            lines.append(
                f"| {name} | {what} | {s['dice'].mean():.4f} | {change} | {gains} | "
                f"{s['folding']:.4f} | {s['seconds']:.2f} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)  # progress; the table goes to stdout
    ids = ", ".join(f"{f['id']} <- {m['id']}" for f, m in pairs)
    text = "\n".join(
        [
            "# Test-time mirroring: the network alone on the training recipes' validation pairs",
            "",
            *(
                f"- {line}"
                for line in peers.provenance(
                    started,
                    peers.command_line(argv, "benchmarks/mirror.py"),
                    f"threads: {args.threads}; {peers.versions()}",
                )
            ),
            f"- pairs ({len(pairs)}, fixed <- moving): {ids}",
            "- grid: MNI 2009a at 2 mm (80x96x96), as `unireg train` prepares its data; 148 DLMUSE labels",
            "",
            *lines,
            "",
            "Mirroring along an axis: the mean of the prediction and of the prediction for both images mirrored "
            "along it, mirrored back (`UniRegNet.predict_images`); seconds: the prediction only (both passes).",
            "",
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
