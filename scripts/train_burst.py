"""Train several recipes side by side on one machine until a deadline, then pack what they wrote.

For a short lease of a GPU machine (issue 15): every recipe runs as its own ``unireg train`` process
(same data, split and seed; ``train.device``), all stopped with SIGTERM at ``--seconds`` (each
finishes its step and writes ``last.pt``, so any run can be resumed later, here or on a CPU).
Every run writes a snapshot checkpoint at each validation (``train.snapshot_every``), so the
recipes can be compared at one common step even though they ran at different speeds.

    python3 scripts/train_burst.py --data DATASET.tsv --cache CACHE --work /tmp/burst \\
        --seconds 380 --pack OUT_DIR config/train_default.yaml config/train_mind.yaml ...

``--data``/``--cache`` replace the recipes' ``data.images``/``data.labels``/``data.cache`` (a TSV with
columns id, image, labels and an already filled cache need no raw images); the split is the
recipes' own (``data.split_seed`` over the sorted ids). ``--pack`` writes ``burst.tar`` in parts of
at most ``--part-mb`` MiB: per run its config, splits, log.csv, stdout, last.pt, best.pt,
model.pt (if it finished), the snapshots (loadable checkpoints) at the common step (the last step
every run has one of), at the run's best validation and its last, and, while under ``--pack-mb``,
more every ``--keep-every`` steps. ``--no-state`` leaves out last.pt and best.pt (the runs can
then not be resumed elsewhere, but the pack is a third of the size).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run_name(recipe: Path) -> str:
    return recipe.stem.removeprefix("train_")


def burst_config(recipe: Path, args, out: Path) -> dict:
    config = yaml.safe_load(recipe.read_text())
    config["data"].update(images=str(Path(args.data).resolve()), labels=None, cache=str(Path(args.cache).resolve()))
    train = config.setdefault("train", {})
    if train.get("init") and train["init"] != "default":  # relative to the recipe, as unireg train reads it
        train["init"] = str((recipe.parent / train["init"]).resolve())
    train.update(
        device=args.device,
        steps=args.max_steps,
        validate_every=args.validate_every,
        snapshot_every=args.validate_every,
        val_io_steps=args.val_io_steps,
        plateau={"patience": args.patience, "min_delta": args.min_delta},
    )
    config["output"] = str(out)
    return config


def launch(recipes: list[Path], args) -> dict[str, tuple[subprocess.Popen, Path]]:
    work = Path(args.work)
    procs = {}
    for recipe in recipes:
        name = run_name(recipe)
        out = work / name
        out.mkdir(parents=True, exist_ok=True)
        cfg = work / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(burst_config(recipe, args, out), sort_keys=False))
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "unireg", "train", "--config", str(cfg), "--no-progress"]
        with open(out / "stdout.log", "w") as log:  # the child keeps its own copy of the descriptor
            procs[name] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), out)
        print(f"started {name}: {' '.join(cmd)}", flush=True)
    return procs


def last_logged_step(out: Path) -> int:
    log = out / "log.csv"
    lines = log.read_text().splitlines() if log.is_file() else []
    return int(lines[-1].split(",")[0]) if len(lines) > 1 else 0


def wait_until(procs, seconds: float, grace: float) -> dict[str, int | None]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds and any(p.poll() is None for p, _ in procs.values()):
        time.sleep(5)
        if int(time.monotonic() - t0) % 60 < 5:
            print(
                f"{time.monotonic() - t0:.0f} s: "
                + ", ".join(f"{n} {last_logged_step(o)}" for n, (_, o) in procs.items()),
                flush=True,
            )
    for p, _ in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    t1 = time.monotonic()
    while time.monotonic() - t1 < grace and any(p.poll() is None for p, _ in procs.values()):
        time.sleep(1)
    for name, (p, _) in procs.items():
        if p.poll() is None:
            print(f"{name}: no exit {grace:.0f} s after SIGTERM, killed (last.pt is from its last checkpoint)")
            p.kill()
            p.wait()
    return {name: p.returncode for name, (p, _) in procs.items()}


def snapshot_steps(out: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (out / "snapshots").glob("step_*.pt"))


def best_step(out: Path) -> int:
    """The step of the run's best validation so far (the plateau rule's, kept in last.pt), 0 if none."""
    import torch

    last = out / "last.pt"
    return int(torch.load(last, map_location="cpu", weights_only=False)["best"]["step"]) if last.is_file() else 0


def pack(procs, args) -> dict:
    """burst.tar parts in ``--pack`` and a summary (also printed)."""
    runs = {name: out for name, (_, out) in procs.items()}
    reached = {name: snapshot_steps(out) for name, out in runs.items()}
    # the last step every run has a snapshot of (none when a resumed run's steps never meet the others')
    shared = set.intersection(*(set(s) for s in reached.values())) if reached else set()
    common = max(shared, default=0)
    budget = args.pack_mb * 2**20
    files: list[Path] = []
    state = ("last.pt", "best.pt") if args.state else ()
    for name, out in runs.items():
        for file in (
            "config.yaml",
            "splits.json",
            "log.csv",
            "stdout.log",
            *state,
            "model.pt",
            "model.pt.sha256",
            "model_card.json",
            "model_card.md",
            "learning_curve.png",
        ):
            if (out / file).is_file():
                files.append(out / file)
        # loadable checkpoints: the common step's, the run's best step's and its last snapshot
        steps = {common, best_step(out), reached[name][-1] if reached[name] else 0} & set(reached[name])
        for step in sorted(steps):
            files += [out / "snapshots" / f"step_{step:06d}.{ext}" for ext in ("pt", "pt.sha256")]
    size = sum(f.stat().st_size for f in files)
    extra = sorted(
        (
            (step, out)
            for name, out in runs.items()
            for step in reached[name]
            if step % args.keep_every == 0 and (out / "snapshots" / f"step_{step:06d}.pt") not in files
        ),
        key=lambda t: t[0],
    )
    for step, out in extra:
        pair = [out / "snapshots" / f"step_{step:06d}.{ext}" for ext in ("pt", "pt.sha256")]
        add = sum(f.stat().st_size for f in pair)
        if size + add > budget:
            break
        files += pair
        size += add
    work = Path(args.work)
    dest = Path(args.pack)
    dest.mkdir(parents=True, exist_ok=True)
    tar_path = work / "burst.tar"
    with tarfile.open(tar_path, "w") as tar:
        for f in files:
            tar.add(f, arcname=str(f.relative_to(work)))
    part = args.part_mb * 2**20
    data = tar_path.read_bytes()
    for k in range(0, len(data), part):
        (dest / f"burst.tar.part{k // part}").write_bytes(data[k : k + part])
    summary = {
        "common_step": common,
        "reached": {name: (s[-1] if s else 0) for name, s in reached.items()},
        "logged": {name: last_logged_step(out) for name, out in runs.items()},
        "packed_mb": round(len(data) / 2**20, 1),
    }
    (dest / "burst.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--data", required=True, help="dataset TSV (id, image, labels) or folder")
    parser.add_argument("--cache", required=True, help="preprocessed-subject cache (data.cache)")
    parser.add_argument("--work", required=True, help="folder for the runs")
    parser.add_argument("--seconds", type=float, required=True, help="SIGTERM every run after this many seconds")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds to wait after SIGTERM")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads per run")
    parser.add_argument("--max-steps", type=int, default=100000)
    parser.add_argument("--validate-every", type=int, default=500)
    parser.add_argument("--val-io-steps", type=int, default=30)
    parser.add_argument("--patience", type=int, default=6)
    parser.add_argument("--min-delta", type=float, default=0.002)
    parser.add_argument("--pack", help="folder for burst.tar parts and burst.json")
    parser.add_argument("--pack-mb", type=float, default=50.0)
    parser.add_argument("--part-mb", type=int, default=15)
    parser.add_argument("--keep-every", type=int, default=2000)
    parser.add_argument(
        "--state",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pack each run's last.pt and best.pt (--no-state: snapshots only, for a smaller pack)",
    )
    args = parser.parse_args()
    procs = launch(args.recipes, args)
    codes = wait_until(procs, args.seconds, args.grace)
    print(f"exit codes: {codes}", flush=True)
    for name, (_, out) in procs.items():
        print(f"--- {name} (tail of stdout.log)")
        print("\n".join((out / "stdout.log").read_text(errors="replace").splitlines()[-5:]), flush=True)
    if args.pack:
        pack(procs, args)


if __name__ == "__main__":
    main()
