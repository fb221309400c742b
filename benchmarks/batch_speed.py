"""Batched against unbatched registration on this machine: seconds per subject (prints a table;
writes benchmarks/results/batch_speed.md).

Run: .venv/bin/python benchmarks/batch_speed.py [--subjects 10] [--instance-opt 30 0] [--device cpu]

The workflow's register stage either runs one `unireg register` process per subject (batch_size 1)
or one `unireg batch ... -- register ...` process per batch (unireg.batch), which imports torch and
loads the model once. Measured, each as its own process, as the workflow runs them:
  start-up    a process that imports unireg's registration code and torch and loads the model
  unbatched   N `unireg register` processes, one after the other (wall seconds each)
  batched     one `unireg batch` process over the same N subjects (wall seconds / N)
The issue-18 target: batched seconds per subject within 10 % of (unbatched - start-up). The
subjects are the 2 mm built-in atlas (the moving image) rolled by 1..N voxels (fixed), with its
brain mask rolled alike: registration time does not depend on the content. A table derived from
the same numbers shows the per-subject time and SLURM submissions for other batch sizes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTUP = (
    "import time; t = time.perf_counter(); import torch; from unireg.register import register_files; "
    "from unireg.model import loaded_checkpoint; loaded_checkpoint(None, {device!r}); "
    "print(time.perf_counter() - t)"
)
STAGES = 5  # per-subject stages, each one job per batch (convert, preprocess, register, propagate, metrics)


def unireg(*args: str, **kwargs) -> float:
    """Wall seconds of ``python -m unireg ARGS`` (it must succeed)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "unireg", *args], capture_output=True, text=True, **kwargs)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"unireg {' '.join(args[:3])} failed: {proc.stderr[-2000:]}")
    return seconds


def make_subjects(work: Path, n: int) -> Path:
    """The 2 mm built-in atlas in work/atlas, and n fixed images sub-<k>.nii.gz (+ mask) rolled copies."""
    import numpy as np

    from unireg.defaults import DEFAULT_ATLAS
    from unireg.io import load_image, save_image

    atlas = work / "atlas"
    unireg("atlas", "prepare", "--name", DEFAULT_ATLAS, "--out", str(atlas), "--spacing", "2")
    image = load_image(atlas / "atlas.nii.gz")
    mask = load_image(atlas / "atlas_brainmask.nii.gz", label=True)
    for k in range(1, n + 1):
        save_image(image.with_data(np.roll(image.data, k, axis=0)), work / f"s{k:02d}.nii.gz")
        save_image(mask.with_data(np.roll(mask.data, k, axis=0)), work / f"s{k:02d}_mask.nii.gz")
    return atlas


def register_args(work: Path, atlas: Path, subject: str, out: Path, steps: int, device: str) -> list[str]:
    return [
        "register",
        "--fixed",
        str(work / f"{subject}.nii.gz"),
        "--fixed-mask",
        str(work / f"{subject}_mask.nii.gz"),
        "--moving",
        str(atlas / "atlas.nii.gz"),
        "--moving-labels",
        str(atlas / "atlas_labels.nii.gz"),
        "--moving-mask",
        str(atlas / "atlas_brainmask.nii.gz"),
        "--out",
        str(out / subject),
        "--subject",
        subject,
        "--instance-opt",
        str(steps),
        "--device",
        device,
    ]


def measure(work: Path, atlas: Path, n: int, steps: int, device: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    startup = []
    for _ in range(3):
        proc = subprocess.run(
            [sys.executable, "-c", STARTUP.format(device=device)], capture_output=True, text=True, env=env, check=True
        )
        startup.append(float(proc.stdout.strip()))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    interpreter = time.perf_counter() - t0
    subjects = [f"s{k:02d}" for k in range(1, n + 1)]
    unbatched = [
        unireg(*register_args(work, atlas, s, work / f"unbatched{steps}", steps, device), env=env) for s in subjects
    ]
    template = register_args(work, atlas, "{subject}", work / f"batched{steps}", steps, device)
    ledger = work / f"batched{steps}.tsv"
    batched = unireg(
        "batch",
        "--stage",
        "register",
        "--subjects",
        *subjects,
        "--ledger",
        str(ledger),
        "--log",
        str(work / f"logs{steps}" / "{subject}.log"),
        "--",
        *template,
        env=env,
    )
    rows = ledger.read_text().splitlines()[1:]
    statuses = {line.split("\t")[1] for line in rows}
    if statuses != {"ok"}:
        raise SystemExit(f"the batch did not register every subject: {ledger}")
    startup_s = min(startup) + interpreter
    per_unbatched = sum(unbatched) / n
    # unbatched = F + w and batched = F / n + w per subject: F, each process's fixed cost (start-up and
    # first-call warm-up), and w, a registration's own seconds
    fixed = (per_unbatched - batched / n) * n / (n - 1) if n > 1 else float("nan")
    return {
        "steps": steps,
        "n": n,
        "startup": startup_s,
        "unbatched": per_unbatched,
        "batched": batched / n,
        "work": per_unbatched - startup_s,
        "fixed": fixed,
        "own": per_unbatched - fixed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--instance-opt", type=int, nargs="+", default=[30, 0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        atlas = make_subjects(work, args.subjects)
        results = [measure(work, atlas, args.subjects, steps, args.device) for steps in args.instance_opt]
    lines = [
        f"Run: `.venv/bin/python benchmarks/batch_speed.py --subjects {args.subjects} --instance-opt "
        f"{' '.join(map(str, args.instance_opt))} --device {args.device}` ({os.cpu_count()} cores, load "
        f"average {load:.2f} before the run; 2 mm built-in atlas grid, {args.subjects} subjects; seconds are wall "
        "seconds of whole processes)",
        "",
        "| IO steps | start-up (interpreter + torch + model) | unbatched s/subject | unbatched - start-up "
        "| batched s/subject | batched vs (unbatched - start-up) | fixed cost per process | registration alone |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['steps']} | {r['startup']:.2f} | {r['unbatched']:.2f} | {r['work']:.2f} | {r['batched']:.2f} "
            f"| {100 * (r['batched'] / r['work'] - 1):+.1f} % | {r['fixed']:.2f} | {r['own']:.2f} |"
        )
    lines += [
        "",
        "Fixed cost per process: from unbatched = F + w and batched = F / N + w per subject; it is larger "
        "than the start-up alone because a process's first registration also pays one-time warm-up "
        "(first calls of torch operators, memory allocation), which a batch pays once.",
        "",
        "Derived from the same numbers: seconds per subject of the register stage (fixed cost once per "
        f"batch), and SLURM submissions per subject of the {STAGES} per-subject stages, by batch_size",
        "",
        "| batch_size | "
        + " | ".join(f"s/subject, {r['steps']} IO steps" for r in results)
        + " | submissions/subject |",
        "|---|" + "---|" * len(results) + "---|",
    ]
    for size in (1, 2, 5, 10, 20, 50):
        cells = [f"{r['own'] + r['fixed'] / size:.2f} ({100 * r['fixed'] / size / r['own']:+.0f} %)" for r in results]
        lines.append(f"| {size} | " + " | ".join(cells) + f" | {STAGES / size:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch_speed.md").write_text(text)


if __name__ == "__main__":
    main()
