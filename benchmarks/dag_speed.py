"""Seconds for `snakemake -n` (DAG building) on a cohort of N fake subjects (prints a table).

Run: .venv/bin/python benchmarks/dag_speed.py [--subjects 1000]
The cohort TSV, manifest and file list are written into a temporary folder; nothing is executed.
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
    args = parser.parse_args()
    rows = []
    for n in args.subjects:
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
            jobs = max(
                int(line.split()[-1])
                for line in (proc.stdout + proc.stderr).splitlines()
                if line.startswith("total") and line.split()[-1].isdigit()
            )
            rows.append((n, jobs, seconds))
    print("| subjects | jobs in DAG | seconds for snakemake -n |")
    print("|---|---|---|")
    for n, jobs, seconds in rows:
        print(f"| {n} | {jobs} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
