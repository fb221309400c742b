"""Seconds and peak memory of the cohort aggregation (dask) for many per-subject metric tables.

Run: .venv/bin/python benchmarks/aggregate_speed.py [--subjects 10000] [--labels 30] [--report]
Writes ``--subjects`` tables of ``--labels`` rows (seeded values, 2 % NaN Dice) into a temporary
folder, then times :func:`unireg.report.aggregate` plus writing its TSV and Parquet outputs
(``--report`` also times the whole HTML report, without subject images). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unireg.metrics import METRIC_COLUMNS  # noqa: E402
from unireg.report import _write_aggregate_tables, aggregate, write_report  # noqa: E402


def write_cohort(results: Path, n_subjects: int, n_labels: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    header = "\t".join(METRIC_COLUMNS) + "\n"
    labels = np.arange(1, n_labels + 1)
    for s in range(n_subjects):
        subject = f"s{s:05d}"
        dice = rng.uniform(0.6, 0.95, n_labels)
        hd95 = rng.uniform(1.0, 8.0, n_labels)
        empty = rng.random(n_labels) < 0.02
        folding = rng.exponential(0.05)
        lines = [header]
        for label, d, h, e in zip(labels, dice, hd95, empty):
            d, h, m, reason = (
                ("nan", "nan", "nan", "empty in reference") if e else (f"{d:.6g}", f"{h:.6g}", f"{h / 3:.6g}", "")
            )
            lines.append(
                f"{subject}\t{label}\tregion_{label}\t{d}\t{h}\t{m}\t1.5\t1.6\t{reason}\t{folding:.6g}\t0.21\n"
            )
        folder = results / f"sub-{subject}"
        folder.mkdir(parents=True)
        (folder / f"sub-{subject}_metrics.tsv").write_text("".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--labels", type=int, default=30)
    parser.add_argument("--report", action="store_true", help="also time write_report (no subject images)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="unireg-aggregate-") as tmp:
        results = Path(tmp) / "results"
        start = time.perf_counter()
        write_cohort(results, args.subjects, args.labels)
        generate_s = time.perf_counter() - start
        start = time.perf_counter()
        per_label, per_subject = aggregate(results)
        aggregate_s = time.perf_counter() - start
        start = time.perf_counter()
        _write_aggregate_tables(per_label, per_subject, results)
        write_s = time.perf_counter() - start
        report_s = None
        if args.report:
            start = time.perf_counter()
            write_report(results, results / "report.html", results / "cohort_metrics.tsv")
            report_s = time.perf_counter() - start
        assert len(per_subject) == args.subjects and len(per_label) == args.labels
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"(generating the tables took {generate_s:.1f} s)\n")
    print(
        "| subjects | labels | rows | aggregate s | write TSV+Parquet s | total s | peak RSS MB |"
        + (" report s |" if report_s is not None else "")
    )
    print("|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if report_s is not None else ""))
    print(
        f"| {args.subjects} | {args.labels} | {args.subjects * args.labels} | {aggregate_s:.2f} | {write_s:.2f} "
        f"| {aggregate_s + write_s:.2f} | {peak_mb:.0f} |" + (f" {report_s:.2f} |" if report_s is not None else "")
    )


if __name__ == "__main__":
    main()
