"""``unireg convert``: a subject's selected series to NIfTI with dcm2niix."""

from __future__ import annotations

from ._common import add_files_list, add_salt_file


def add_parser(verbs) -> None:
    p = verbs.add_parser("convert", help="convert a subject's selected series to NIfTI with dcm2niix")
    p.add_argument("--manifest", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--out", required=True, help="output .nii.gz (a de-identified .json sidecar is written beside it)")
    p.add_argument(
        "--modality", help="select again, among series of this modality (default: the manifest's selected series)"
    )
    p.add_argument(
        "--description", help="select again, among series whose SeriesDescription matches this regular expression"
    )
    add_salt_file(p, created=False)
    add_files_list(p, written=False)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..convert import convert_command

    out = convert_command(
        args.manifest, args.subject, args.out, args.modality, args.description, args.salt_file, args.files
    )
    print(f"unireg convert: wrote {out}")
