"""unireg.batch without Snakemake: batches, failure isolation, the ledger and the rerun trigger."""

import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unireg.batch import dag_state, read_ledger, run_batch, run_member, split, state_path
from unireg.cli import main as unireg_main
from unireg.errors import UniregError


def test_split_sorts_deduplicates_and_chunks():
    batches = split(["c", "a", "b", "e", "d", "a"], 2)
    assert batches == {"b000001": ["a", "b"], "b000002": ["c", "d"], "b000003": ["e"]}
    assert split(["x"], 10) == {"b000001": ["x"]}
    with pytest.raises(UniregError, match="at least 1"):
        split(["x"], 0)


def _fake_verb(tmp_path, bad=(), crash=()):
    """A runner standing in for the unireg CLI: ``touch OUT`` writes OUT, prints a line; a bad member
    fails as a verb does (a one-line ``unireg: `` error, status 1), a crashing one raises."""
    calls = []

    def runner(argv):
        subject = argv[argv.index("--subject") + 1]
        calls.append(subject)
        print(f"working on {subject}")
        if subject in crash:
            raise ZeroDivisionError("division by zero")
        if subject in bad:
            Path(argv[argv.index("--out") + 1]).write_text("half")  # a partial output
            print(f"unireg: {subject}: in.nii.gz: cannot read as NIfTI", file=sys.stderr)
            return 1
        Path(argv[argv.index("--out") + 1]).write_text(f"made from {subject}")
        return 0

    return runner, calls


def _run(tmp_path, runner, subjects=("s1", "s2", "s3"), after=None, command=None):
    out = str(tmp_path / "out" / "{subject}.txt")
    (tmp_path / "out").mkdir(exist_ok=True)
    return run_batch(
        "convert",
        list(subjects),
        command or ["touch", "--subject", "{subject}", "--out", out],
        tmp_path / "batches" / "convert" / "b000001.tsv",
        str(tmp_path / "logs" / "convert" / "{subject}.log"),
        inputs=[str(tmp_path / "in.txt")],
        outputs=[out],
        after=after,
        runner=runner,
    )


def test_a_failing_member_fails_alone_and_the_batch_goes_on(tmp_path):
    (tmp_path / "in.txt").write_text("input")
    runner, calls = _fake_verb(tmp_path, bad={"s2"}, crash={"s3"})
    result = _run(tmp_path, runner, subjects=("s1", "s2", "s3", "s4"))
    assert calls == ["s1", "s2", "s3", "s4"]
    ledger = read_ledger(tmp_path / "batches" / "convert" / "b000001.tsv")
    assert {s: m.status for s, m in ledger.items()} == {"s1": "ok", "s2": "failed", "s3": "failed", "s4": "ok"}
    assert ledger["s2"].error == "unireg: s2: in.nii.gz: cannot read as NIfTI"
    assert ledger["s3"].error.startswith("unireg: s3: unexpected ZeroDivisionError in 'unireg touch'")
    # the failed members' (partial) outputs are gone, as Snakemake removes a failed job's outputs
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s1.txt", "s4.txt"]
    logs = tmp_path / "logs" / "convert"
    assert (logs / "s1.log").read_text() == "working on s1\n"
    assert (logs / "s2.log").read_text().splitlines()[-1] == ledger["s2"].error
    assert "Traceback" in (logs / "s3.log").read_text()  # the crash, whole, in its member's log only
    summary = result.summary("convert", "b000001.tsv")
    assert summary.startswith("unireg batch: convert b000001: 2 ok (0 up to date), 2 failed (s2, s3)")


def test_rerun_redoes_only_the_failed_member_and_leaves_batch_mates_untouched(tmp_path):
    (tmp_path / "in.txt").write_text("input")
    runner, calls = _fake_verb(tmp_path, bad={"s2"})
    _run(tmp_path, runner)
    ok_file = tmp_path / "out" / "s1.txt"
    os.utime(ok_file, (1e9 + 10, 1e9 + 10))
    os.utime(tmp_path / "in.txt", (1e9, 1e9))
    runner, calls = _fake_verb(tmp_path)  # the bad input was fixed
    result = _run(tmp_path, runner)
    assert calls == ["s2"]
    assert ok_file.stat().st_mtime == 1e9 + 10
    assert [(m.subject, m.status, m.ran) for m in result.members] == [
        ("s1", "ok", "no"),
        ("s2", "ok", "yes"),
        ("s3", "ok", "no"),
    ]
    # a newer input, or another command line, redoes a member as Snakemake would redo its job
    newer = time.time() + 100
    os.utime(tmp_path / "in.txt", (newer, newer))
    runner, calls = _fake_verb(tmp_path)
    _run(tmp_path, runner)
    assert calls == ["s1", "s2", "s3"]
    runner, calls = _fake_verb(tmp_path)
    out = str(tmp_path / "out" / "{subject}.txt")
    _run(tmp_path, runner, command=["touch", "--subject", "{subject}", "--out", out, "--new-option"])
    assert calls == ["s1", "s2", "s3"]


