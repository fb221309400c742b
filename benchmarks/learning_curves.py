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


def read_run(run: Path) -> dict:
    config = yaml.safe_load((run / "config.yaml").read_text())
    with open(run / "log.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val_dice")]
    card_path = run / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    splits = json.loads((run / "splits.json").read_text())
    return {
        "name": run.name,
        "extractor": config["model"]["extractor"],
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
        "| run | extractor | remap | trained on | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|---|---|---|" + "---|" * len(steps),
    ]
    for run in runs:
        cells = []
        for s in steps:
            net, io = run["curve"].get(s, (None, None))
            cells.append("-" if net is None else f"{net:.3f} / {io:.3f}" if io is not None else f"{net:.3f}")
        lines.append(
            f"| {run['name']} | {run['extractor']} | {run['remap']} | {run['device']} | " + " | ".join(cells) + " |"
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
    args = parser.parse_args(argv)
    started = datetime.datetime.now().astimezone()
    runs = [read_run(r) for r in args.runs]
    if len({tuple(r["val"]) for r in runs}) > 1:
        raise SystemExit("learning_curves: the runs were validated on different subjects; their curves do not compare")
    steps = sorted({s for r in runs for s in r["curve"]})
    header = [
        *peers.provenance(started, peers.command_line(argv, "benchmarks/learning_curves.py"), "tables only"),
        f"validation subjects: {', '.join(runs[0]['val'])}",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(runs, steps, header)
    (args.out / f"{args.name}.md").write_text(text + f"\n![learning curves]({args.name}.png)\n")
    with open(args.out / f"{args.name}.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", "extractor", "remap", "device", "step", "val_dice", "val_dice_io"])
        for r in runs:
            for s, (net, io) in sorted(r["curve"].items()):
                writer.writerow([r["name"], r["extractor"], r["remap"], r["device"], s, net, io])
    figure(runs, args.out / f"{args.name}.png")
    print(text)


if __name__ == "__main__":
    main()
