"""Learning curves of several training runs side by side (prints a table, draws a figure).

Run (writes benchmarks/results/<name>.{md,csv,png}, prints the markdown):

    .venv/bin/python benchmarks/learning_curves.py --name learning_curves runs/burst1/* runs/burst2/mind

Each RUN is a ``unireg train`` output folder (its ``log.csv``, ``config.yaml`` and, if it was shipped
or finished, ``model_card.json``). The table gives, per run and validation step, the mean validation
Dice of the network alone and after the validation's instance optimisation (``train.val_io_steps``),
on the recipe's own validation pairs; all runs must share those pairs (same data split), so that the
numbers compare. The figure draws both curves of every run.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import peers  # noqa: E402  (provenance header shared by the benchmarks)


def snapshot_card(run: Path) -> dict:
    """The model card of a stopped run's last snapshot (it names the devices), else {}."""
    snapshots = sorted((run / "snapshots").glob("step_*.pt"))
    if not snapshots:
        return {}
    import torch

    return torch.load(snapshots[-1], map_location="cpu", weights_only=False).get("model_card", {})


def model_summary(config: dict) -> str:
    """What sets the run's network and loss apart from unireg train's defaults (e.g. 'cascade 2')."""
    from unireg.train import DEFAULTS

    model = {**DEFAULTS["model"], **config["model"]}
    loss = {**DEFAULTS["loss"], **config.get("loss", {})}
    parts = []
    if model["cascade"] != DEFAULTS["model"]["cascade"]:
        parts.append(f"cascade {model['cascade']}")
    if model["flow_stride"] != DEFAULTS["model"]["flow_stride"]:
        parts.append(f"flow_stride {model['flow_stride']}")
    if list(model["channels"]) != DEFAULTS["model"]["channels"]:
        parts.append("channels " + "-".join(str(c) for c in model["channels"]))
    if (loss["dice_weight"], loss["dice_labels"]) != (DEFAULTS["loss"]["dice_weight"], DEFAULTS["loss"]["dice_labels"]):
        parts.append(f"Dice {loss['dice_weight']:g} x {loss['dice_labels']} labels")
    return ", ".join(parts) or "default"


def read_run(run: Path) -> dict:
    config = yaml.safe_load((run / "config.yaml").read_text())
    with open(run / "log.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val_dice")]
    card_path = run / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else snapshot_card(run)
    splits = json.loads((run / "splits.json").read_text())
    return {
        "name": run.name,
        "extractor": config["model"]["extractor"],
        "model": model_summary(config),
        "remap": config["train"].get("augment", {}).get("remap", 0.0),
        "val": splits["val"],
        "device": card.get("device", "-"),
        "curve": {
            int(r["step"]): (float(r["val_dice"]), float(r["val_dice_io"]) if r.get("val_dice_io") else None)
            for r in rows
        },
        "affine": float(rows[0]["val_dice_affine"]) if rows else None,
    }


def markdown(runs: list[dict], steps: list[int], header: list[str]) -> str:
    lines = ["# Learning curves: validation Dice vs training step", ""] + [f"- {h}" for h in header] + [""]
    lines += [
        "Cells: network alone / + IO (the validation's instance optimisation), mean Dice over the validation "
        f"pairs; affine only: {runs[0]['affine']:.4f}. '-': the run did not reach that step.",
        "",
        "| run | extractor | network, loss | remap | trained on | best network alone (step) | "
        + " | ".join(f"step {s}" for s in steps)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(steps),
    ]
    for run in runs:
        cells = []
        for s in steps:
            net, io = run["curve"].get(s, (None, None))
            cells.append("-" if net is None else f"{net:.3f} / {io:.3f}" if io is not None else f"{net:.3f}")
        best = max(run["curve"].items(), key=lambda kv: kv[1][0], default=None)
        best_cell = "-" if best is None else f"{best[1][0]:.3f} ({best[0]})"
        lines.append(
            f"| {run['name']} | {run['extractor']} | {run['model']} | {run['remap']} | {run['device']} | {best_cell} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def figure(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharex=True)
    for run in runs:
        steps = sorted(run["curve"])
        for ax, k in zip(axes, (0, 1)):
            values = [run["curve"][s][k] for s in steps]
            if any(v is not None for v in values):
                ax.plot(steps, [float("nan") if v is None else v for v in values], marker=".", label=run["name"])
    for ax, title in zip(axes, ("network alone", "network + IO")):
        ax.axhline(runs[0]["affine"], color="grey", linestyle=":", label="affine only")
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel("validation mean Dice")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="unireg train output folders")
    parser.add_argument("--name", default="learning_curves", help="stem of the output files")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--every", type=int, default=1, help="table columns: only steps that are multiples of this (all in the csv)"
    )
    args = parser.parse_args(argv)
    started = datetime.datetime.now().astimezone()
    runs = [read_run(r) for r in args.runs]
    if len({tuple(r["val"]) for r in runs}) > 1:
        raise SystemExit("learning_curves: the runs were validated on different subjects; their curves do not compare")
    steps = sorted({s for r in runs for s in r["curve"] if s % args.every == 0})
    header = [
        *peers.provenance(started, peers.command_line(argv, "benchmarks/learning_curves.py"), "tables only"),
        f"validation subjects: {', '.join(runs[0]['val'])}",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(runs, steps, header)
    (args.out / f"{args.name}.md").write_text(text + f"\n![learning curves]({args.name}.png)\n")
    with open(args.out / f"{args.name}.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", "extractor", "model", "remap", "device", "step", "val_dice", "val_dice_io"])
        for r in runs:
            for s, (net, io) in sorted(r["curve"].items()):
                writer.writerow([r["name"], r["extractor"], r["model"], r["remap"], r["device"], s, net, io])
    figure(runs, args.out / f"{args.name}.png")
    print(text)


if __name__ == "__main__":
    main()
