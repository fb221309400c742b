"""The ``unireg`` command line. Each verb is a thin wrapper around one module's function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .defaults import (AFFINE_SIMILARITIES, AFFINE_SIMILARITY, DEVICE, INSTANCE_OPT_SIMILARITIES,
                       INSTANCE_OPT_SIMILARITY, INSTANCE_OPT_STEPS, NONFINITE_POLICIES, NONFINITE_POLICY)
from .errors import UniregError


def _cmd_preprocess(args) -> None:
    from .atlas import load_atlas
    from .layout import stage_names
    from .preprocess import PreprocessOptions, preprocess_file
    atlas = load_atlas(args.atlas)
    options = PreprocessOptions(brain_extraction=not args.no_brain_extraction, similarity=args.similarity,
                                nonfinite=args.nonfinite, seed=args.seed)
    names = stage_names("preprocess", args.subject, args.space)
    result = preprocess_file(args.image, atlas, args.out, options, subject=args.subject, names=names)
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


def _cmd_train(args) -> None:
    from .train import train
    card = train(args.config, resume=not args.restart, progress=not args.no_progress)
    val = card.get("validation", {})
    print(f"unireg train: {card['steps']} steps; validation Dice {val.get('val_dice_affine', float('nan')):.3f} "
          f"(affine) -> {val.get('val_dice', float('nan')):.3f} (UniReg)")


def _cmd_register(args) -> None:
    from .layout import stage_names
    from .register import InstanceOptOptions, register_files
    opt = InstanceOptOptions.schedule(args.instance_opt, similarity=args.instance_opt_similarity)
    result = register_files(args.fixed, args.moving, args.out, model_path=args.model,
                            moving_labels_path=args.moving_labels, instance_opt=opt, device=args.device,
                            subject=args.subject, fixed_mask_path=args.fixed_mask,
                            moving_mask_path=args.moving_mask,
                            names=stage_names("register", args.subject, args.space, args.atlas_label))
    jac, qc = result.info["jacobian"], result.info["qc"]
    print("unireg register: environment " + " ".join(f"{k}={v}" for k, v in result.info["environment"].items()))
    print(f"unireg register: wrote {args.out} on {result.info['device']} "
          f"({jac['folding_percent']:.3f} % folding, std log|J| {jac['log_jacobian_std']:.3f})")
    mask_dice = qc["brain_mask_dice_after"]
    print(f"unireg register: QC similarity {qc['similarity_before']:.3f} -> {qc['similarity_after']:.3f} "
          f"({qc['similarity']}), brain-mask Dice "
          + (f"{mask_dice:.3f} ({qc['moving_mask']})" if mask_dice is not None else "n/a (no moving mask or labels)"))


def _cmd_weights_fetch(args) -> None:
    from .weights import fetch_weights
    path = fetch_weights(args.name, args.dest)
    print(f"unireg weights fetch: {path}")


def _cmd_weights_list(args) -> None:
    from .features import EXTRACTORS
    from .weights import WEIGHT_SOURCES, hub_checkpoint_dir
    for name in EXTRACTORS:
        source = WEIGHT_SOURCES.get(name)
        where = f"{hub_checkpoint_dir() / source.file_name}" if source else "packaged / none needed"
        print(f"{name:18s} {where}")


def _cmd_propagate(args) -> None:
    from .atlas import ATLAS_FILES, load_atlas
    from .propagate import propagate_files
    labels_path = args.atlas_labels or Path(load_atlas(args.atlas).path) / ATLAS_FILES["labels"]
    labels = propagate_files(labels_path, args.native, args.affine, args.out, args.displacement, subject=args.subject,
                             table_path=args.table)
    print(f"unireg propagate: wrote {args.out} ({len(set(labels.data.ravel().tolist()) - {0})} labels)")


def _cmd_metrics(args) -> None:
    from .metrics import find_reference, metrics_files
    reference = args.reference or find_reference(args.subject, args.manifest, args.reference_dir)
    rows = metrics_files(args.labels, args.table, args.out, reference, args.registration, subject=args.subject)
    dice = [r["dice"] for r in rows if r["dice"] == r["dice"]]
    summary = f"mean Dice {sum(dice) / len(dice):.3f} over {len(dice)} labels" if dice else "no reference: volumes only"
    print(f"unireg metrics: wrote {args.out} ({summary})")


def _cmd_report(args) -> None:
    from .metrics import regenerate_metrics
    from .report import write_report
    if args.table:
        errors = regenerate_metrics(args.results, args.table, args.reference_dir, args.manifest)
        if errors:
            print(f"unireg report: {len(errors)} subjects could not be re-measured (listed above)")
    result = write_report(args.results, args.out, args.summary, logs_dir=args.logs, manifest_path=args.manifest)
    print(f"unireg report: {Path(args.out).resolve()} ({len(result['per_subject'])} subjects, "
          f"{len(result['qc'])} flagged, {len(result['failed'])} failed)")


def _cmd_index(args) -> None:
    from .cohort import index_command
    index_command(args.input, args.out, modality=args.modality, description_regex=args.description,
                  salt_file=args.salt_file)


def _cmd_convert(args) -> None:
    from .convert import convert_command
    out = convert_command(args.manifest, args.subject, args.out, args.modality, args.description, args.salt_file)
    print(f"unireg convert: wrote {out}")


def _cmd_demo(args) -> None:
    from .demo import make_demo_cohort
    info = make_demo_cohort(Path(args.out), n_subjects=args.subjects, seed=args.seed, low_res=args.low_res)
    print(f"unireg demo: wrote {len(info['subjects'])} subjects to {args.out} (cohort.tsv)")


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
    p.add_argument("--similarity", choices=AFFINE_SIMILARITIES, default=AFFINE_SIMILARITY,
                   help="affine similarity: mutual information (any modality, default) or local NCC (same modality)")
    p.add_argument("--nonfinite", choices=NONFINITE_POLICIES, default=NONFINITE_POLICY,
                   help="NaN/Inf voxels: stop with an error (default) or set them to 0 and mask them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--space", help="with --subject: name the outputs as the results layout does (BIDS derivatives, "
                                   "unireg.layout), this being the atlas's space label, e.g. MNI152NLin2009aSym")
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
    salt_help = ("file holding the secret salt of the hashed study/series UIDs (created once if missing; default "
                 "$UNIREG_HOME/uid_salt or ~/.cache/unireg/uid_salt); index and convert must use the same one")
    p = verbs.add_parser("index", help="index a cohort (DICOM folder or cohort TSV) into a series manifest and "
                                       "select each subject's anatomical series")
    p.add_argument("--input", required=True, help="a folder of DICOM files (any nesting) or a cohort TSV")
    p.add_argument("--out", required=True, help="manifest TSV (a .files.json beside it lists each series' files)")
    p.add_argument("--modality", help="series filter: only series of this modality (e.g. MR) are candidates")
    p.add_argument("--description", help="series filter: only series whose SeriesDescription matches this regular "
                                         "expression (case-insensitive) are candidates")
    p.add_argument("--salt-file", help=salt_help)
    p.set_defaults(func=_cmd_index)

    p = verbs.add_parser("convert", help="convert a subject's selected series to NIfTI with dcm2niix")
    p.add_argument("--manifest", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--out", required=True, help="output .nii.gz (a de-identified .json sidecar is written beside it)")
    p.add_argument("--modality", help="select again, among series of this modality (default: the manifest's "
                                      "selected series)")
    p.add_argument("--description", help="select again, among series whose SeriesDescription matches this "
                                         "regular expression")
    p.add_argument("--salt-file", help=salt_help.replace(" (created once if missing;", " (must exist;"))
    p.set_defaults(func=_cmd_convert)

    p = verbs.add_parser("demo", help="generate the embedded demo cohort (DICOM series + reference labels), offline")
    p.add_argument("--out", required=True, help="output folder (dicom/, reference/, cohort.tsv)")
    p.add_argument("--subjects", type=int, help="number of subjects (default 3; 2 with --low-res)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--low-res", action="store_true", help="small, fast version (3 x 3 x 4 mm) for tests")
    p.set_defaults(func=_cmd_demo)

    p = verbs.add_parser("train", help="train a UniReg model on one dataset (YAML config)")
    p.add_argument("--config", required=True, help="training YAML (see config/train_default.yaml)")
    p.add_argument("--restart", action="store_true", help="ignore <output>/last.pt and start from step 0")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.csv)")
    p.set_defaults(func=_cmd_train)

    p = verbs.add_parser("register", help="deformably register a moving image onto a fixed one (same grid)")
    p.add_argument("--fixed", required=True, help="fixed image (e.g. a subject's preproc.nii.gz)")
    p.add_argument("--moving", required=True, help="moving image (e.g. the atlas template)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", help="checkpoint (default: the packaged mobilenet_v1_025 model)")
    p.add_argument("--moving-labels", help="label map on the moving grid to warp as well")
    p.add_argument("--fixed-mask", help="the fixed image's brain mask (same grid): region of the Jacobian statistics "
                                        "and of the QC similarity (default: the whole grid / non-zero fixed voxels)")
    p.add_argument("--moving-mask", help="the moving image's brain mask (the atlas's atlas_brainmask.nii.gz), for the "
                                         "QC brain-mask Dice (default: --moving-labels > 0)")
    p.add_argument("--instance-opt", type=int, default=INSTANCE_OPT_STEPS, metavar="N",
                   help="refine the prediction with N test-time optimisation steps, 2/3 at the flow grid, "
                        f"1/3 at the image grid (default {INSTANCE_OPT_STEPS}; 0: the network alone)")
    p.add_argument("--instance-opt-similarity", choices=INSTANCE_OPT_SIMILARITIES, default=INSTANCE_OPT_SIMILARITY,
                   help="similarity for --instance-opt: squared local NCC (default; same modality or one whose "
                        "contrast is locally inverted, e.g. T2 vs T1) or MIND-SSC (very low-contrast images, e.g. CT)")
    p.add_argument("--device", default=DEVICE, help="auto (CUDA if visible, else CPU; default), cpu, or cuda (cuda:N)")
    p.add_argument("--subject", help="subject id used in messages")
    p.add_argument("--space", help="with --subject: name the outputs as the results layout does (BIDS derivatives, "
                                   "unireg.layout), this being the atlas's space label")
    p.add_argument("--atlas-label", help="with --space: the atlas's label-set name in the warped labels' name "
                                         "(default: the space label)")
    p.set_defaults(func=_cmd_register)

    p = verbs.add_parser("propagate", help="atlas labels -> a subject's native grid (affine + displacement, one resampling)")
    p.add_argument("--native", required=True, help="the subject's converted (native) NIfTI")
    p.add_argument("--affine", required=True, help="affine.txt from unireg preprocess")
    p.add_argument("--displacement", help="displacement.nii.gz from unireg register (omit: affine only)")
    p.add_argument("--atlas-labels", help="atlas label map (default: the --atlas folder's)")
    p.add_argument("--atlas", default="mni2009a")
    p.add_argument("--out", required=True, help="output label map (.nii.gz)")
    p.add_argument("--subject")
    p.add_argument("--table", help="the atlas's label table TSV: also written beside --out as its look-up table "
                                   "(x_dseg.nii.gz -> x_dseg.tsv)")
    p.set_defaults(func=_cmd_propagate)

    p = verbs.add_parser("metrics", help="per-label Dice and volumes of propagated labels against a reference")
    p.add_argument("--labels", required=True, help="propagated labels (native grid)")
    p.add_argument("--reference", help="reference labels on the same grid (omit: volumes only)")
    p.add_argument("--manifest", help="cohort manifest: its 'reference' column names the reference labels")
    p.add_argument("--reference-dir", help="folder of sub-<id>_labels.nii.gz reference label maps")
    p.add_argument("--table", required=True, help="label table TSV (index, name)")
    p.add_argument("--registration", help="registration.json (adds folding statistics)")
    p.add_argument("--subject", required=True)
    p.add_argument("--out", required=True, help="output TSV")
    p.set_defaults(func=_cmd_metrics)

    p = verbs.add_parser("report", help="aggregate per-subject metrics into a cohort table and HTML report")
    p.add_argument("results", help="results folder (the workflow's results layout: unireg.layout)")
    p.add_argument("--out", help="HTML report (default RESULTS/report.html)")
    p.add_argument("--summary", help="cohort summary TSV (default RESULTS/cohort_metrics.tsv)")
    p.add_argument("--logs", help="the workflow's logs folder, for failed subjects' errors "
                                  "(default RESULTS/../work/logs)")
    p.add_argument("--table", help="label table TSV: first re-measure every subject's propagated labels with it")
    p.add_argument("--reference-dir", help="with --table: folder of sub-<id>_labels.nii.gz reference label maps")
    p.add_argument("--manifest", help="cohort manifest (default RESULTS/manifest.tsv): the report lists each subject's "
                                      "selected series from it; with --table its 'reference' column names references")
    p.set_defaults(func=_cmd_report)

    weights = verbs.add_parser("weights", help="ImageNet weights of the feature extractors").add_subparsers(
        dest="weights_verb", metavar="ACTION", required=True)
    p = weights.add_parser("fetch", help="download torchvision ImageNet weights (hash-checked) into the hub cache")
    p.add_argument("name", choices=["resnet18", "vgg16"])
    p.add_argument("--dest", help="folder (default: $TORCH_HOME/hub/checkpoints)")
    p.set_defaults(func=_cmd_weights_fetch)
    p = weights.add_parser("list", help="where each extractor's weights are looked for")
    p.set_defaults(func=_cmd_weights_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "report":
        args.out = args.out or str(Path(args.results) / "report.html")
        args.summary = args.summary or str(Path(args.results) / "cohort_metrics.tsv")
    try:
        args.func(args)
    except UniregError as err:
        print(f"unireg: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
