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
