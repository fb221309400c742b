"""``unireg preprocess``: reorient, brain-extract, normalise and affine-align one image to an atlas."""

from __future__ import annotations

from ..defaults import (
    AFFINE_SIMILARITIES,
    AFFINE_SIMILARITY,
    BUILTIN_ATLASES,
    DEFAULT_ATLAS,
    NONFINITE_POLICIES,
    NONFINITE_POLICY,
)
from ._common import SUBJECT_HELP, add_layout_naming


def add_parser(verbs) -> None:
    p = verbs.add_parser("preprocess", help="reorient, brain-extract, normalise and affine-align one image to an atlas")
    p.add_argument("--image", required=True, help="input NIfTI (.nii/.nii.gz)")
    p.add_argument(
        "--atlas",
        default=DEFAULT_ATLAS,
        help=f"atlas folder, or a built-in atlas's name ({', '.join(BUILTIN_ATLASES)}; default {DEFAULT_ATLAS})",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subject", help=SUBJECT_HELP + " and preprocess.json")
    p.add_argument(
        "--no-brain-extraction", action="store_true", help="skip deepbet (image already skull-stripped, or not a brain)"
    )
    p.add_argument(
        "--similarity",
        choices=AFFINE_SIMILARITIES,
        default=AFFINE_SIMILARITY,
        help="affine similarity: mutual information (any modality, default) or local NCC (same modality)",
    )
    p.add_argument(
        "--nonfinite",
        choices=NONFINITE_POLICIES,
        default=NONFINITE_POLICY,
        help="NaN/Inf voxels: stop with an error (default) or set them to 0 and mask them",
    )
    p.add_argument("--seed", type=int, default=0)
    add_layout_naming(p, space_example="MNI152NLin2009aSym")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..atlas import load_atlas
    from ..layout import stage_names
    from ..preprocess import PreprocessOptions, preprocess_file

    atlas = load_atlas(args.atlas)
    options = PreprocessOptions(
        brain_extraction=not args.no_brain_extraction,
        similarity=args.similarity,
        nonfinite=args.nonfinite,
        seed=args.seed,
    )
    names = stage_names("preprocess", args.subject, args.space)
    result = preprocess_file(args.image, atlas, args.out, options, subject=args.subject, names=names)
    qc = result.info["qc"]["brain_mask_dice_with_atlas"]
    print(
        f"unireg preprocess: wrote {args.out} (brain-mask Dice with atlas {qc:.3f}, "
        f"{sum(result.info['timings_s'].values()):.1f} s)"
    )
