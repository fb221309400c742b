"""``unireg atlas prepare`` / ``unireg atlas import``: build a built-in atlas or import your own."""

from __future__ import annotations

from ..defaults import BUILTIN_ATLASES, DEFAULT_ATLAS
from ._common import add_actions


def add_parser(verbs) -> None:
    actions = add_actions(verbs, "atlas", "build a built-in atlas or import your own")
    p = actions.add_parser(
        "prepare", help="build a built-in atlas offline on the MNI ICBM152 2009a template (from nilearn)"
    )
    p.add_argument(
        "--name",
        choices=BUILTIN_ATLASES,
        default=DEFAULT_ATLAS,
        help=f"which atlas (default {DEFAULT_ATLAS}): mni2009a = 3 tissue classes (CSF, grey, white matter); "
        "mni2009a-allen = the Allen Human Reference Atlas structures, left and right (CC BY 4.0)",
    )
    p.add_argument("--out", help="output folder (default: atlas-<name>-<spacing>mm in $UNIREG_HOME or ~/.cache/unireg)")
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (default 2)")
    p.set_defaults(func=run_prepare)
    p = actions.add_parser("import", help="bring a user atlas (image + labels + TSV) into the atlas layout")
    p.add_argument("--image", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--table", required=True, help="TSV with header 'index<TAB>name'")
    p.add_argument("--mask", help="optional brain mask (default: labels or bright voxels)")
    p.add_argument("--spacing", type=float, help="resample to this voxel size in mm")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run_import)
    p = actions.add_parser(
        "import-set", help="build an atlas set (multi-atlas segmentation) from labelled subjects on a reference atlas"
    )
    p.add_argument("--manifest", required=True, help="TSV with columns id, image, labels (paths relative to it)")
    p.add_argument("--table", required=True, help="the label table every member shares (TSV 'index<TAB>name')")
    p.add_argument(
        "--reference",
        default=DEFAULT_ATLAS,
        help=f"the atlas subjects are preprocessed onto: a built-in name or an atlas folder (default {DEFAULT_ATLAS})",
    )
    p.add_argument("--spacing", type=float, default=2.0, help="spacing of a built-in reference in mm (default 2)")
    p.add_argument(
        "--brain-extraction", action="store_true", help="members are whole heads (default: already skull-stripped)"
    )
    p.add_argument("--out", required=True, help="new folder for the set")
    p.set_defaults(func=run_import_set)


def run_prepare(args) -> None:
    from ..atlas import default_atlas_dir, prepare_atlas

    out = args.out or default_atlas_dir(args.spacing, args.name)
    atlas = prepare_atlas(args.name, out, spacing=args.spacing)
    print(
        f"unireg atlas prepare: wrote {atlas.path} (grid {atlas.grid.shape}, {args.spacing:g} mm, "
        f"{len(atlas.table)} labels)"
    )


def run_import(args) -> None:
    from ..atlas import import_atlas

    atlas = import_atlas(args.image, args.labels, args.table, args.out, spacing=args.spacing, mask_path=args.mask)
    print(f"unireg atlas import: wrote {atlas.path} (grid {atlas.grid.shape}, {len(atlas.table)} labels)")


def run_import_set(args) -> None:
    from ..atlas import builtin_atlas, load_atlas
    from ..atlas_set import import_atlas_set
    from ..defaults import AFFINE_SIMILARITY
    from ..preprocess import PreprocessOptions

    reference = builtin_atlas(args.reference, args.spacing) if args.reference in BUILTIN_ATLASES else None
    reference = reference or load_atlas(args.reference)
    options = PreprocessOptions(brain_extraction=args.brain_extraction, similarity=AFFINE_SIMILARITY)
    aset = import_atlas_set(args.manifest, reference, args.table, args.out, options)
    print(
        f"unireg atlas import-set: wrote {aset.path}: {len(aset.members)} atlases on grid {aset.grid.shape}, "
        f"{len(aset.table)} labels common to all"
    )
