"""Seconds per pair and peak memory of UniReg registration on this machine (prints a table).

Run: .venv/bin/python benchmarks/register_speed.py [--device cpu|cuda] [--instance-opt 30]
Each configuration runs in its own subprocess so that its peak memory is its own. Inputs are
the default atlas template at 2 mm and 1 mm (fixed) and a shifted copy (moving); speed does not
depend on the image content.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from unireg.defaults import INSTANCE_OPT_STEPS  # noqa: E402  (no heavy imports)


def one(spacing: float, instance_opt: int, device: str) -> dict:
    import numpy as np
    import torch

    from unireg.atlas import builtin_atlas
    from unireg.defaults import TISSUE_ATLAS
    from unireg.model import load_checkpoint
    from unireg.register import InstanceOptOptions, register_images

    atlas = builtin_atlas(TISSUE_ATLAS, spacing)
    fixed = atlas.image
    moving = fixed.with_data(np.roll(fixed.data, 2, axis=0))
    model, _ = load_checkpoint(device=device)
    register_images(fixed, moving, model, device=device)  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = register_images(
        fixed, moving, model, device=device, instance_opt=InstanceOptOptions.schedule(instance_opt)
    )
    seconds = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    )
    return {
        "spacing_mm": spacing,
        "grid": "x".join(map(str, fixed.shape)),
        "instance_opt": instance_opt,
        "device": device,
        "seconds": round(seconds, 2),
        "peak_mb": round(peak),
        "folding_percent": result.info["jacobian"]["folding_percent"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--instance-opt", type=int, default=INSTANCE_OPT_STEPS)
    parser.add_argument("--spacings", default="2,1")
    parser.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        print(json.dumps(one(float(args._one[0]), int(args._one[1]), args.device)))
        return
    rows = []
    for spacing in (float(s) for s in args.spacings.split(",")):
        for steps in (0, args.instance_opt):
            out = subprocess.run(
                [sys.executable, __file__, "--device", args.device, "--_one", str(spacing), str(steps)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print("| atlas grid | voxel mm | instance-opt steps | seconds / pair | peak memory MB (RSS, or CUDA allocated) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['grid']} | {r['spacing_mm']:g} | {r['instance_opt']} | {r['seconds']:.2f} | {r['peak_mb']} |")


if __name__ == "__main__":
    main()
