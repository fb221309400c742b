"""``unireg report``: per-subject metrics aggregated into a cohort table and an HTML report."""

from __future__ import annotations

from pathlib import Path

from ._common import REFERENCE_DIR_HELP


def add_parser(verbs) -> None:
    p = verbs.add_parser("report", help="aggregate per-subject metrics into a cohort table and HTML report")
    p.add_argument("results", help="results folder (the workflow's results layout: unireg.layout)")
    p.add_argument("--out", help="HTML report (default RESULTS/report.html)")
    p.add_argument("--summary", help="cohort summary TSV (default RESULTS/cohort_metrics.tsv)")
    p.add_argument(
        "--logs", help="the workflow's logs folder, for failed subjects' errors (default RESULTS/../work/logs)"
    )
    p.add_argument("--table", help="label table TSV: first re-measure every subject's propagated labels with it")
    p.add_argument("--reference-dir", help="with --table: " + REFERENCE_DIR_HELP)
    p.add_argument(
        "--manifest",
        help="cohort manifest (default RESULTS/manifest.tsv): the report lists each subject's "
        "selected series from it; with --table its 'reference' column names references",
    )
    p.add_argument(
        "--fail-on-failed",
        action="store_true",
        help="after writing the report, exit with status 1 if a subject of the manifest failed a stage "
        "(the workflow's batches record failures instead of failing their jobs: unireg.batch)",
    )
    p.set_defaults(func=run)


def run(args) -> None:
    from ..report import write_report

    args.out = args.out or str(Path(args.results) / "report.html")
    args.summary = args.summary or str(Path(args.results) / "cohort_metrics.tsv")
    if args.table:
        from ..metrics import regenerate_metrics

        errors = regenerate_metrics(args.results, args.table, args.reference_dir, args.manifest)
        if errors:
            print(f"unireg report: {len(errors)} subjects could not be re-measured (listed above)")
    result = write_report(args.results, args.out, args.summary, logs_dir=args.logs, manifest_path=args.manifest)
    print(
        f"unireg report: {Path(args.out).resolve()} ({len(result['per_subject'])} subjects, "
        f"{len(result['qc'])} flagged, {len(result['failed'])} failed)"
    )
    if args.fail_on_failed:
        fail_on_failed(result["failed"], args.manifest or str(Path(args.results) / "manifest.tsv"), args.out)


def fail_on_failed(failed, manifest: str, html: str) -> None:
    """A one-line error naming the cohort's failed subjects (those of ``manifest`` if it exists)."""
    from ..errors import UniregError

    if Path(manifest).is_file():
        import pandas as pd

        cohort = set(pd.read_csv(manifest, sep="\t", dtype=str)["subject"])
        failed = failed[failed["subject"].isin(cohort)]
    if len(failed):
        shown = "; ".join(f"{s} ({e})" for s, e in zip(failed["subject"][:5], failed["error"][:5]))
        more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
        raise UniregError(f"{len(failed)} subject(s) failed: {shown}{more}; the report lists them: {html}")
