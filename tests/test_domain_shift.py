"""The domain-shift benchmark (benchmarks/domain_shift.py) end to end on real IXI data, in its --smoke
mode: 1 pair on the 4 mm grid, the packaged models, untrained stand-ins for the runs it trains.
No timing is asserted: the machine may be shared.
"""

import math

import pytest
from conftest import read_commented_csv, run_benchmark_smoke

METHODS = (
    "affine",
    "mobilenet",
    "mind",
    "reinit",
    "scratch",
    "remap",
    "mobilenet_mind",
    "mind_remap",
    "mobilenet_mind_remap",
)
T1 = "T1 (source)"
SAME = ("T2-like -> T2-like", "PD-like -> PD-like", "CT-like -> CT-like")
CROSS = ("T1 -> T2-like", "T1 -> PD-like", "T1 -> CT-like")
CONTRASTS = (T1, *SAME, *CROSS)
REAL = "IXI002 real T2 (T2 -> T1)"
NETWORK, IO = "network alone", "+ 3 IO steps"  # --smoke runs 3 IO steps


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("domain_shift")
    stdout = run_benchmark_smoke("domain_shift.py", out)
    rows = {(r["method"], r["mode"], r["contrast"]): r for r in read_commented_csv(out / "domain_shift.csv")}
    return {"dir": out, "stdout": stdout, "rows": rows}


def test_every_method_mode_and_case_has_a_row_with_sane_numbers(smoke):
    rows = smoke["rows"]
    expected = {(m, NETWORK, c) for m in METHODS for c in (*CONTRASTS, REAL)}
    expected |= {(m, IO, c) for m in METHODS if m != "affine" for c in (*CONTRASTS, REAL)}
    assert set(rows) == expected
    for (method, mode, contrast), row in rows.items():
        folding = float(row["folding_percent"])
        assert 0.0 <= folding < 5.0, (method, mode, contrast, row)
        if contrast == REAL:
            for key in ("brain_mask_dice", "agreement_dice"):
                assert 0.0 <= float(row[key]) <= 1.0, (method, key, row)
            continue
        dice, drop = float(row["dice_mean"]), float(row["drop_from_t1"])
        assert 0.0 <= dice <= 1.0 and math.isfinite(drop), (method, contrast, row)
        t1 = float(rows[(method, mode, T1)]["dice_mean"])
        assert drop == pytest.approx(t1 - dice, abs=1e-4)
    # the packaged models record their training runs; the stand-ins say they are untrained
    # (mind: 6,000 steps from a random start, then 8,500, 2,000 and, with seed 6, 1,250 more, each
    # run from the weights of the one before)
    for method, seed, steps in (("mobilenet", "0", "1000"), ("mind", "6", "17750")):  # the packaged models
        row = rows[(method, NETWORK, T1)]
        assert (row["train_seed"], row["train_steps"]) == (seed, steps) and "sha256" in row["checkpoint"]
    assert rows[("mind", NETWORK, T1)]["train_device"] == "cpu (its run; 16500 steps before it: train.init)"
    for method in ("reinit", "scratch", "remap", "mobilenet_mind", "mind_remap", "mobilenet_mind_remap"):
        assert rows[(method, NETWORK, T1)]["train_steps"] == "0"
    assert rows[("mobilenet_mind", NETWORK, T1)]["extractor"] == "mobilenet_v1_025+mind"


def test_numbers_that_catch_a_broken_pipeline(smoke):
    rows = smoke["rows"]
    affine = {c: float(rows[("affine", NETWORK, c)]["dice_mean"]) for c in CONTRASTS}
    # the same affine-aligned labels whatever the images' contrasts: identical, and real overlap
    assert len(set(affine.values())) == 1 and affine[T1] > 0.2
    assert float(rows[("affine", NETWORK, T1)]["folding_percent"]) == 0.0
    assert float(rows[("affine", NETWORK, REAL)]["brain_mask_dice"]) > 0.85  # the scans nearly share scanner space
    # the trained models deform (on the coarse smoke grid they need not beat affine) without tearing
    for method in ("mobilenet", "mind"):
        for mode in (NETWORK, IO):
            row = rows[(method, mode, T1)]
            assert float(row["dice_mean"]) > 0.2 and float(row["dice_mean"]) != affine[T1], row
            assert float(row["folding_percent"]) < 1.0, row
        # IO moves the field: its result differs from the network's
        assert rows[(method, IO, T1)]["dice_mean"] != rows[(method, NETWORK, T1)]["dice_mean"]
    # a same-contrast case remaps the moving image too: its Dice differs from the cross-contrast one
    row_same, row_cross = rows[("mobilenet", NETWORK, SAME[0])], rows[("mobilenet", NETWORK, CROSS[0])]
    assert row_same["dice_mean"] != row_cross["dice_mean"]


def test_report_names_its_provenance(smoke):
    text = (smoke["dir"] / "domain_shift.md").read_text()
    assert smoke["stdout"].strip() == text.strip()
    for needle in ("date:", "machine:", "git commit:", "command:", "SMOKE", "train seed", "untrained stand-in"):
        assert needle in text, needle
