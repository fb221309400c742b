"""The domain-shift benchmark (benchmarks/domain_shift.py) end to end on real IXI data, in its --smoke
mode: 1 pair on the 4 mm grid, the packaged models, untrained stand-ins for the runs it trains.
No timing is asserted: the machine may be shared.
"""

import math

import pytest
from conftest import read_commented_csv, run_benchmark_smoke

METHODS = ("affine", "mobilenet", "mind", "reinit", "scratch", "remap")
CONTRASTS = ("T1 (source)", "T2-like", "PD-like", "CT-like")
REAL = "IXI002 real T2 (T2 -> T1)"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("domain_shift")
    stdout = run_benchmark_smoke("domain_shift.py", out)
    rows = {(r["method"], r["contrast"]): r for r in read_commented_csv(out / "domain_shift.csv")}
    return {"dir": out, "stdout": stdout, "rows": rows}


def test_every_method_and_contrast_has_a_row_with_sane_numbers(smoke):
    rows = smoke["rows"]
    assert set(rows) == {(m, c) for m in METHODS for c in (*CONTRASTS, REAL)}
    for (method, contrast), row in rows.items():
        folding = float(row["folding_percent"])
        assert 0.0 <= folding < 5.0, (method, contrast, row)
        if contrast == REAL:
            for key in ("brain_mask_dice", "agreement_dice"):
                assert 0.0 <= float(row[key]) <= 1.0, (method, key, row)
            continue
        dice, drop = float(row["dice_mean"]), float(row["drop_from_t1"])
        assert 0.0 <= dice <= 1.0 and math.isfinite(drop), (method, contrast, row)
        t1 = float(rows[(method, CONTRASTS[0])]["dice_mean"])
        assert drop == pytest.approx(t1 - dice, abs=1e-4)
    # the packaged models record their training runs; the stand-ins say they are untrained
    for method in ("mobilenet", "mind"):
        row = rows[(method, CONTRASTS[0])]
        assert (row["train_seed"], row["train_steps"]) == ("0", "1000") and "sha256" in row["checkpoint"]
    for method in ("reinit", "scratch", "remap"):
        assert rows[(method, CONTRASTS[0])]["train_steps"] == "0"


def test_numbers_that_catch_a_broken_pipeline(smoke):
    rows = smoke["rows"]
    affine = {c: float(rows[("affine", c)]["dice_mean"]) for c in CONTRASTS}
    # the same affine-aligned labels whatever the fixed image's contrast: identical, and real overlap
    assert len(set(affine.values())) == 1 and affine[CONTRASTS[0]] > 0.2
    assert float(rows[("affine", CONTRASTS[0])]["folding_percent"]) == 0.0
    assert float(rows[("affine", REAL)]["brain_mask_dice"]) > 0.85  # the two scans nearly share scanner space
    # the trained models deform (on the coarse smoke grid they need not beat affine) without tearing
    for method in ("mobilenet", "mind"):
        row = rows[(method, CONTRASTS[0])]
        assert float(row["dice_mean"]) > 0.2 and float(row["dice_mean"]) != affine[CONTRASTS[0]], row
        assert float(row["folding_percent"]) < 1.0, row


def test_report_names_its_provenance(smoke):
    text = (smoke["dir"] / "domain_shift.md").read_text()
    assert smoke["stdout"].strip() == text.strip()
    for needle in ("date:", "machine:", "git commit:", "command:", "SMOKE", "train seed", "untrained stand-in"):
        assert needle in text, needle
