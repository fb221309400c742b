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
