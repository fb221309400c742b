"""``unireg demo``: the embedded demo cohort (DICOM series + reference labels), generated offline."""

from __future__ import annotations

from pathlib import Path

from ..defaults import BUILTIN_ATLASES, DEFAULT_ATLAS


def add_parser(verbs) -> None:
    p = verbs.add_parser("demo", help="generate the embedded demo cohort (DICOM series + reference labels), offline")
    p.add_argument("--out", required=True, help="output folder (dicom/, reference/, cohort.tsv)")
    p.add_argument("--subjects", type=int, help="number of subjects (default 3; 2 with --low-res)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--low-res", action="store_true", help="small, fast version (3 x 3 x 4 mm) for tests")
    p.add_argument(
        "--atlas",
        choices=(*BUILTIN_ATLASES, "none"),
        default=DEFAULT_ATLAS,
        help=f"reference labels: this built-in atlas's labels under each subject's known deformation "
        f"(default {DEFAULT_ATLAS}); none: no reference labels",
    )
    p.add_argument(
        "--atlas-spacing",
        type=float,
        default=2.0,
        help="spacing (mm) of the atlas the cohort is segmented with: structures the atlas drops at it "
        "are left out of the reference labels too (default 2)",
    )
    p.set_defaults(func=run)


def run(args) -> None:
    from ..demo import make_demo_cohort

    info = make_demo_cohort(
        Path(args.out),
        n_subjects=args.subjects,
        seed=args.seed,
        low_res=args.low_res,
        reference_atlas=None if args.atlas == "none" else args.atlas,
        atlas_spacing=args.atlas_spacing,
    )
    print(f"unireg demo: wrote {len(info['subjects'])} subjects to {args.out} (cohort.tsv)")
