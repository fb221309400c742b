"""Seconds for `snakemake -n` (DAG building) on a cohort of N fake subjects, and the SLURM
submissions the DAG holds per subject (prints a table; writes it to benchmarks/results/dag_speed.md).

Run: .venv/bin/python benchmarks/dag_speed.py [--subjects 1000 10000] [--batch-size 10 1] [--name NAME]
The cohort TSV, manifest and file list are written into a temporary folder; nothing is executed.
Submissions: every job of the DAG but `all` (which runs nothing); with the SLURM profile each is
one `sbatch` (no Snakemake groups). --batch-size: config batch_size (default: config/config.yaml's).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--batch-size", type=int, nargs="+", help="config batch_size values (default: the config's)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="dag_speed", help="the table's file name in --out (default dag_speed)")
    args = parser.parse_args()
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["batch_size"]
    rows = []
    for n, size in [(n, size) for size in args.batch_size or [default] for n in args.subjects]:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            ids = [f"s{k:05d}" for k in range(n)]
            (work / "cohort.tsv").write_text("subject\tnifti\n" + "".join(f"{s}\tnifti/{s}.nii.gz\n" for s in ids))
            (work / "results").mkdir()
            (work / "work").mkdir()
            (work / "work" / "manifest.files.json").write_text("{}\n")  # the index's other output
            (work / "results" / "manifest.tsv").write_text(
                "subject\tkind\tpath\treference\n" + "".join(f"{s}\tnifti\tnifti/{s}.nii.gz\t\n" for s in ids)
            )
            config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
            config["cohort"] = "cohort.tsv"
            config["batch_size"] = size
            (work / "config.yaml").write_text(yaml.safe_dump(config))
            env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
            t0 = time.perf_counter()
            proc = subprocess.run(
                [
                    str(Path(sys.executable).parent / "snakemake"),
                    "--snakefile",
                    str(REPO / "Snakefile"),
                    "--directory",
                    str(work),
                    "--configfile",
                    str(work / "config.yaml"),
                    "-n",
                    "--quiet",
                    "rules",
                    "--cores",
                    "2",
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-3000:])
            stats = job_stats(proc.stdout + proc.stderr)
            jobs = stats.pop("total")
            submissions = jobs - stats.get("all", 0)
            rows.append((n, size, jobs, submissions, seconds))
            print(f"{n} subjects, batch_size {size}: {jobs} jobs, {seconds:.1f} s", flush=True)
    lines = [
        f"Run: `.venv/bin/python benchmarks/dag_speed.py --subjects {' '.join(map(str, args.subjects))}"
        + (f" --batch-size {' '.join(map(str, args.batch_size))}" if args.batch_size else "")
        + (f" --name {args.name}`" if args.name != "dag_speed" else "`"),
        f"({os.cpu_count()} cores; load average before the run {os.getloadavg()[0]:.2f})",
        "",
        "| subjects | batch_size | jobs in DAG | SLURM submissions | per subject | seconds for snakemake -n |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {size} | {jobs} | {sub} | {sub / n:.3f} | {sec:.1f} |" for n, size, jobs, sub, sec in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)


def job_stats(text: str) -> dict[str, int]:
    """Snakemake's "Job stats" table of a dry run: rule -> job count, and "total"."""
    stats, inside = {}, False
    for line in text.splitlines():
        fields = line.split()
        if line.startswith("Job stats"):
            inside = True
        elif inside and len(fields) == 2 and fields[1].isdigit():
            stats[fields[0]] = int(fields[1])
            if fields[0] == "total":
                break
    return stats


if __name__ == "__main__":
    main()
