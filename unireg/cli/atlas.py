"""``unireg atlas prepare`` / ``unireg atlas import``: build the default atlas or import your own."""

from __future__ import annotations

from ._common import add_actions


def add_parser(verbs) -> None:
    actions = add_actions(verbs, "atlas", "build the default atlas or import your own")
    p = actions.add_parser("prepare", help="build the default MNI ICBM152 2009a tissue atlas offline (from nilearn)")
    p.add_argument("--out", help="output folder (default: $UNIREG_HOME or ~/.cache/unireg)")
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
    from ..atlas import default_atlas_dir, prepare_default_atlas

    out = args.out or default_atlas_dir(args.spacing)
    atlas = prepare_default_atlas(out, spacing=args.spacing)
    print(
        f"unireg atlas prepare: wrote {atlas.path} (grid {atlas.grid.shape}, {args.spacing:g} mm, "
        f"{len(atlas.table)} labels)"
    )


def run_import(args) -> None:
    from ..atlas import import_atlas

    atlas = import_atlas(args.image, args.labels, args.table, args.out, spacing=args.spacing, mask_path=args.mask)
    print(f"unireg atlas import: wrote {atlas.path} (grid {atlas.grid.shape}, {len(atlas.table)} labels)")
