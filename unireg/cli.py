"""The ``unireg`` command line. Each verb is a thin wrapper around one module's function."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import UniregError


def _cmd_preprocess(args) -> None:
    from .atlas import load_atlas
    from .preprocess import PreprocessOptions, preprocess_file
    atlas = load_atlas(args.atlas)
    options = PreprocessOptions(brain_extraction=not args.no_brain_extraction, similarity=args.similarity,
                                nonfinite=args.nonfinite, seed=args.seed)
    result = preprocess_file(args.image, atlas, args.out, options, subject=args.subject)
    qc = result.info["qc"]["brain_mask_dice_with_atlas"]
    print(f"unireg preprocess: wrote {args.out} (brain-mask Dice with atlas {qc:.3f}, "
          f"{sum(result.info['timings_s'].values()):.1f} s)")


def _cmd_atlas_prepare(args) -> None:
    from .atlas import default_atlas_dir, prepare_default_atlas
    out = args.out or default_atlas_dir(args.spacing)
    atlas = prepare_default_atlas(out, spacing=args.spacing)
    print(f"unireg atlas prepare: wrote {atlas.path} (grid {atlas.grid.shape}, {args.spacing:g} mm, "
          f"{len(atlas.table)} labels)")


def _cmd_atlas_import(args) -> None:
    from .atlas import import_atlas
    atlas = import_atlas(args.image, args.labels, args.table, args.out, spacing=args.spacing, mask_path=args.mask)
    print(f"unireg atlas import: wrote {atlas.path} (grid {atlas.grid.shape}, {len(atlas.table)} labels)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unireg", description="unireg: cohort-scale atlas registration with frozen pretrained features (UniReg)")
    parser.add_argument("--version", action="version", version=f"unireg {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser("preprocess", help="reorient, brain-extract, normalise and affine-align one image to an atlas")
    p.add_argument("--image", required=True, help="input NIfTI (.nii/.nii.gz)")
    p.add_argument("--atlas", default="mni2009a", help="atlas folder, or 'mni2009a' for the default (default)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subject", help="subject id used in messages and preprocess.json")
    p.add_argument("--no-brain-extraction", action="store_true",
                   help="skip deepbet (image already skull-stripped, or not a brain)")
    p.add_argument("--similarity", choices=["mi", "lncc"], default="mi",
                   help="affine similarity: mutual information (any modality, default) or local NCC (same modality)")
    p.add_argument("--nonfinite", choices=["error", "zero"], default="error",
                   help="NaN/Inf voxels: stop with an error (default) or set them to 0 and mask them")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_preprocess)

    atlas = verbs.add_parser("atlas", help="build the default atlas or import your own").add_subparsers(
        dest="atlas_verb", metavar="ACTION", required=True)
    p = atlas.add_parser("prepare", help="build the default MNI ICBM152 2009a tissue atlas offline (from nilearn)")
    p.add_argument("--out", help="output folder (default: $UNIREG_HOME or ~/.cache/unireg)")
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (default 2)")
    p.set_defaults(func=_cmd_atlas_prepare)
    p = atlas.add_parser("import", help="bring a user atlas (image + labels + TSV) into the atlas layout")
    p.add_argument("--image", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--table", required=True, help="TSV with header 'index<TAB>name'")
    p.add_argument("--mask", help="optional brain mask (default: labels or bright voxels)")
    p.add_argument("--spacing", type=float, help="resample to this voxel size in mm")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_atlas_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UniregError as err:
        print(f"unireg: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
