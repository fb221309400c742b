"""Seconds for the per-subject metrics of one 256^3 label-map pair with 10 labels (prints a table).

Run: .venv/bin/python benchmarks/metrics_speed.py [--size 256] [--labels 10]
The maps are 10 overlapping ellipsoids and a copy shifted by 2 voxels with 0.9 x 0.9 x 1.2 mm voxels.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unireg.io import Image  # noqa: E402
from unireg.metrics import subject_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--labels", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.size
    grid = np.indices((n, n, n), dtype=np.float32)
    labels = np.zeros((n, n, n), np.int16)
    for label in range(1, args.labels + 1):
        centre = rng.uniform(0.3, 0.7, 3) * n
        radii = rng.uniform(0.08, 0.2, 3) * n
        labels[sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1] = label
    affine = np.diag([0.9, 0.9, 1.2, 1.0])
    reference = Image(labels, affine, is_label=True)
    propagated = Image(np.roll(labels, 2, axis=0), affine, is_label=True)
    table = {k: f"label{k}" for k in range(1, args.labels + 1)}
    t0 = time.perf_counter()
    rows = subject_metrics(propagated, reference, table, "bench")
    seconds = time.perf_counter() - t0
    print("| grid | labels | seconds (Dice + HD95 + MSD + volumes) | mean Dice | peak RSS MB |")
    print("|---|---|---|---|---|")
    print(
        f"| {n}^3 | {args.labels} | {seconds:.2f} | {np.mean([r['dice'] for r in rows]):.3f} | "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} |"
    )


if __name__ == "__main__":
    main()
