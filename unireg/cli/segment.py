"""``unireg segment``: multi-atlas segmentation of one preprocessed subject with an atlas set."""

from __future__ import annotations

from ..defaults import FUSION, FUSIONS
from ._common import SUBJECT_HELP, add_layout_naming, add_registration_options, instance_opt_options


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "segment",
        help="register every atlas of an atlas set onto a preprocessed subject and fuse their labels",
    )
    p.add_argument("--fixed", required=True, help="the subject's preprocessed image (on the set's reference grid)")
    p.add_argument("--atlas-set", required=True, help="an atlas set folder ('unireg atlas import-set')")
    p.add_argument(
        "--out",
        required=True,
        help="output folder (labels.nii.gz, confidence.nii.gz, segment.json; "
        "with --subject and --space named as in the results layout)",
    )
    p.add_argument(
        "--fusion",
        choices=FUSIONS,
        default=FUSION,
        help=f"majority vote, weighted (local intensity similarity) or jlf (joint label fusion); default {FUSION}",
    )
    p.add_argument("--k", type=int, help="use the first K members only (default: all)")
    p.add_argument("--fixed-mask", help="the subject's brain mask (same grid), for the Jacobian statistics")
    add_registration_options(p)
    p.add_argument("--subject", help=SUBJECT_HELP)
    add_layout_naming(p, atlas_label=True)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..layout import stage_names
    from ..segment import segment_files

    info = segment_files(
        args.fixed,
        args.atlas_set,
        args.out,
        fusion=args.fusion,
        k=args.k,
        model_path=args.model,
        instance_opt=instance_opt_options(args),
        device=args.device,
        subject=args.subject,
        fixed_mask_path=args.fixed_mask,
        network_grid=args.network_grid,
        mirror=args.mirror,
        names=stage_names("segment", args.subject, args.space, args.atlas_label),
    )
    seconds = sum(m["seconds"] for m in info["members"])
    print(
        f"unireg segment: wrote {args.out}: {info['k']} atlases fused by {info['fusion']} "
        f"({info['disagreement_percent']:.1f} % of voxels disputed; {seconds:.1f} s registering, "
        f"{info['fusion_seconds']:.1f} s fusing)"
    )
