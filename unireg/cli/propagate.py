"""``unireg propagate``: atlas labels onto a subject's native grid (affine + displacement, one resampling).

Never imports torch: the workflow runs it in an environment without it.
"""

from __future__ import annotations

from pathlib import Path

from ..defaults import BUILTIN_ATLASES, DEFAULT_ATLAS


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "propagate", help="atlas labels -> a subject's native grid (affine + displacement, one resampling)"
    )
    p.add_argument("--native", required=True, help="the subject's converted (native) NIfTI")
    p.add_argument("--affine", required=True, help="affine.txt from unireg preprocess")
    p.add_argument("--displacement", help="displacement.nii.gz from unireg register (omit: affine only)")
    p.add_argument("--atlas-labels", help="atlas label map (default: the --atlas folder's)")
    p.add_argument(
        "--atlas",
        default=DEFAULT_ATLAS,
        help=f"atlas folder, or a built-in atlas's name ({', '.join(BUILTIN_ATLASES)}; default {DEFAULT_ATLAS})",
    )
    p.add_argument("--out", required=True, help="output label map (.nii.gz)")
    p.add_argument("--subject")
    p.add_argument(
        "--table",
        help="the atlas's label table TSV: also written beside --out as its look-up table "
        "(x_dseg.nii.gz -> x_dseg.tsv)",
    )
    p.set_defaults(func=run)


def run(args) -> None:
    from ..atlas import ATLAS_FILES, load_atlas
    from ..propagate import propagate_files

    labels_path = args.atlas_labels or Path(load_atlas(args.atlas).path) / ATLAS_FILES["labels"]
    labels = propagate_files(
        labels_path, args.native, args.affine, args.out, args.displacement, subject=args.subject, table_path=args.table
    )
    print(f"unireg propagate: wrote {args.out} ({len(set(labels.data.ravel().tolist()) - {0})} labels)")
