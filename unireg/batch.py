"""Batches: one job runs a workflow stage for several subjects, each exactly as its own job would.

A batch is a fixed slice of the cohort (:func:`split`: the sorted subject ids in chunks of
``batch_size``). ``unireg batch`` (:func:`run_batch`) runs one stage's verb for every member in
turn, in one process: the same command line a one-subject job runs (``{subject}`` filled in), its
output in the member's own log (``<work>/logs/<stage>/<subject>.log``), so torch is imported and the
model loaded once per batch instead of once per subject (:func:`unireg.model.loaded_checkpoint`).

Failure isolation. A member that fails (a :class:`~unireg.errors.UniregError`, any other exception,
or a non-zero exit) is recorded and its outputs removed; the batch goes on with the next member
and the job succeeds, so that its batch-mates reach the later stages. The job's one output is the
batch's *ledger* (``<work>/batches/<stage>/<batch>.tsv``, :data:`LEDGER_COLUMNS`): each member's
status (``ok``, ``failed``, or ``skipped`` when the member did not finish the stage before,
``--after``), its error line, seconds, and the command it ran; a hidden copy (:func:`state_path`)
outlives Snakemake's removal of the ledger before a rerun, and is written after every member, so
that a job killed mid-batch (its time or memory limit) resumes after the last finished member.
The cohort report lists failed members and fails the run (``unireg report --fail-on-failed``), as
a failed per-subject job did.

Reruns redo only what is missing, on two levels:

- Snakemake reruns a batch's job when its :func:`dag_state` changed (a ``params`` rerun trigger):
  the number of times its members' outputs were made from nothing (ledger column ``made``) plus the
  number of members whose outputs are missing now. A run that makes every missing output leaves it
  unchanged, so the next run has nothing to do; a member that failed, or whose outputs were
  deleted, changes it. Its options (``params``) changing reruns it as well.
- Inside the job, a member is redone only if it is not up to date (:func:`up_to_date`): its outputs
  exist, none is older than its inputs, and its ledger row says ``ok`` with the same command.
  Batch-mates that are up to date are not touched (their files keep their modification times).

A batch's membership follows the sorted cohort: adding subjects shifts later batches, whose jobs
then rerun but redo only the new members. Pure standard library: the Snakefile imports this module.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UniregError

#: the batch wildcard of the workflow (``b000001``...): never a subject id's shape in the logs
BATCH_PATTERN = "b[0-9]{6}"
LEDGER_COLUMNS = ("subject", "status", "made", "ran", "seconds", "command", "error")
SUBJECT = "{subject}"


def split(subjects, size: int) -> dict[str, list[str]]:
    """Batch id -> members: the sorted, de-duplicated subject ids in chunks of ``size``."""
    if size < 1:
        raise UniregError(f"batch size must be at least 1 (got {size})")
    ordered = sorted(set(subjects))
    return {f"b{k // size + 1:06d}": ordered[k : k + size] for k in range(0, len(ordered), size)}


def fill(template: str, subject: str) -> str:
    """A path or argument template with the member's id in place of ``{subject}``."""
    return template.replace(SUBJECT, subject)


@dataclass
class Member:
    subject: str
    status: str = ""
    made: int = 0
    ran: str = "no"
    seconds: float = 0.0
    command: str = ""
    error: str = ""

    def row(self) -> dict:
        return {**asdict(self), "seconds": f"{self.seconds:.2f}"}


def read_ledger(path: str | Path) -> dict[str, Member]:
    """The ledger's members by subject id ({} when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    members = {}
    for row in rows:
        try:
            members[row["subject"]] = Member(
                subject=row["subject"],
                status=row["status"],
                made=int(row["made"]),
                ran=row.get("ran", "no"),
                seconds=float(row.get("seconds") or 0),
                command=row.get("command", ""),
                error=row.get("error", ""),
            )
        except (KeyError, TypeError, ValueError):
            raise UniregError("not a batch ledger (columns: " + ", ".join(LEDGER_COLUMNS) + ")", path=path) from None
    return members


def write_ledger(path: str | Path, members: list[Member]) -> Path:
    """Write the ledger atomically (a temporary file renamed into place)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LEDGER_COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    for member in members:
        writer.writerow(member.row())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text.getvalue())
    os.replace(tmp, path)
    return path


def missing_outputs(subject: str, outputs) -> list[str]:
    return [p for p in (fill(t, subject) for t in outputs) if not os.path.exists(p)]


def state_path(ledger: str | Path) -> Path:
    """The ledger's hidden copy (``.<batch>.tsv`` beside it), read by the next run: Snakemake
    removes a job's outputs, the ledger among them, before it runs the job again."""
    ledger = Path(ledger)
    return ledger.with_name("." + ledger.name)


