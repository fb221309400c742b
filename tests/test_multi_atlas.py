"""benchmarks/multi_atlas.py: the atlas order, and its --smoke mode (one real Mindboggle target at 4 mm,
K = 1 and 2, UniReg with every fusion and ANTs SyN + antspyx joint label fusion; the same on one IXI
validation subject).
No timing is asserted: the machine may be shared.
"""

import sys

import numpy as np
import pytest
from conftest import REPO, read_commented_csv, run_benchmark_smoke

sys.path.insert(0, str(REPO / "benchmarks"))
import mindboggle as mb  # noqa: E402
import multi_atlas as ma  # noqa: E402


def test_atlases_are_the_other_subjects_in_ring_order_and_k1_is_the_mindboggle_pair():
    for target in mb.SUBJECTS:
        atlases = ma.atlases_of(target, 9)
        assert sorted(atlases) == sorted(set(mb.SUBJECTS) - {target})
        assert (atlases[0], target) in mb.pair_order()[:10]
    assert ma.atlases_of("OASIS-TRT-20-01", 3) == ["OASIS-TRT-20-03", "OASIS-TRT-20-05", "OASIS-TRT-20-07"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi_atlas")
    stdout = run_benchmark_smoke("multi_atlas.py", out, data=("mindboggle_oasis_trt20",))
    return {
        "text": (out / "multi_atlas.md").read_text(),
        "stdout": stdout,
        "rows": {(r["method"], r["fusion"], r["k"]): r for r in read_commented_csv(out / "multi_atlas.csv")},
        "targets": read_commented_csv(out / "multi_atlas.targets.csv"),
        "paired": read_commented_csv(out / "multi_atlas.paired.csv"),
    }


def test_every_fusion_has_a_row_with_sane_numbers(smoke):
    rows = smoke["rows"]
    expected = {("unireg_io", "single", "1"), ("ants", "single", "1"), ("ants", "jlf", "2")}
    expected |= {("unireg_io", f, "2") for f in ("majority", "weighted", "jlf")}
    assert set(rows) == expected
    for row in rows.values():
        assert row["targets"] == "1"
        assert 0.3 < float(row["dice_mean"]) < 0.9, row
        assert float(row["seconds_per_target"]) >= float(row["registration_seconds_per_target"]) > 0
    # majority voting of two atlases ties everywhere they disagree: the first atlas wins (unireg.fusion's rule)
    assert rows[("unireg_io", "majority", "2")]["dice_mean"] == rows[("unireg_io", "single", "1")]["dice_mean"]
    # K = 2 registers one more atlas than K = 1
    k1, k2 = (
        float(rows[("unireg_io", f, k)]["registration_seconds_per_target"]) for f, k in (("single", "1"), ("jlf", "2"))
    )
    assert k2 > k1


def test_tables_say_where_and_how_they_were_made(smoke):
    assert smoke["text"].strip() == smoke["stdout"].strip()
    for key in ("date:", "git commit:", "command:", "--smoke", "SMOKE settings", "targets (leave-one-out): 01"):
        assert key in smoke["text"], key
    [row] = [r for r in smoke["targets"] if r["method"] == "ants" and r["k"] == "2"]
    assert row["atlases"] == "03 05"
    assert "## Head to head: the targets ANTs was run on" in smoke["text"]
    assert [r["k"] for r in smoke["paired"]] == ["1", "2"]


def test_the_ixi_side_segments_a_validation_subject_with_the_next_ones(tmp_path):
    out = tmp_path / "ixi"
    run_benchmark_smoke("multi_atlas.py", out, data=("ixi_t1_dlmuse/t1",), args=("--dataset", "ixi"))
    text = (out / "multi_atlas_ixi.md").read_text()
    assert "leave-one-out on IXI validation subjects" in text and "SMOKE settings" in text
    rows = {(r["method"], r["fusion"], r["k"]): r for r in read_commented_csv(out / "multi_atlas_ixi.csv")}
    assert {("unireg_io", "jlf", "2"), ("ants", "single", "1"), ("ants", "jlf", "2")} <= set(rows)
    for row in rows.values():
        assert 0.2 < float(row["dice_mean"]) < 0.9 and row["dice_cortical_mean"] == "", row
    import peers

    validation = peers.model_split()[1]
    [target] = {r["target"] for r in read_commented_csv(out / "multi_atlas_ixi.targets.csv")}
    [row] = [r for r in read_commented_csv(out / "multi_atlas_ixi.targets.csv") if r["k"] == "2"][:1]
    assert target == validation[0] and row["atlases"] == " ".join(s.split("-")[0] for s in validation[1:3])


def test_head_to_head_compares_on_exactly_the_targets_ants_has():
    def row(target, method, fusion, k, dice, seconds=10.0):
        return {"target": target, "method": method, "fusion": fusion, "k": k, "dice_mean": dice} | {
            "registration_seconds": seconds,
            "fusion_seconds": 1.0,
        }

    rows = [row(t, "unireg_io", "single", 1, d) for t, d in (("a", 0.60), ("b", 0.50))]
    rows += [row(t, "unireg_io", f, 3, d) for t in "ab" for f, d in (("majority", 0.65), ("weighted", 0.70))]
    rows += [row("a", "ants", "single", 1, 0.58, 2000.0), row("b", "ants", "single", 1, 0.56, 2000.0)]
    rows += [row("a", "ants", "jlf", 3, 0.68, 6000.0)]  # K = 3 only on target a
    rows += [row("a", "unireg_io", "jlf", 3, 0.71)]  # on a only, which is every ANTs target at K = 3
    rows += [row("a", "unireg_io", "weighted", 1, 0.99)]  # on a only, but ANTs has a and b at K = 1: left out
    [k1, k3] = ma.paired(rows, short=str.upper)
    assert (k1["k"], k1["targets"], k1["ants_dice_mean"]) == (1, "A B", pytest.approx(0.57))
    assert k1["unireg_single_dice_mean"] == pytest.approx(0.55) and k1["best_unireg_minus_ants"] == pytest.approx(-0.02)
    assert k1["unireg_weighted_dice_mean"] is None
    assert (k3["targets"], k3["unireg_weighted_dice_mean"], k3["unireg_jlf_dice_mean"]) == ("A", 0.70, 0.71)
    assert k3["best_unireg_minus_ants"] == pytest.approx(0.03)  # JLF, present on target a
    assert (k3["ants_seconds_per_target"], k3["unireg_seconds_per_target"]) == (6001.0, 11.0)
    assert "| 3 | A | 0.680 |" in ma.markdown([], [], [], "x", [k1, k3])


def test_antspyx_fusion_keeps_background_where_every_atlas_has_it():
    """antspyx labels every mask voxel with a non-zero label it was given; ants_fusion fuses background
    as a label, so voxels all atlases call background stay 0 even inside the target's head."""
    pytest.importorskip("ants")
    rng = np.random.default_rng(0)
    target = rng.uniform(0.5, 1.0, (24, 24, 24)).astype(np.float32)  # non-zero everywhere: all in the mask
    labels = np.zeros((24, 24, 24), np.int32)
    labels[4:12, 4:20, 4:20], labels[12:20, 4:20, 4:20] = 4, 1021
    atlases = [labels.copy() for _ in range(3)]
    atlases[2][4:6] = 0  # one atlas disagrees on a slab: the other two win
    fused = ma.ants_fusion(target, [target.copy() for _ in atlases], atlases, (1.0, 1.0, 1.0))
    assert fused.dtype == np.int32 and set(np.unique(fused)) == {0, 4, 1021}
    assert (fused[labels == 0] == 0).mean() > 0.99 and (fused[labels == 4] == 4).mean() > 0.99
    assert (fused[labels == 1021] == 1021).mean() > 0.99


def test_tuning_runs_use_training_subjects_and_say_what_they_changed():
    """--split train (IXI: the model's first 10 training subjects, never the validation ones),
    --jlf-option and --io-option: what settings were chosen on (benchmarks/results/multi_atlas_ixi_train.md)."""
    import peers

    args = ma.parse_args(
        ["--dataset", "ixi", "--split", "train", "--jlf-option", "beta=1", "--io-option", "weight=0.6"]
    )
    assert (args.name, args.jlf_options, args.io_options) == ("multi_atlas_ixi_train", {"beta": 1.0}, {"weight": 0.6})
    voxels = ma.parse_args(["--jlf-option", "radius=2", "--jlf-option", "search_mm=2", "--ants-jlf-option", "rad=1"])
    assert (voxels.jlf_options, voxels.ants_jlf_options) == ({"radius": 2, "search_mm": 2.0}, {"rad": 1})
    for bad in (
        ["--split", "train"],
        ["--jlf-option", "gamma=1"],
        ["--jlf-option", "beta"],
        ["--ants-jlf-option", "radius=1"],
    ):
        with pytest.raises(SystemExit):
            ma.parse_args(bad)
    if not peers.IXI.is_dir():
        pytest.skip("../shared/data absent")
    train, validation = peers.model_split()
    data = ma.ixi_dataset(args)
    assert data.subjects == tuple(train[:10]) and not set(data.subjects) & set(validation)
    assert "training subjects" in data.title and "first 10 training" in data.data_note


def test_mindboggle_at_2mm_uses_the_2mm_syn_schedule_and_its_own_tables():
    """At 1 mm SyN runs antsRegistrationSyN's schedule (CC radius 4, 35 min a pair); on the 2 mm grid the
    project's 2 mm schedule of IXI and peers.py (radius 2: the same 4 mm window), so K = 9 SyN fits."""
    import peers

    fine, coarse = ma.parse_args([]), ma.parse_args(["--grid-mm", "2"])
    assert ma.mindboggle_ants(fine) == mb.ANTS and fine.name == "multi_atlas"
    assert ma.mindboggle_ants(coarse) == {
        "ants_iterations": peers.ANTS_ITERATIONS,
        "ants_cc_radius": peers.ANTS_CC_RADIUS,
        "ants_grad_step": peers.ANTS_GRAD_STEP,
    }
    assert coarse.name == "multi_atlas_2mm" and ma.parse_args(["--smoke"]).name == "multi_atlas"
    given = ma.parse_args(["--grid-mm", "2", "--ants-iterations", "50,20"])
    assert ma.mindboggle_ants(given)["ants_iterations"] == "50,20"
