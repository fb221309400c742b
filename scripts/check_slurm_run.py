"""Check a workflow run on SLURM made by scripts/ci_slurm.sh; print what was checked, exit 1 on failure.

Evidence used (all kept in the run's working directory):
  snakemake.out     Snakemake's output, each line prefixed with the epoch second it was printed
  squeue.txt        `squeue --states=all -O JobID,Partition,State,tres-per-job,tres-alloc` after the
                    run (the CI cluster keeps finished jobs for an hour: MinJobAge=3600)
  .snakemake/slurm_logs/**/<slurm id>.log   each SLURM job's log: the rules and subjects it ran
  work/benchmarks/<rule>/<batch>.tsv        written by every job that ran, wherever it ran (cohort-level
                    rules: <rule>/<name>.tsv)
  work/batches/<stage>/<batch>.tsv          each batch job's ledger: its members' outcomes (unireg.batch)
  results/sub-<id>/anat/*_desc-nonlinear_xfm.json  the register job's record: environment (partition, GPU);
                    with an atlas set (--atlas) the segment job's, *_dseg.json
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from unireg.defaults import ATLAS_SET_FILE, DEFAULT_ATLAS  # noqa: E402  (pure Python)
from unireg.layout import atlas_entities, subject_files  # noqa: E402

SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (.+)\)\.")
MAX_REPORT_DELAY_S = 60.0
MIN_MEAN_DICE = 0.5  # over the atlas structures, as tests/test_workflow.py asks of the same cohort


def gpu_stage(atlas: str) -> tuple[str, str]:
    """(the GPU rule, the layout key of its record): segment with an atlas set, else register."""
    if (Path(atlas) / ATLAS_SET_FILE).is_file():
        return "segment", "segment_json"
    return "register", "displacement_json"


def _at(work: Path, subject: str, key: str, atlas: str = DEFAULT_ATLAS) -> Path:
    """File ``key`` of a subject in the run's results layout."""
    return work / "results" / subject_files(subject, *atlas_entities(atlas))[key]


def read_timestamped(path: Path) -> list[tuple[float, str]]:
    lines = []
    for raw in path.read_text().splitlines():
        stamp, _, text = raw.partition(" ")
        try:
            lines.append((float(stamp), text))
        except ValueError:
            continue
    return lines


def jobs_in_slurm_log(path: Path) -> set[tuple[str, str]]:
    """(rule, wildcard value or "") for every Snakemake job the SLURM job ran, from its log (the
    value of its first wildcard: the batch, or e.g. the atlas rule's atlas_name)."""
    jobs, rule = set(), None
    for line in path.read_text(errors="replace").splitlines():
        if m := re.match(r"\s*(?:local)?(?:rule|checkpoint) (\w+):", line):
            rule = m.group(1)
            jobs.add((rule, ""))
        elif rule and (m := re.match(r"\s*wildcards: \w+=([\w.-]+)", line)):
            jobs.discard((rule, ""))
            jobs.add((rule, m.group(1)))
    return jobs


@functools.cache
def _ledgers(work: Path, stage: str) -> dict[str, tuple[str, dict]]:
    """subject -> (batch id, its ledger row), over every batch ledger of the stage (read once)."""
    found = {}
    for ledger in sorted((work / "work" / "batches" / stage).glob("b*.tsv")):
        for row in pd.read_csv(ledger, sep="\t", dtype=str, keep_default_na=False).to_dict("records"):
            found[row["subject"]] = (ledger.stem, row)
    return found


def batch_of(work: Path, stage: str, subject: str) -> tuple[str, dict] | None:
    """(batch id, the subject's ledger row) of the stage's batch job that had the subject as a member."""
    return _ledgers(work, stage).get(subject)


