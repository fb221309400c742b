"""The Snakemake workflow end to end on the 2-subject, low-resolution demo cohort."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from unireg.io import load_image
from unireg.metrics import dice_per_label

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def _snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run([str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(workdir / "config.yaml"), *args],
                          capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _config(workdir: Path, **overrides) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["demo"].update(low_res=True, subjects=2)
    config.update(overrides)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    _config(workdir)
    _snakemake(workdir, "--cores", "2")
    return workdir


def test_demo_cohort_runs_end_to_end_and_labels_overlap_references(finished_run):
    results = finished_run / "results"
    for subject in ("demo01", "demo02"):
        labels = load_image(results / f"sub-{subject}" / f"sub-{subject}_labels.nii.gz", label=True)
        native = load_image(results / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz")
        reference = load_image(finished_run / "resources" / "demo" / "reference" / f"sub-{subject}_labels.nii.gz",
                               label=True)
        assert labels.shape == native.shape and np.allclose(labels.affine, native.affine, atol=1e-4)
        dice = dice_per_label(reference.data, labels.data, [1, 2, 3])
        print(subject, {k: round(v, 3) for k, v in dice.items()})
        assert dice[2] > 0.55 and dice[3] > 0.6, dice  # grey and white matter
        assert (results / f"sub-{subject}" / f"sub-{subject}_metrics.tsv").is_file()
        assert (finished_run / "logs" / "register" / f"{subject}.log").is_file()
        assert (finished_run / "benchmarks" / "preprocess" / f"{subject}.tsv").is_file()
    report = (results / "report.html").read_text()
    assert "demo01" in report and "grey_matter" in report


def test_rerun_is_a_no_op_and_deleting_one_subject_reruns_only_it(finished_run):
    dry = _snakemake(finished_run, "--cores", "2", "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    shutil.rmtree(finished_run / "results" / "sub-demo02")
    dry = _snakemake(finished_run, "--cores", "2", "-n")
    text = dry.stdout + dry.stderr
    assert "subject=demo02" in text and "subject=demo01" not in text
    for rule in ("convert", "preprocess", "register", "propagate", "metrics", "report"):
        assert f"rule {rule}:" in text or f"checkpoint {rule}:" in text, rule
    assert "rule demo:" not in text and "checkpoint index:" not in text
    _snakemake(finished_run, "--cores", "2")
    assert (finished_run / "results" / "sub-demo02" / "sub-demo02_labels.nii.gz").is_file()


def test_lint_is_clean(tmp_path):
    _config(tmp_path)
    proc = _snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_misspelt_config_key_is_rejected_clearly(tmp_path):
    path = _config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["registr"] = config.pop("register")
    path.write_text(yaml.safe_dump(config))
    proc = _snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "registr" in proc.stdout + proc.stderr and "Additional properties" in proc.stdout + proc.stderr


def test_report_regenerates_with_new_references_without_touching_registration(finished_run):
    """`snakemake report` with a new reference folder redoes metrics + report only."""
    new_refs = finished_run / "new_refs"
    new_refs.mkdir(exist_ok=True)
    for subject in ("demo01", "demo02"):
        ref = load_image(finished_run / "resources" / "demo" / "reference" / f"sub-{subject}_labels.nii.gz",
                         label=True)
        data = ref.data.copy()
        data[data == 1] = 0  # a "new segmentation" without CSF
        from unireg.io import save_image
        save_image(ref.with_data(data), new_refs / f"sub-{subject}_labels.nii.gz")
    registration = finished_run / "results" / "sub-demo01" / "reg" / "displacement.nii.gz"
    before = registration.stat().st_mtime_ns
    _snakemake(finished_run, "--cores", "2", "report", "--config", f"reference_labels={new_refs}")
    assert registration.stat().st_mtime_ns == before
    metrics = (finished_run / "results" / "sub-demo01" / "sub-demo01_metrics.tsv").read_text()
    assert "empty in reference" in metrics  # CSF is gone from the new references
    _snakemake(finished_run, "--report", str(finished_run / "snakemake_report.html"),
               "--config", f"reference_labels={new_refs}")
    assert (finished_run / "snakemake_report.html").stat().st_size > 10_000
