"""``unireg register``: deformable registration of a moving image onto a fixed one (same grid)."""

from __future__ import annotations

from ._common import SUBJECT_HELP, add_layout_naming, add_registration_options, instance_opt_options


def add_parser(verbs) -> None:
    p = verbs.add_parser("register", help="deformably register a moving image onto a fixed one (same grid)")
    p.add_argument("--fixed", required=True, help="fixed image (e.g. a subject's preproc.nii.gz)")
    p.add_argument("--moving", required=True, help="moving image (e.g. the atlas template)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--moving-labels", help="label map on the moving grid to warp as well")
    p.add_argument(
        "--fixed-mask",
        help="the fixed image's brain mask (same grid): region of the Jacobian statistics "
        "and of the QC similarity (default: the whole grid / non-zero fixed voxels)",
    )
    p.add_argument(
        "--moving-mask",
        help="the moving image's brain mask (the atlas's atlas_brainmask.nii.gz), for the "
        "QC brain-mask Dice (default: --moving-labels > 0)",
    )
    add_registration_options(p)
    p.add_argument("--subject", help=SUBJECT_HELP)
    add_layout_naming(p, atlas_label=True)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..layout import stage_names
    from ..register import register_files

    result = register_files(
        args.fixed,
        args.moving,
        args.out,
        model_path=args.model,
        moving_labels_path=args.moving_labels,
        instance_opt=instance_opt_options(args),
        device=args.device,
        subject=args.subject,
        fixed_mask_path=args.fixed_mask,
        moving_mask_path=args.moving_mask,
        network_grid=args.network_grid,
        mirror=args.mirror,
        names=stage_names("register", args.subject, args.space, args.atlas_label),
    )
    jac, qc = result.info["jacobian"], result.info["qc"]
    print("unireg register: environment " + " ".join(f"{k}={v}" for k, v in result.info["environment"].items()))
    print(
        f"unireg register: wrote {args.out} on {result.info['device']} "
        f"({jac['folding_percent']:.3f} % folding, std log|J| {jac['log_jacobian_std']:.3f})"
    )
    mask_dice = qc["brain_mask_dice_after"]
    print(
        f"unireg register: QC similarity {qc['similarity_before']:.3f} -> {qc['similarity_after']:.3f} "
        f"({qc['similarity']}), brain-mask Dice "
        + (f"{mask_dice:.3f} ({qc['moving_mask']})" if mask_dice is not None else "n/a (no moving mask or labels)")
    )