def check(work: Path, exit_status: int, failing: list[str], good: list[str], atlas: str = DEFAULT_ATLAS) -> list[str]:
    problems: list[str] = []
    gpu_rule, record = gpu_stage(atlas)
    per_subject_rules = ("convert", "preprocess", gpu_rule, "propagate", "metrics")

    def expect(ok: bool, what: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            problems.append(what)

    out = read_timestamped(work / "snakemake.out")
    submitted = {int(m.group(1)): Path(m.group(2)) for _, text in out if (m := SUBMITTED.search(text))}
    queue = (
        pd.read_csv(
            work / "squeue.txt",
            sep="|",
            header=None,
            dtype=str,
            names=["id", "partition", "state", "tres_per_job", "tres_alloc"],
        )
        .assign(id=lambda q: q["id"].astype(int))
        .set_index("id")
    )
    expect(
        bool(submitted) and set(submitted) <= set(queue.index),
        f"{len(submitted)} SLURM jobs submitted, each with a SLURM record",
    )

    # every job that ran (it left a benchmark file) ran inside a SLURM job
    in_slurm: dict[tuple[str, str], list[int]] = {}
    for slurm_id, log in submitted.items():
        for job in jobs_in_slurm_log(log):
            in_slurm.setdefault(job, []).append(slurm_id)
    benchmarks = (work / "work" / "benchmarks").glob("*/*.tsv")
    ran = {(p.parent.name, "" if p.stem == p.parent.name else p.stem) for p in benchmarks}
    expect(
        bool(ran) and ran <= set(in_slurm),
        f"all {len(ran)} jobs that ran did so in SLURM jobs"
        + (f" (not: {sorted(ran - set(in_slurm))})" if ran - set(in_slurm) else ""),
    )
    expect(not any(re.search(r"\blocalrule\b", text) for _, text in out), "no job ran on the submitting host")

    subjects = len(set(good) | set(failing))
    per_subject = len(submitted) / subjects
    print(f"     {len(submitted)} SLURM submissions for {subjects} subjects: {per_subject:.2f} per subject")

    # the good subjects: each stage's batch job completed in SLURM with the subject ok in its ledger,
    # the GPU rule on the gpu partition with a GPU
    for subject in good:
        for rule in per_subject_rules:
            batch, row = batch_of(work, rule, subject) or ("", {})
            ids = in_slurm.get((rule, batch), [])
            expect(
                row.get("status") == "ok" and any(queue.loc[i, "state"] == "COMPLETED" for i in ids),
                f"{subject}: {rule} ok in batch {batch or '(none)'}, SLURM job(s) {ids} completed",
            )
        batch, _ = batch_of(work, gpu_rule, subject) or ("", {})
        for i in in_slurm.get((gpu_rule, batch), []):
            expect(
                queue.loc[i, "partition"] == "gpu" and "gpu:1" in queue.loc[i, "tres_per_job"],
                f"{subject}: {gpu_rule} SLURM job {i} in partition {queue.loc[i, 'partition']} "
                f"asking for {queue.loc[i, 'tres_per_job']}",
            )
        env = json.loads(_at(work, subject, record, atlas).read_text())["environment"]
        expect(
            env.get("slurm_job_partition") == "gpu"
            and env.get("cuda_visible_devices") not in (None, "")
            and env.get("slurm_gpus_on_node", "0") != "0",
            f"{subject}: {gpu_rule} ran with SLURM_JOB_PARTITION={env.get('slurm_job_partition')} "
            f"CUDA_VISIBLE_DEVICES={env.get('cuda_visible_devices')} "
            f"SLURM_GPUS_ON_NODE={env.get('slurm_gpus_on_node')}",
        )
        metrics = pd.read_csv(_at(work, subject, "metrics", atlas), sep="\t")
        mean_dice, n_labels = metrics["dice"].mean(), int(metrics["dice"].notna().sum())
        # the bounds of tests/test_workflow.py's local run of the same cohort
        expect(
            mean_dice > MIN_MEAN_DICE and n_labels > 100,
            f"{subject}: propagated labels against the reference: mean Dice {mean_dice:.3f} over {n_labels} labels",
        )

    # the failing subject: it failed alone in its batch (the batch job completed, the ledger records
    # the failure, its batch-mates went on); the report job failed the run, and Snakemake said so
    # within a minute of that SLURM job's end
    expect(exit_status != 0, f"snakemake exit status {exit_status} (a subject failed)")
    errors = [(t, text) for t, text in out if text.startswith("Error in ")]
    report_jobs = in_slurm.get(("report", "report"), []) or in_slurm.get(("report", ""), [])
    failed_report = [i for i in report_jobs if queue.loc[i, "state"] == "FAILED"]
    expect(bool(failed_report), f"the report's SLURM job(s) {failed_report} FAILED (a subject failed)")
    for i in failed_report:
        ended = submitted[i].stat().st_mtime
        reported = [t for t, _ in errors if t >= ended - 1]
        delay = reported[0] - ended if reported else float("inf")
        expect(delay <= MAX_REPORT_DELAY_S, f"Snakemake reported SLURM job {i}'s failure {delay:.0f} s after it ended")
    for subject in failing:
        batch, row = batch_of(work, "convert", subject) or ("", {})
        mates = [s for s in good if (batch_of(work, "convert", s) or ("",))[0] == batch]
        ids = in_slurm.get(("convert", batch), [])
        expect(
            row.get("status") == "failed"
            and row.get("error", "").startswith(f"unireg: {subject}: ")
            and any(queue.loc[i, "state"] == "COMPLETED" for i in ids),
            f"{subject}: failed alone in batch {batch or '(none)'} (SLURM job(s) {ids} completed; "
            f"batch-mates {mates}): {row.get('error', '')}",
        )
        log = work / f"work/logs/convert/{subject}.log"
        expect(
            log.exists() and log.read_text().startswith(f"unireg: {subject}: "),
            f"{subject}: one-line error in its log: {log.read_text().strip() if log.exists() else '(none)'}",
        )
        expect(not _at(work, subject, "labels", atlas).exists(), f"{subject}: no labels written")
        report = work / "results/report.html"
        text = report.read_text() if report.exists() else ""
        expect(
            subject in text and "cannot read as NIfTI" in text and all(s in text for s in good),
            f"{subject}: listed with its error in the report, beside the good subjects",
        )
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--exit-status", type=int, required=True)
    parser.add_argument("--failing", nargs="*", default=[])
    parser.add_argument("--good", nargs="+", required=True)
    parser.add_argument(
        "--atlas", default=DEFAULT_ATLAS, help=f"the run's atlas: a built-in name (default {DEFAULT_ATLAS}) or a folder"
    )
    args = parser.parse_args(argv)
    problems = check(args.work, args.exit_status, args.failing, args.good, args.atlas)
    print(f"SLURM run check: {'passed' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
