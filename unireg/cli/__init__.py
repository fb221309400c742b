"""The ``unireg`` command line: one small module per verb (or verb family) in this package.

Each verb module's ``add_parser(verbs)`` adds its subparser (arguments, help texts) and sets ``func``, a
small run function that imports the module doing the work only when the verb runs, so that
``unireg --help`` stays fast and ``unireg propagate`` never imports torch. Argument pieces that several
verbs share are in ``_common``; option vocabularies and defaults come from ``unireg.defaults``.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import UniregError
from . import (
    atlas,
    batch,
    convert,
    demo,
    index,
    metrics,
    preprocess,
    propagate,
    register,
    report,
    segment,
    train,
    weights,
)

# the verb modules, in the order `unireg --help` lists their verbs
VERB_MODULES = (
    preprocess,
    atlas,
    index,
    convert,
    demo,
    train,
    register,
    segment,
    propagate,
    metrics,
    report,
    batch,
    weights,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unireg", description="unireg: cohort-scale atlas registration with frozen pretrained features (UniReg)"
    )
    parser.add_argument("--version", action="version", version=f"unireg {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module in VERB_MODULES:
        module.add_parser(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UniregError as err:
        print(f"unireg: {err}", file=sys.stderr)
        return 1
    return 0
