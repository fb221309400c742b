"""benchmarks/mindboggle.py: the pair order, the scoring, and its --smoke mode on two real Mindboggle
brains (4 mm grid, every method, fewer iterations), including a rerun served from its field cache.
No timing is asserted: the machine may be shared.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, read_commented_csv, run_benchmark_smoke

sys.path.insert(0, str(REPO / "benchmarks"))
import mindboggle as mb  # noqa: E402


def test_pair_order_spreads_a_subset_over_the_subjects_and_ends_with_every_ordered_pair():
    pairs = mb.pair_order()
    assert len(pairs) == len(set(pairs)) == 90
    assert all(moving != fixed for moving, fixed in pairs)
    ring = pairs[:10]
    assert sorted(f for _, f in ring) == sorted(m for m, _ in ring) == sorted(mb.SUBJECTS)
    assert pairs[0] == ("OASIS-TRT-20-03", "OASIS-TRT-20-01")
    assert pairs[10] == ("OASIS-TRT-20-05", "OASIS-TRT-20-01")


def test_the_tuning_pairs_are_apart_from_the_default_table():
    tune = mb.pair_set("tune")
    assert len(tune) == 12 and {s for p in tune for s in p} == set(mb.TUNE_SUBJECTS)
    default = mb.pair_set("eval")[: mb.PAIRS_DEFAULT]
    assert not {s for p in default for s in p} & set(mb.TUNE_SUBJECTS)


def test_io_options_are_typed_and_checked():
    assert mb.parse_io_options(["weight=0.1", "similarity=mind"]) == {"weight": 0.1, "similarity": "mind"}
    for bad in (["steps=3"], ["nosuch=1"], ["weight"]):
        with pytest.raises(SystemExit, match="--io-option"):
            mb.parse_io_options(bad)


def test_score_case_counts_a_lost_label_as_zero_and_ignores_labels_outside_the_list():
    reference = np.zeros((16, 16, 16), np.int32)
    reference[2:8, 2:8, 2:8] = 1002  # cortical
    reference[9:14, 9:14, 9:14] = 10  # subcortical
    reference[1, 1, 1] = 77  # not in the list
    moving = reference.copy()
    moving[moving == 10] = 0  # lost after warping
    ddf = np.zeros((3, 16, 16, 16), np.float32)
    s = mb.score_case(reference, moving, ddf, np.array([10, 1002, 2002]), (1.0, 1.0, 1.0))
    assert s["dice"] == {10: 0.0, 1002: 1.0}  # 2002 is absent from the reference: not scored
    assert s["hd95"] == {1002: 0.0}
    assert s["folding_percent"] == 0.0
    row = mb.pair_row(mb.peers.Case("a_to_b", "mindboggle", "mono", "b", "a", "labels"), "affine", s, None)
    assert row["dice_mean"] == 0.5 and row["dice_cortical_mean"] == 1.0 and row["dice_subcortical_mean"] == 0.0
    assert row["labels_lost"] == 1
    one_voxel = np.zeros_like(ddf)
    one_voxel[0] = 1.0  # a shift by one voxel along the first axis
    shifted = mb.score_case(reference, reference, one_voxel, np.array([1002]), (1.0, 1.0, 1.0))
    assert shifted["dice"][1002] == pytest.approx(2 * 5 / 12)  # a 6-voxel slab overlaps 5 of 6 after the shift


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("mindboggle")
    stdout = run_benchmark_smoke("mindboggle.py", out, data=("mindboggle_oasis_trt20",))
    first = out / "mindboggle.md"
    first_text = first.read_text()
    # a rerun on the same cache registers nothing and reproduces every score
    rerun = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "mindboggle.py"), "--smoke", "--out", str(out / "rerun")],
        capture_output=True,
        text=True,
        env={**os.environ, "UNIREG_HOME": str(out / "unireg_home")},
        cwd=REPO,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return {
        "dir": out,
        "stdout": stdout,
        "text": first_text,
        "rows": {r["method"]: r for r in read_commented_csv(out / "mindboggle.csv")},
        "pairs": read_commented_csv(out / "mindboggle.pairs.csv"),
        "rerun_rows": {r["method"]: r for r in read_commented_csv(out / "rerun" / "mindboggle.csv")},
        "rerun_log": rerun.stderr,
    }


def test_every_method_scores_the_smoke_pair_on_the_common_labels(smoke):
    rows = smoke["rows"]
    assert list(rows) == list(mb.METHODS)
    for method, row in rows.items():
        # the 98 ids common to all subjects, less any the 4 mm grid loses in the fixed subject (one, here)
        assert row["pairs"] == "1" and 95 <= int(row["labels"]) <= 98, row
        assert 0.2 < float(row["dice_mean"]) < 0.9, row
        assert float(row["dice_cortical_mean"]) < float(row["dice_subcortical_mean"]), row  # thin cortex at 4 mm
        assert float(row["hd95_mean_mm"]) > 0
        if method != "affine":
            assert float(row["seconds_per_pair"]) > 0 and float(row["peak_rss_mb"]) > 100, row
    dice = {m: float(r["dice_mean"]) for m, r in rows.items()}
    assert dice["unireg_io"] > dice["affine"] and dice["ants"] > dice["affine"], dice
    assert float(rows["unireg_io"]["folding_percent_max"]) < 0.1


def test_a_rerun_is_served_from_the_cache_with_the_same_numbers(smoke):
    assert "registering" not in smoke["rerun_log"], smoke["rerun_log"][-2000:]
    for method, row in smoke["rows"].items():
        again = smoke["rerun_rows"][method]
        for key in ("dice_mean", "hd95_mean_mm", "folding_percent_mean", "seconds_per_pair", "peak_rss_mb"):
            assert again[key] == row[key], (method, key)
    fields = smoke["dir"] / "unireg_home" / "mindboggle" / "4mm" / "fields"
    assert sorted(p.name.split("_")[0] for p in fields.iterdir()) == ["ants", "elastix", "unireg", "unireg"]


def test_tables_say_where_and_how_they_were_made(smoke):
    text = smoke["text"]
    assert text.strip() == smoke["stdout"].strip()
    for key in ("date:", "machine:", "git commit:", "command:", "--smoke", "SMOKE settings", "4 mm", "03 -> 01"):
        assert key in text, key
    assert "62 DKT31 cortical, 36 subcortical/cerebellar" in text
    [pair] = [p for p in smoke["pairs"] if p["method"] == "ants"]
    assert (pair["moving"], pair["fixed"]) == ("OASIS-TRT-20-03", "OASIS-TRT-20-01")
