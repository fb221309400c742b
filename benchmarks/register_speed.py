"""Seconds per pair and peak memory of UniReg registration on this machine (prints a table).

Run: .venv/bin/python benchmarks/register_speed.py [--device cpu|cuda] [--instance-opt 30] [--out DIR]
Each configuration runs in its own subprocess so that its peak memory is its own. Inputs are
the MNI template atlas at 2 mm and 1 mm (fixed) and a shifted copy (moving); speed does not
depend on the image content. On a grid finer than the model's (1 mm for the packaged 2 mm
model) both network grids are timed (``unireg register --network-grid model|atlas``), and every
configuration with and without test-time mirroring (``--mirror``, the default, runs the network
twice). Writes
``OUT/register_speed.md`` (default benchmarks/results) and prints it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from unireg.defaults import INSTANCE_OPT_STEPS, MIRROR, NETWORK_GRIDS  # noqa: E402  (no heavy imports)

MODEL_SPACING_MM = 2.0  # the packaged model's training grid (its checkpoint's "grid")


def one(spacing: float, instance_opt: int, device: str, network_grid: str, mirror: bool) -> dict:
    import numpy as np
    import torch

    from unireg.atlas import builtin_atlas
    from unireg.defaults import TISSUE_ATLAS
    from unireg.model import load_checkpoint
    from unireg.register import InstanceOptOptions, network_pooling, register_images

    atlas = builtin_atlas(TISSUE_ATLAS, spacing)
    fixed = atlas.image
    moving = fixed.with_data(np.roll(fixed.data, 2, axis=0))
    model, checkpoint = load_checkpoint(device=device)
    factor = network_pooling(fixed.shape, fixed.spacing, checkpoint["grid"]["spacing_mm"], network_grid)
    register_images(fixed, moving, model, device=device, network_factor=factor, mirror=mirror)  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = register_images(
        fixed,
        moving,
        model,
        device=device,
        instance_opt=InstanceOptOptions.schedule(instance_opt),
        network_factor=factor,
        mirror=mirror,
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
        "network": f"pooled by {factor}" if factor > 1 else "atlas grid",
        "mirror": mirror,
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
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--_one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        spacing, steps, grid, mirror = args._one
        print(json.dumps(one(float(spacing), int(steps), args.device, grid, mirror == "on")))
        return
    rows = []
    for spacing in (float(s) for s in args.spacings.split(",")):
        grids = NETWORK_GRIDS if spacing < MODEL_SPACING_MM else NETWORK_GRIDS[:1]
        for grid in grids:
            for steps in (0, args.instance_opt):
                for mirror in ("on", "off") if MIRROR else ("off", "on"):  # the default first
                    out = subprocess.run(
                        [sys.executable, __file__, "--device", args.device]
                        + ["--_one", str(spacing), str(steps), grid, mirror],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch

    lines = [
        f"# Registration speed (`benchmarks/register_speed.py {' '.join(sys.argv[1:])}`)",
        "",
        f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {args.device}; packaged default model.",
        "",
        "| atlas grid | voxel mm | network | test-time mirroring | instance-opt steps | seconds / pair | peak memory "
        "MB (RSS, or CUDA allocated) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['grid']} | {r['spacing_mm']:g} | {r['network']} | {'on' if r['mirror'] else 'off'}"
        f"{' (default)' if r['mirror'] == MIRROR else ''} | {r['instance_opt']} | {r['seconds']:.2f} | "
        f"{r['peak_mb']} |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "register_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
