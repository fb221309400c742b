"""Argument pieces that several verbs share: one wording each."""

from __future__ import annotations

import argparse

SUBJECT_HELP = "subject id used in messages"
SPACE_HELP = (
    "with --subject: name the outputs as the results layout does (BIDS derivatives, unireg.layout), "
    "this being the atlas's space label"
)
ATLAS_LABEL_HELP = "with --space: the atlas's label-set name in the warped labels' name (default: the space label)"
SALT_FILE_HELP = (
    "file holding the secret salt of the hashed study/series UIDs ({}; default "
    "$UNIREG_HOME/uid_salt or ~/.cache/unireg/uid_salt); index and convert must use the same one"
)
REFERENCE_DIR_HELP = "folder of sub-<id>_labels.nii.gz reference label maps"
FILES_LIST_HELP = (
    "JSON listing each series' DICOM files ({}; default: <manifest name>.files.json beside the "
    "manifest); its paths may carry identifying file names (SOPInstanceUIDs), so keep it out of "
    "shared results (the workflow uses <work>/manifest.files.json); index and convert must use the same one"
)


def add_actions(verbs: argparse._SubParsersAction, verb: str, help: str) -> argparse._SubParsersAction:
    """A verb family (``unireg VERB ACTION``): the subparsers its action modules add to."""
    return verbs.add_parser(verb, help=help).add_subparsers(dest=f"{verb}_verb", metavar="ACTION", required=True)


def add_layout_naming(
    parser: argparse.ArgumentParser, *, space_example: str | None = None, atlas_label: bool = False
) -> None:
    """``--space`` (and ``--atlas-label``): with ``--subject``, the outputs named as in unireg.layout."""
    parser.add_argument("--space", help=SPACE_HELP + (f", e.g. {space_example}" if space_example else ""))
    if atlas_label:
        parser.add_argument("--atlas-label", help=ATLAS_LABEL_HELP)


def add_salt_file(parser: argparse.ArgumentParser, *, created: bool) -> None:
    """``--salt-file`` of index (which creates the salt) and convert (which needs it to exist)."""
    parser.add_argument(
        "--salt-file", help=SALT_FILE_HELP.format("created once if missing" if created else "must exist")
    )


def add_files_list(parser: argparse.ArgumentParser, *, written: bool) -> None:
    """``--files-out`` of index (which writes the list of each series' files) and ``--files`` of
    convert (which reads it)."""
    parser.add_argument(
        "--files-out" if written else "--files",
        help=FILES_LIST_HELP.format("written by index" if written else "as written by 'unireg index --files-out'"),
    )


def add_registration_options(parser: argparse.ArgumentParser) -> None:
    """--model, --instance-opt, --instance-opt-similarity, --network-grid, --mirror, --device: how a moving image
    is registered (``unireg register``, and every atlas of ``unireg segment``)."""
    from ..defaults import (
        DEVICE,
        INSTANCE_OPT_SIMILARITIES,
        INSTANCE_OPT_SIMILARITY,
        INSTANCE_OPT_STEPS,
        MIRROR,
        NETWORK_GRID,
        NETWORK_GRIDS,
    )

    parser.add_argument("--model", help="checkpoint (default: the packaged MIND-SSC cascade, unireg_mind.pt)")
    parser.add_argument(
        "--instance-opt",
        type=int,
        default=INSTANCE_OPT_STEPS,
        metavar="N",
        help="refine the prediction with N test-time optimisation steps, 2/3 at the flow grid, "
        f"1/3 at the image grid (default {INSTANCE_OPT_STEPS}; 0: the network alone)",
    )
    parser.add_argument(
        "--instance-opt-similarity",
        choices=INSTANCE_OPT_SIMILARITIES,
        default=INSTANCE_OPT_SIMILARITY,
        help="similarity for --instance-opt: squared local NCC (default; same modality or one whose "
        "contrast is locally inverted, e.g. T2 vs T1) or MIND-SSC (very low-contrast images, e.g. CT)",
    )
    parser.add_argument(
        "--network-grid",
        choices=NETWORK_GRIDS,
        default=NETWORK_GRID,
        help="where the network predicts: model (default) = on the images pooled to the model's training "
        "spacing when the grid is an integer factor finer (a 2 mm model on a 1 mm atlas: pooled by 2); "
        "atlas = on the grid as given. Instance optimisation always runs on the given grid",
    )
    parser.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=MIRROR,
        help="test-time mirroring: average the network's prediction with its prediction for both images "
        f"mirrored left-right (twice the network's time, higher Dice; default {'on' if MIRROR else 'off'})",
    )
    parser.add_argument(
        "--device", default=DEVICE, help="auto (CUDA if visible, else CPU; default), cpu, or cuda (cuda:N)"
    )


def instance_opt_options(args):
    """The :class:`unireg.register.InstanceOptOptions` of :func:`add_registration_options`' arguments."""
    from ..register import InstanceOptOptions

    return InstanceOptOptions.schedule(args.instance_opt, similarity=args.instance_opt_similarity)
