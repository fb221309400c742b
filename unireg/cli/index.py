"""``unireg index``: a cohort (DICOM folder, cohort TSV or BIDS dataset) into a series manifest."""

from __future__ import annotations

from ._common import add_files_list, add_salt_file


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "index",
        help="index a cohort (DICOM folder or cohort TSV) into a series manifest and "
        "select each subject's anatomical series",
    )
    p.add_argument("--input", required=True, help="a folder of DICOM files (any nesting) or a cohort TSV")
    p.add_argument("--out", required=True, help="manifest TSV (one row per series, no patient-identifying field)")
    p.add_argument("--modality", help="series filter: only series of this modality (e.g. MR) are candidates")
    p.add_argument(
        "--description",
        help="series filter: only series whose SeriesDescription matches this regular "
        "expression (case-insensitive) are candidates",
    )
    add_salt_file(p, created=True)
    add_files_list(p, written=True)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..cohort import index_command

    index_command(
        args.input,
        args.out,
        modality=args.modality,
        description_regex=args.description,
        salt_file=args.salt_file,
        files_out=args.files_out,
    )