def dag_state(ledger: str | Path, subjects, outputs) -> str:
    """The batch job's rerun trigger (a ``params`` value): outputs made so far + outputs missing now.

    Making every missing output adds exactly as many to ``made`` as it takes from the missing
    count, so a run that completes the batch leaves this unchanged; a member that failed or whose
    outputs were deleted since changes it (module docstring)."""
    made = read_ledger(state_path(ledger))
    total = sum(made[s].made for s in subjects if s in made)
    missing = sum(1 for s in subjects if missing_outputs(s, outputs))
    return str(total + missing)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def up_to_date(previous: Member | None, command: str, inputs: list[str], outputs: list[str]) -> bool:
    """The member's outputs exist, none is older than an input, and its last run, with this very
    command, succeeded."""
    if previous is None or previous.status != "ok" or previous.command != command:
        return False
    made = [_mtime(p) for p in outputs]
    if not made or any(m is None for m in made):
        return False
    needed = [m for m in (_mtime(p) for p in inputs) if m is not None]
    return not needed or min(made) >= max(needed)


def _last_error(log: Path) -> str:
    """The member's one-line error: the last ``unireg: `` line of its log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line.startswith("unireg: ")), "")


def run_member(argv: list[str], log: Path, subject: str, runner=None) -> int:
    """Run ``unireg <argv>`` in this process with stdout and stderr (file descriptors 1 and 2, so
    also of subprocesses such as dcm2niix) going to ``log``; the exit status. An unexpected
    exception is logged with its traceback and a one-line ``unireg: <subject>: `` error."""
    if runner is None:
        from .cli import main as runner
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    streams = sys.stdout, sys.stderr
    try:
        with open(log, "w", buffering=1) as fh:  # line-buffered: Python's and subprocesses' lines in order
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            sys.stdout = sys.stderr = fh
            try:
                status = runner(argv)
            except SystemExit as exc:  # argparse, or a verb that exits itself
                status = exc.code if isinstance(exc.code, int) else 1
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - one member's crash must not end its batch
                traceback.print_exc()
                print(
                    f"unireg: {subject}: unexpected {type(exc).__name__} in 'unireg {argv[0]}': "
                    + " ".join(str(exc).split()),
                    file=sys.stderr,
                )
                status = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    return int(status or 0)


@dataclass
class BatchResult:
    members: list[Member] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(m.status == status for m in self.members)

    def summary(self, stage: str, ledger: str | Path) -> str:
        failed = [m.subject for m in self.members if m.status == "failed"]
        kept = sum(m.status == "ok" and m.ran == "no" for m in self.members)
        return (
            f"unireg batch: {stage} {Path(ledger).stem}: {self.count('ok')} ok ({kept} up to date), "
            f"{len(failed)} failed{' (' + ', '.join(failed) + ')' if failed else ''}, "
            f"{self.count('skipped')} skipped (an earlier stage did not finish)"
        )


def run_batch(
    stage: str,
    subjects: list[str],
    command: list[str],
    ledger: str | Path,
    log: str,
    *,
    inputs=(),
    outputs=(),
    after: str | Path | None = None,
    runner=None,
) -> BatchResult:
    """Run ``unireg <command>`` for each member (``{subject}`` filled in everywhere), write the ledger.

    ``log``, ``inputs`` and ``outputs`` are templates with ``{subject}``; ``after``: the previous
    stage's ledger (members that are not ``ok`` there are skipped). See the module docstring."""
    if not command:
        raise UniregError(f"unireg batch {stage}: no command to run (give it after --)")
    previous = read_ledger(state_path(ledger))
    upstream = read_ledger(after) if after else None
    result = BatchResult()
    for subject in subjects:
        argv = [fill(a, subject) for a in command]
        line = " ".join(argv)
        ins, outs = [fill(t, subject) for t in inputs], [fill(t, subject) for t in outputs]
        before = previous.get(subject)
        member = Member(subject=subject, made=before.made if before else 0, command=line)
        if upstream is not None and (subject not in upstream or upstream[subject].status != "ok"):
            member.status, member.error = "skipped", f"an earlier stage ({Path(after).parent.name}) did not finish"
        elif up_to_date(before, line, ins, outs):
            member.status, member.seconds = "ok", before.seconds
        else:
            if any(not os.path.exists(p) for p in outs):
                member.made += 1
            t0 = time.perf_counter()
            status = run_member(argv, Path(fill(log, subject)), subject, runner)
            member.ran, member.seconds = "yes", time.perf_counter() - t0
            missing = [p for p in outs if not os.path.exists(p)]
            if status == 0 and not missing:
                member.status = "ok"
            else:
                member.status = "failed"
                member.error = _last_error(Path(fill(log, subject))) or (
                    f"unireg: {subject}: 'unireg {argv[0]}' exited with status {status}"
                    if status
                    else f"unireg: {subject}: 'unireg {argv[0]}' did not write {', '.join(missing)}"
                )
                for path in outs:  # as Snakemake removes a failed job's outputs
                    if os.path.exists(path):
                        os.remove(path)
        result.members.append(member)
        if member.ran == "yes":  # progress, for a job killed mid-batch (time limit, memory): its retry resumes
            done = {m.subject for m in result.members}
            write_ledger(state_path(ledger), result.members + [m for s, m in previous.items() if s not in done])
    write_ledger(state_path(ledger), result.members)
    write_ledger(ledger, result.members)
    return result
