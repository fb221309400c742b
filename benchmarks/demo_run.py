"""The README's demo, timed: the whole workflow on the shipped config, in a fresh folder.

Run: .venv/bin/python benchmarks/demo_run.py [--cores 2] [--atlas-spacing 1] [--atlas mni2009a] [--out DIR]

Runs ``snakemake --cores N`` with the shipped ``config/config.yaml`` (the demo cohort, all its
subjects; ``--atlas`` / ``--atlas-spacing`` override those two keys) in a new temporary working
directory, so nothing is reused from an earlier run; the setup (``make setup``) is not part of the
time. Prints, and writes to ``OUT/demo.md`` (``demo-<atlas>-<spacing>mm.md`` when overridden):
wall-clock seconds of the whole run and per subject, the number of jobs, the largest peak memory
of any job (Snakemake's per-job ``max_rss``), seconds per rule summed over subjects, failed
subjects (must be none), each subject's mean Dice over the atlas labels against its known
reference labels, and the report's per-label Dice (mean +- sd over the subjects).
Keep the machine otherwise idle while it runs.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def run(cores: int, overrides: dict) -> dict:
    snakemake = Path(sys.executable).parent / "snakemake"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    with tempfile.TemporaryDirectory(prefix="unireg-demo-") as tmp:
        config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        config.update(overrides)
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config))
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                str(snakemake),
                "--snakefile",
                str(REPO / "Snakefile"),
                "--directory",
                tmp,
                "--configfile",
                str(Path(tmp) / "config.yaml"),
                "--cores",
                str(cores),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"demo failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        work = Path(tmp)
        per_rule: dict[str, float] = {}
        peak_mb, jobs = 0.0, 0
        for bench in sorted((work / "work" / "benchmarks").glob("*/*.tsv")):
            (row,) = _rows(bench)
            per_rule[bench.parent.name] = per_rule.get(bench.parent.name, 0.0) + float(row["s"])
            peak_mb = max(peak_mb, float(row["max_rss"]) if row["max_rss"] not in ("", "NA") else 0.0)
            jobs += 1
        labels = _rows(work / "results" / "cohort_metrics.tsv")
        per_subject = _rows(work / "results" / "cohort_metrics_per_subject.tsv")
        expected = config["demo"]["subjects"]
        return {
            "load": load,
            "config": config,
            "seconds": seconds,
            "jobs": jobs,
            "peak_mb": peak_mb,
            "per_rule": per_rule,
            "labels": labels,
            "per_subject": per_subject,
            "n_subjects": len(per_subject),
            "no_failed_subject": len(per_subject) == expected,
        }


def table(result: dict, command: str) -> str:
    config = result["config"]
    n = max(result["n_subjects"], 1)
    lines = [
        f"# Demo run (`{command}`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs visible; the shipped `config/config.yaml` "
        f"(demo cohort) with atlas `{config['atlas']}` at {config['atlas_spacing']:g} mm, fresh working "
        f"directory, setup not included; load average {result['load']:.1f} at the start (above 0.5: other "
        "jobs were running, times are upper bounds).",
        "",
        "| wall time (s) | per subject (s) | jobs | subjects | failed subjects | largest job peak memory (MB) |",
        "|---|---|---|---|---|---|",
        f"| {result['seconds']:.0f} | {result['seconds'] / n:.0f} | {result['jobs']} | {result['n_subjects']} | "
        f"{'none' if result['no_failed_subject'] else 'SOME (see report)'} | {result['peak_mb']:.0f} |",
        "",
        f"Seconds per rule, summed over its jobs (one per batch of batch_size {config['batch_size']} subjects; "
        "jobs run 2 at a time):",
        "",
        "| rule | seconds |",
        "|---|---|",
    ]
    lines += [f"| {rule} | {s:.1f} |" for rule, s in sorted(result["per_rule"].items(), key=lambda kv: -kv[1])]
    lines += [
        "",
        "Per subject, over the atlas labels (Dice against the subject's known reference labels):",
        "",
        "| subject | labels | mean Dice | median HD95 (mm) | folding (%) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['subject']} | {row['n_labels']} | {float(row['mean_dice']):.3f} | "
        f"{float(row['median_hd95_mm']):.2f} | {float(row['folding_percent']):.3f} |"
        for row in result["per_subject"]
    ]
    lines += [
        "",
        "Dice of each propagated atlas label against the subjects' known reference:",
        "",
        "| label | subjects | Dice mean | Dice sd | HD95 median (mm) |",
        "|---|---|---|---|---|",
    ]
    for row in result["labels"]:
        lines.append(
            f"| {row['name']} | {row['n']} | {float(row['dice_mean']):.3f} | {float(row['dice_sd']):.3f} | "
            f"{float(row['hd95_mm_median']):.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--atlas", help="override config.yaml's atlas")
    parser.add_argument("--atlas-spacing", type=float, help="override config.yaml's atlas_spacing (mm)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    overrides = {"atlas": args.atlas, "atlas_spacing": args.atlas_spacing}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    result = run(args.cores, overrides)
    command = " ".join(["benchmarks/demo_run.py", *sys.argv[1:]]) if sys.argv[1:] else "benchmarks/demo_run.py"
    text = table(result, command)
    config = result["config"]
    name = f"demo-{config['atlas']}-{config['atlas_spacing']:g}mm.md" if overrides else "demo.md"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / name).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