def test_a_batch_killed_midway_resumes_after_its_last_finished_member(tmp_path):
    (tmp_path / "in.txt").write_text("input")
    runner, calls = _fake_verb(tmp_path)

    def killed_at_s3(argv):
        if "s3" in argv:
            raise KeyboardInterrupt  # as SIGINT, or a SLURM time limit, ends the job
        return runner(argv)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, killed_at_s3, subjects=("s1", "s2", "s3", "s4"))
    assert calls == ["s1", "s2"]
    assert not (tmp_path / "batches" / "convert" / "b000001.tsv").exists()  # the job did not finish
    runner, calls = _fake_verb(tmp_path)
    result = _run(tmp_path, runner, subjects=("s1", "s2", "s3", "s4"))
    assert calls == ["s3", "s4"] and [m.ran for m in result.members] == ["no", "no", "yes", "yes"]


def test_members_that_failed_an_earlier_stage_are_skipped(tmp_path):
    (tmp_path / "in.txt").write_text("input")
    runner, _ = _fake_verb(tmp_path, bad={"s2"})
    _run(tmp_path, runner)
    upstream = tmp_path / "batches" / "convert" / "b000001.tsv"
    runner, calls = _fake_verb(tmp_path)
    result = run_batch(
        "preprocess",
        ["s1", "s2", "s3"],
        ["touch", "--subject", "{subject}", "--out", str(tmp_path / "pre_{subject}.txt")],
        tmp_path / "batches" / "preprocess" / "b000001.tsv",
        str(tmp_path / "logs" / "preprocess" / "{subject}.log"),
        outputs=[str(tmp_path / "pre_{subject}.txt")],
        after=upstream,
        runner=runner,
    )
    assert calls == ["s1", "s3"]
    assert result.members[1].status == "skipped" and "convert" in result.members[1].error
    assert not (tmp_path / "logs" / "preprocess" / "s2.log").exists()


def test_dag_state_is_unchanged_by_a_complete_run_and_changed_by_a_failure_or_a_deletion(tmp_path):
    """The params rerun trigger of the workflow's batch rules (unireg.batch module docstring)."""
    (tmp_path / "in.txt").write_text("input")
    ledger = tmp_path / "batches" / "convert" / "b000001.tsv"
    outputs = [str(tmp_path / "out" / "{subject}.txt")]
    members = ["s1", "s2", "s3"]

    def state():
        return dag_state(ledger, members, outputs)

    before = state()  # as Snakemake records it when it runs the job
    runner, _ = _fake_verb(tmp_path, bad={"s2"})
    _run(tmp_path, runner)
    after_failure = state()
    assert after_failure != before  # s2 failed: the next run reruns the batch
    runner, _ = _fake_verb(tmp_path)
    _run(tmp_path, runner)
    assert state() == after_failure  # complete: nothing to do next time
    (tmp_path / "out" / "s3.txt").unlink()
    deleted = state()
    assert deleted != after_failure  # a member's outputs deleted: rerun
    ledger.unlink()  # Snakemake removes the job's outputs before it reruns it; the hidden copy stays
    assert state_path(ledger).is_file()
    runner, calls = _fake_verb(tmp_path)
    _run(tmp_path, runner)
    assert calls == ["s3"] and state() == deleted


def test_a_member_logs_subprocess_output_too(tmp_path):
    def runner(argv):
        print("from python")
        subprocess.run(["echo", "from a subprocess"], check=True)
        return 0

    status = run_member(["verb"], tmp_path / "m.log", "s1", runner)
    assert status == 0
    assert (tmp_path / "m.log").read_text().splitlines() == ["from python", "from a subprocess"]


