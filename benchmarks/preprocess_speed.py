"""Seconds and peak memory of preprocessing steps on this machine's CPU (prints a table).

Run: .venv/bin/python benchmarks/preprocess_speed.py  [--repeats N]
Uses ../shared/data IXI heads when present (real data), else only the MNI template.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unireg.affine import align_affine  # noqa: E402
from unireg.atlas import prepare_tissue_atlas  # noqa: E402
from unireg.io import Grid, load_image  # noqa: E402
from unireg.preprocess import preprocess_image  # noqa: E402
from unireg.transforms import resample  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        atlas, t = timed(lambda: prepare_tissue_atlas(Path(tmp) / "atlas", 2.0), 1)
        rows.append(("atlas prepare (MNI 2009a, 2 mm)", f"{atlas.grid.shape}", t))
        shift = np.eye(4)
        shift[:3, 3] = [6.0, -4.0, 3.0]
        pad = np.eye(4)
        pad[:3, 3] = -8
        grid = Grid(tuple(np.array(atlas.grid.shape) + 16), atlas.grid.affine @ pad)
        moving = resample(atlas.image, grid, shift)
        _, t = timed(lambda: align_affine(moving, atlas.image, similarity="mi"), args.repeats)
        rows.append(("affine MI, template -> template", f"{atlas.grid.shape}", t))
        _, t = timed(lambda: align_affine(moving, atlas.image, similarity="lncc"), args.repeats)
        rows.append(("affine LNCC, template -> template", f"{atlas.grid.shape}", t))
        head = SHARED / "ixi_t1_dlmuse" / "t1" / "IXI012-HH-1211_T1.nii.gz"
        if head.is_file():
            image = load_image(head)
            preprocess_image(image, atlas)  # warm-up: loads deepbet's models once
            _, t = timed(lambda: preprocess_image(image, atlas), args.repeats)
            rows.append(("preprocess real IXI head (deepbet + MI)", f"{image.shape}", t))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"| {'step':45s} | {'grid':16s} | {'seconds (median)':>16s} |")
    print(f"|{'-' * 47}|{'-' * 18}|{'-' * 18}|")
    for name, shape, seconds in rows:
        print(f"| {name:45s} | {shape:16s} | {seconds:16.2f} |")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
