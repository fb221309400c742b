"""``unireg batch``: one workflow stage for a batch of subjects in one process (unireg.batch)."""

from __future__ import annotations

import argparse


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "batch",
        help="run a verb for each subject of a batch in one process (failures isolated; a ledger)",
        description="Run 'unireg VERB ...' once per subject, '{subject}' in the command, the log, "
        "--inputs and --outputs replaced by the subject's id; a member that fails is recorded in the "
        "ledger and the batch goes on (module unireg.batch).",
    )
    p.add_argument("--stage", required=True, help="the stage's name, in messages and the ledger's folder")
    p.add_argument("--subjects", nargs="+", required=True, metavar="ID", help="the batch's members, in order")
    p.add_argument("--ledger", required=True, help="the batch's ledger TSV: each member's status (written)")
    p.add_argument("--log", required=True, help="each member's log, a template with {subject}")
    p.add_argument("--after", help="the previous stage's ledger: members that are not 'ok' there are skipped, not run")
    p.add_argument(
        "--inputs", nargs="*", default=[], metavar="PATH", help="each member's input files (templates): newer = redo"
    )
    p.add_argument("--outputs", nargs="*", default=[], metavar="PATH", help="each member's output files (templates)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- VERB ARGS... (with {subject})")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..batch import run_batch

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    result = run_batch(
        args.stage,
        args.subjects,
        command,
        args.ledger,
        args.log,
        inputs=args.inputs,
        outputs=args.outputs,
        after=args.after,
    )
    print(result.summary(args.stage, args.ledger))