def _labels(path: Path, value: int) -> None:
    data = np.zeros((6, 6, 6), np.int16)
    data[1:4, 1:4, 1:4] = value
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def test_unireg_batch_runs_a_real_verb_per_member(tmp_path, capsys):
    """`unireg batch ... -- metrics ...`: the CLI as the workflow's rules call it, one corrupt member."""
    (tmp_path / "table.tsv").write_text("index\tname\n1\tone\n2\ttwo\n")
    for subject, value in (("a1", 1), ("a2", 2)):
        _labels(tmp_path / f"{subject}_dseg.nii.gz", value)
    (tmp_path / "bad_dseg.nii.gz").write_bytes(b"not a nifti")
    status = unireg_main(
        [
            "batch",
            "--stage",
            "metrics",
            "--subjects",
            "a1",
            "bad",
            "a2",
            "--ledger",
            str(tmp_path / "ledger.tsv"),
            "--log",
            str(tmp_path / "logs" / "{subject}.log"),
            "--inputs",
            str(tmp_path / "{subject}_dseg.nii.gz"),
            "--outputs",
            str(tmp_path / "{subject}_metrics.tsv"),
            "--",
            "metrics",
            "--labels",
            str(tmp_path / "{subject}_dseg.nii.gz"),
            "--table",
            str(tmp_path / "table.tsv"),
            "--subject",
            "{subject}",
            "--out",
            str(tmp_path / "{subject}_metrics.tsv"),
        ]
    )
    assert status == 0
    assert "2 ok (0 up to date), 1 failed (bad)" in capsys.readouterr().out
    ledger = read_ledger(tmp_path / "ledger.tsv")
    assert [ledger[s].status for s in ("a1", "bad", "a2")] == ["ok", "failed", "ok"]
    assert ledger["bad"].error.startswith("unireg: bad: ") and "bad_dseg.nii.gz" in ledger["bad"].error
    assert (tmp_path / "logs" / "bad.log").read_text().strip() == ledger["bad"].error
    for subject, present in (("a1", "one"), ("a2", "two")):
        assert present in (tmp_path / f"{subject}_metrics.tsv").read_text()
    assert not (tmp_path / "bad_metrics.tsv").exists()


def test_the_model_is_loaded_once_per_process(tmp_path):
    import shutil

    from unireg.model import DEFAULT_MODEL, loaded_checkpoint

    first, _ = loaded_checkpoint(None, "cpu")
    again, _ = loaded_checkpoint(None, "cpu")
    assert first is again
    copy = tmp_path / DEFAULT_MODEL.name
    shutil.copy(DEFAULT_MODEL, copy)
    shutil.copy(DEFAULT_MODEL.with_name(DEFAULT_MODEL.name + ".sha256"), tmp_path)
    other, _ = loaded_checkpoint(copy, "cpu")
    assert other is not first
    os.utime(copy, (1e9, 1e9))  # replaced (a new modification time): loaded and verified again
    assert loaded_checkpoint(copy, "cpu")[0] is not other


def _benchmark(name: str, *args: str, tmp_path: Path) -> str:
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / name), *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_dag_speed_counts_submissions_per_subject_from_the_dag(tmp_path):
    _benchmark("dag_speed.py", "--subjects", "25", "--batch-size", "10", "1", tmp_path=tmp_path)
    rows = [r.split("|")[1:-1] for r in (tmp_path / "dag_speed.md").read_text().splitlines() if r.startswith("| 25")]
    # 3 batches (or 25) x 5 per-subject stages, + atlas + report (+ all, which submits nothing)
    assert [[c.strip() for c in r[:5]] for r in rows] == [
        ["25", "10", "18", "17", "0.680"],
        ["25", "1", "128", "127", "5.080"],
    ]


def test_batch_speed_measures_batched_and_unbatched_registration(tmp_path):
    _benchmark("batch_speed.py", "--subjects", "2", "--instance-opt", "0", tmp_path=tmp_path)
    table = (tmp_path / "batch_speed.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| 0 |")).split("|")[2:-1]
    startup, unbatched, work, batched = (float(c) for c in row[:4])
    assert 0 < startup < unbatched and batched > 0 and abs(unbatched - startup - work) < 0.02
    assert "| 10 |" in table  # the derived batch sizes
