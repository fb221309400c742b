"""How consistent is each layer's feature under a contrast change? (the UniReg paper's analysis; prints a table)

Run (writes benchmarks/results/feature_consistency.{md,csv,png}, prints the markdown):

    .venv/bin/python benchmarks/feature_consistency.py --cache runs/cache
    .venv/bin/python benchmarks/feature_consistency.py --smoke --out /tmp/fc      # < 1 min

The claim under test: the *early* layers of an ImageNet CNN respond to local structure (edges,
blobs) and so respond alike to the same anatomy under two contrasts, which is what lets a network
trained on one contrast register another. Here each layer is asked that directly, with no
registration and no training involved.

**Images.** The first ``--subjects`` validation subjects of the shared split (never trained on),
preprocessed like the training data (MNI 2009a grid, 80x96x96 at 2 mm). Each subject's T1 and its
T2-, PD- and CT-like remaps (benchmarks/peers.py :func:`synthetic_contrast`): the same anatomy,
voxel for voxel, under another contrast.

**Features.** For every extractor and layer below, features of the T1 and of the remapped image
(the layer's own grid; brain mask = the subject's mask pooled to it, every cell at least half brain):

* ``ImageNet MobileNet``: MobileNetV1 x0.25 with the packaged ImageNet weights, slice-wise 3-D as
  in :mod:`unireg.features`, after each of its first blocks (``conv1`` = the first 3x3 conv, ``dw1``
  = + the first depthwise-separable block, the default extractor's output; ``dw2``, ``dw3``: the
  next blocks, stride 4);
* ``random MobileNet``: the same architecture, random init (seed 0) with its BatchNorm statistics
  those of the ImageNet network (so that only the learned filters differ): the "scratch" encoder
  before any training;
* ``reinit``: the ImageNet network with only its first conv re-initialised (the domain_shift ablation);
* ``MIND-SSC``: weight-free (one layer); ``intensity``: the image itself (one channel), the floor.

**Scores** (mean over brain cells and subjects; 1 = identical up to a positive gain per channel):

* ``vector r``: each channel z-scored over the brain in each image, then per cell the Pearson
  correlation between the T1 and remapped feature *vectors* (across channels): do the same
  channels fire at the same place? A network trained on T1 features reads exactly this.
* ``channel lncc``: per channel, the signed local correlation (window 5 cells) between the T1 and
  remapped maps, averaged over channels (channels with no variance skipped): does each channel keep
  its local pattern, and its sign?
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

import peers  # noqa: E402  (preprocessing, contrast remaps and report helpers)
from peers import CONTRASTS, fmt, synthetic_contrast, write_csv  # noqa: E402

CONTRAST_TITLES = {"t2": "T2-like", "pd": "PD-like", "ct": "CT-like"}
MOBILENET_LAYERS = {"conv1": 1, "dw1": 2, "dw2": 3, "dw3": 4}  # name -> blocks of stage1
LNCC_WINDOW = 5
SMOKE = {"subjects": 1}
COLUMNS = ["extractor", "layer", "channels", "stride", "contrast", "subjects", "vector_r", "channel_lncc"]


def log(message: str) -> None:
    print(f"[feature_consistency {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def layer_extractors() -> dict[tuple[str, str], object]:
    """(extractor, layer) -> a frozen 3-D feature extractor (grey [0, 1] volume -> features)."""
    import torch

    from unireg.features import MobileNetV1x025, SliceWise3d, build_extractor, load_mobilenet_v1_025

    imagenet = load_mobilenet_v1_025()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random = MobileNetV1x025().eval()
    # same BatchNorm statistics as the ImageNet network: only the filters are random
    random.load_state_dict(
        {k: v for k, v in imagenet.state_dict().items() if "running" in k or "num_batches" in k}, strict=False
    )
    reinit = build_extractor("mobilenet_v1_025_reinit")  # loaded once: its conv1 and its whole output
    out = {}
    for family, net in (("ImageNet MobileNet", imagenet), ("random MobileNet", random)):
        for layer, blocks in MOBILENET_LAYERS.items():
            encoder = torch.nn.Sequential(*net.stage1[:blocks])
            stride = 2 if blocks < 3 else 4
            channels = [8, 16, 32, 32][blocks - 1]
            out[(family, layer)] = SliceWise3d(
                encoder, name=f"{family} {layer}", out_channels=channels, stride=stride, grid_offset=0.0
            )
    out[("reinit", "conv1")] = SliceWise3d(
        torch.nn.Sequential(reinit.encoder[0]), name="reinit conv1", out_channels=8, stride=2, grid_offset=0.0
    )
    out[("reinit", "dw1")] = reinit
    out[("MIND-SSC", "-")] = build_extractor("mind")
    return out


def brain_cells(mask: np.ndarray, stride: int) -> np.ndarray:
    """The mask pooled to a feature grid of ``stride``: cells at least half inside the brain."""
    if stride == 1:
        return mask > 0
    d, h, w = (n // stride for n in mask.shape)
    blocks = (mask[: d * stride, : h * stride, : w * stride] > 0).reshape(d, stride, h, stride, w, stride)
    return blocks.mean(axis=(1, 3, 5)) >= 0.5


def vector_r(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> float:
    """Mean over brain cells of the Pearson correlation of the (channel z-scored) feature vectors."""

    def zscored(f):
        x = f[:, inside]  # (C, N)
        return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-8)

    x, y = zscored(a), zscored(b)
    if x.shape[0] < 2:  # one channel: the sign of the z-scored product
        return float(np.mean(np.sign(x * y)))
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    r = (x * y).sum(0) / (np.sqrt((x * x).sum(0) * (y * y).sum(0)) + 1e-8)
    return float(r.mean())


def channel_lncc(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> float:
    """Signed local correlation (window :data:`LNCC_WINDOW`), mean over channels and brain cells."""
    import torch
    import torch.nn.functional as F

    def box(x):
        return F.avg_pool3d(x, LNCC_WINDOW, stride=1, padding=LNCC_WINDOW // 2, count_include_pad=False)

    x, y = torch.from_numpy(a)[None].double(), torch.from_numpy(b)[None].double()
    mx, my = box(x), box(y)
    cov = box(x * y) - mx * my
    vx, vy = (box(x * x) - mx * mx).clamp(min=0), (box(y * y) - my * my).clamp(min=0)
    floor = 1e-6 * torch.maximum(vx.mean((2, 3, 4), keepdim=True), vy.mean((2, 3, 4), keepdim=True)) + 1e-12
    valid = (vx > floor) & (vy > floor)
    r = torch.where(valid, cov / torch.sqrt(vx * vy).clamp(min=1e-12), torch.zeros_like(cov))
    inside_t = torch.from_numpy(inside)[None, None] & valid
    per_channel = (r * inside_t).sum((2, 3, 4)) / inside_t.sum((2, 3, 4)).clamp(min=1)
    counted = inside_t.sum((2, 3, 4)) > 0
    return float(per_channel[counted].mean()) if counted.any() else float("nan")


def measure(subjects: dict, extractors: dict) -> list[dict]:
    import torch

    rows = []
    images = {}
    for k, (sid, rec) in enumerate(subjects.items()):
        images[sid] = {"T1": rec["image"].data.astype(np.float32)}
        for name, title in CONTRAST_TITLES.items():
            images[sid][title] = synthetic_contrast(rec["image"], rec["mask"], name, seed=k).data.astype(np.float32)
    keys = [("intensity", "-"), *extractors]
    for family, layer in keys:
        t0 = time.perf_counter()
        scores = {title: [] for title in CONTRAST_TITLES.values()}
        channels = stride = 1
        for sid, views in images.items():
            with torch.no_grad():
                if family == "intensity":
                    feats = {c: v[None].astype(np.float64) for c, v in views.items()}
                else:
                    extractor = extractors[(family, layer)]
                    channels, stride = extractor.out_channels, extractor.stride
                    feats = {
                        c: extractor(torch.from_numpy(v)[None, None])[0].double().numpy() for c, v in views.items()
                    }
            inside = brain_cells(subjects[sid]["mask"], stride)
            for title in CONTRAST_TITLES.values():
                scores[title].append(
                    (vector_r(feats["T1"], feats[title], inside), channel_lncc(feats["T1"], feats[title], inside))
                )
        for title, values in scores.items():
            rows.append(
                {
                    "extractor": family,
                    "layer": layer,
                    "channels": channels,
                    "stride": stride,
                    "contrast": title,
                    "subjects": len(values),
                    "vector_r": float(np.mean([v for v, _ in values])),
                    "channel_lncc": float(np.mean([c for _, c in values])),
                }
            )
        log(f"{family} {layer}: {time.perf_counter() - t0:.0f} s")
    return rows


def markdown(rows: list[dict], header: list[str], notes: list[str]) -> str:
    lines = ["# Feature consistency under a contrast change, per extractor and layer", ""]
    lines += [f"- {h}" for h in header] + [""]
    titles = list(CONTRAST_TITLES.values())
    lines += [
        "## vector r (channel z-scored feature vectors, T1 vs remapped; 1 = same channels fire at the same place)",
        "",
        "| extractor | layer | channels | stride | " + " | ".join(titles) + " | mean |",
        "|---|---|---|---|" + "---|" * (len(titles) + 1),
    ]
    keys = list(dict.fromkeys((r["extractor"], r["layer"]) for r in rows))
    for metric in ("vector_r", "channel_lncc"):
        if metric == "channel_lncc":
            lines += [
                "",
                f"## channel lncc (signed local r per channel, window {LNCC_WINDOW} cells, mean over channels)",
                "",
                "| extractor | layer | channels | stride | " + " | ".join(titles) + " | mean |",
                "|---|---|---|---|" + "---|" * (len(titles) + 1),
            ]
        for key in keys:
            mine = {r["contrast"]: r for r in rows if (r["extractor"], r["layer"]) == key}
            values = [mine[t][metric] for t in titles]
            first = mine[titles[0]]
            lines.append(
                f"| {key[0]} | {key[1]} | {first['channels']} | {first['stride']} | "
                + " | ".join(fmt(v) for v in values)
                + f" | {fmt(float(np.mean(values)))} |"
            )
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> None:
    """One panel per (score, contrast): consistency against MobileNet depth; one-layer extractors as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = list(CONTRAST_TITLES.values())
    families = list(dict.fromkeys(r["extractor"] for r in rows))
    colours = {f: f"C{i}" for i, f in enumerate(families)}
    fig, axes = plt.subplots(2, len(titles), figsize=(4 * len(titles), 7), sharey=True, sharex=True)
    for row_axes, metric in zip(axes, ("vector_r", "channel_lncc")):
        for ax, title in zip(row_axes, titles):
            for family in families:
                mine = [r for r in rows if r["extractor"] == family and r["contrast"] == title]
                if len(mine) == 1:
                    ax.axhline(float(mine[0][metric]), ls="--", lw=1.2, color=colours[family], label=family)
                else:
                    x = [list(MOBILENET_LAYERS).index(r["layer"]) for r in mine]
                    ax.plot(x, [float(r[metric]) for r in mine], marker="o", color=colours[family], label=family)
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_title(f"{metric.replace('_', ' ')}: T1 vs {title}", fontsize=10)
            ax.set_xticks(range(len(MOBILENET_LAYERS)), list(MOBILENET_LAYERS))
            ax.grid(alpha=0.3)
        row_axes[0].set_ylabel("consistency (1 = identical)")
    for ax in axes[-1]:
        ax.set_xlabel("MobileNet layer (depth)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subjects", type=int, default=5, help="validation subjects, 1..10 (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--cache", type=Path, default=None, help="preprocessing cache (default $UNIREG_HOME/domain_shift/2mm)"
    )
    parser.add_argument("--smoke", action="store_true", help=f"quick check: {SMOKE}")
    args = parser.parse_args(argv)
    if args.smoke:
        args.subjects = SMOKE["subjects"]
    if not 1 <= args.subjects <= 10:
        parser.error("--subjects must be 1..10")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    started, t_start = datetime.datetime.now().astimezone(), time.perf_counter()
    if not peers.IXI.is_dir():
        raise SystemExit(f"feature_consistency: real data not found: {peers.IXI} (../shared/data is absent)")
    import torch

    from unireg.atlas import builtin_atlas
    from unireg.defaults import TISSUE_ATLAS

    torch.set_num_threads(args.threads)
    atlas = builtin_atlas(TISSUE_ATLAS, 2.0)
    home = Path(os.environ.get("UNIREG_HOME", Path.home() / ".cache" / "unireg"))
    cache = args.cache or home / "domain_shift" / "2mm"
    _, val_ids = peers.model_split()
    subjects = peers.preprocess_ixi(val_ids[: args.subjects], atlas, cache)
    rows = measure(subjects, layer_extractors())
    header = [
        *peers.provenance(
            started,
            peers.command_line(argv, "benchmarks/feature_consistency.py"),
            f"torch {torch.__version__}, {args.threads} threads, CPU",
        ),
        f"wall time: {(time.perf_counter() - t_start) / 60:.1f} min (cache {cache})",
        f"subjects: {args.subjects} validation subjects of the shared split ({', '.join(val_ids[: args.subjects])}), "
        "each against its own T2-, PD- and CT-like remap (same anatomy, voxel for voxel)",
    ]
    notes = [
        "Remaps (benchmarks/peers.py): "
        + "; ".join(
            f"{k.upper()}-like {v['points']} at (0, CSF, GM, WM, 1) = {v['what']}" for k, v in CONTRASTS.items()
        )
        + ". CT-like noise seed = subject index.",
        "vector r: per image, each channel z-scored over the brain cells; per cell, Pearson r between the "
        "T1 and remapped feature vectors across channels; mean over brain cells and subjects. For one "
        "channel (intensity), the mean sign agreement of the z-scored values.",
        f"channel lncc: per channel, local Pearson r in a {LNCC_WINDOW}^3-cell window between the T1 and "
        "remapped maps (cells where either map is flat skipped), mean over brain cells, then over channels.",
        "random MobileNet: PyTorch default init from seed 0, BatchNorm running statistics copied from the ImageNet "
        "network. The end-to-end trained 'scratch' encoder of domain_shift.py is not included: its checkpoint is "
        "not shipped (runs/scratch).",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, header, notes)
    (args.out / "feature_consistency.md").write_text(text)
    write_csv(args.out / "feature_consistency.csv", rows, COLUMNS, header)
    figure(rows, args.out / "feature_consistency.png")
    print(text)


if __name__ == "__main__":
    main()
