"""The Snakemake workflow with an atlas set (multi-atlas segmentation): the segment rule in place of
register, the fused labels propagated by the affine alone, metrics and report from the fusion's record."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import shifted

from unireg.atlas import ATLAS_FILES, load_atlas
from unireg.cli import main
from unireg.defaults import DEFAULT_ATLAS
from unireg.io import load_image, save_image
from unireg.layout import atlas_entities, subject_files

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
SUBJECTS = ("demo01", "demo02")


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    command = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile"]
    proc = subprocess.run([*command, str(workdir / "config.yaml"), *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def set_run(tmp_path_factory):
    """The 2-subject low-res demo cohort (with its reference labels) segmented by a 2-member set of
    the default atlas's template and labels, one of them shifted (import-set undoes the shift)."""
    work = tmp_path_factory.mktemp("workflow_set")
    assert main(["demo", "--out", str(work / "demo"), "--subjects", "2", "--low-res", "--seed", "0"]) == 0
    atlas = load_atlas(DEFAULT_ATLAS)
    src = work / "members"
    src.mkdir()
    template = load_image(Path(atlas.path) / ATLAS_FILES["image"])
    labels = load_image(Path(atlas.path) / ATLAS_FILES["labels"], label=True)
    for name, move in (("m1", (0, 0, 0)), ("m2", (4, -2, 2))):
        save_image(shifted(template, move), src / f"{name}_T1w.nii.gz")
        save_image(shifted(labels, move), src / f"{name}_dseg.nii.gz")
    (src / "members.tsv").write_text(
        "id\timage\tlabels\n" + "".join(f"{n}\t{n}_T1w.nii.gz\t{n}_dseg.nii.gz\n" for n in ("m1", "m2"))
    )
    args = ["--manifest", str(src / "members.tsv"), "--table", str(Path(atlas.path) / ATLAS_FILES["table"])]
    assert main(["atlas", "import-set", *args, "--reference", DEFAULT_ATLAS, "--out", str(work / "myset")]) == 0
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(cohort=str(work / "demo" / "cohort.tsv"), atlas=str(work / "myset"))
    config["atlas_set"] = {"fusion": "majority", "k": 0}
    config["register"]["instance_opt"] = 5
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    proc = _snakemake(work, "--cores", "2")
    return work, proc


def _at(work: Path, subject: str, key: str) -> Path:
    return work / "results" / subject_files(subject, *atlas_entities(work / "myset"))[key]


def test_an_atlas_set_segments_the_cohort_by_fusion_and_scores_it(set_run):
    work, proc = set_run
    jobs = proc.stdout + proc.stderr
    assert "rule segment:" in jobs and "rule register:" not in jobs
    for subject in SUBJECTS:
        record = json.loads(_at(work, subject, "segment_json").read_text())
        assert [m["id"] for m in record["members"]] == ["m1", "m2"] and record["fusion"] == "majority"
        assert record["subject"] == subject and record["instance_opt_steps"] == 5
        assert record["jacobian"]["folding_percent"] == max(m["jacobian"]["folding_percent"] for m in record["members"])
        assert 0.0 < record["qc"]["similarity_after"] <= 1.0
        confidence = load_image(_at(work, subject, "confidence")).data
        assert confidence.min() >= 0.5 and confidence.max() <= 1.0  # 2 members: the winner has >= half
        assert not _at(work, subject, "displacement").exists()  # no field is kept
        native = load_image(_at(work, subject, "image"))
        labels = load_image(_at(work, subject, "labels"), label=True)
        assert labels.shape == native.shape and np.allclose(labels.affine, native.affine, atol=1e-3)
        metrics = _at(work, subject, "metrics").read_text().splitlines()
        header = metrics[0].split("\t")
        dice = [float(row.split("\t")[header.index("dice")]) for row in metrics[1:]]
        assert np.nanmean(dice) > 0.5, f"{subject}: mean Dice {np.nanmean(dice):.3f} against its reference labels"
    # the report's registration QC table reads the fusion's record: a row per subject, its mean similarity
    report = (work / "results" / "report.html").read_text()
    for subject in SUBJECTS:
        qc = json.loads(_at(work, subject, "segment_json").read_text())["qc"]
        assert f"<tr><td>{subject}</td><td>{qc['similarity_before']:.3f}</td>" in report


def test_the_rerun_is_a_no_op(set_run):
    work, _ = set_run
    dry = _snakemake(work, "-n", "--cores", "1")
    assert "Nothing to be done" in dry.stdout + dry.stderr
