"""``unireg metrics``: per-label Dice and volumes of propagated labels against a reference."""

from __future__ import annotations

from ._common import REFERENCE_DIR_HELP


def add_parser(verbs) -> None:
    p = verbs.add_parser("metrics", help="per-label Dice and volumes of propagated labels against a reference")
    p.add_argument("--labels", required=True, help="propagated labels (native grid)")
    p.add_argument("--reference", help="reference labels on the same grid (omit: volumes only)")
    p.add_argument("--manifest", help="cohort manifest: its 'reference' column names the reference labels")
    p.add_argument("--reference-dir", help=REFERENCE_DIR_HELP)
    p.add_argument("--table", required=True, help="label table TSV (index, name)")
    p.add_argument("--registration", help="registration.json (adds folding statistics)")
    p.add_argument("--subject", required=True)
    p.add_argument("--out", required=True, help="output TSV")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..metrics import find_reference, metrics_files

    reference = args.reference or find_reference(args.subject, args.manifest, args.reference_dir)
    rows = metrics_files(args.labels, args.table, args.out, reference, args.registration, subject=args.subject)
    dice = [r["dice"] for r in rows if r["dice"] == r["dice"]]
    summary = f"mean Dice {sum(dice) / len(dice):.3f} over {len(dice)} labels" if dice else "no reference: volumes only"
    print(f"unireg metrics: wrote {args.out} ({summary})")
