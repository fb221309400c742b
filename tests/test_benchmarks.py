"""The peer benchmark (benchmarks/peers.py) end to end on real IXI data, in its --smoke mode.

Needs the peer tools of benchmarks/requirements.txt (antspyx, itk-elastix); skipped, saying so,
where they are not installed. No timing is asserted: the machine may be shared.
"""

import math

import pytest
from conftest import read_commented_csv, run_benchmark_smoke

REQUIREMENTS = "pip install -r benchmarks/requirements.txt"
pytest.importorskip("ants", reason=f"antspyx is not installed ({REQUIREMENTS}): peer benchmark not tested")
itk = pytest.importorskip("itk", reason=f"itk-elastix is not installed ({REQUIREMENTS}): peer benchmark not tested")
if "elastix_registration_method" not in dir(itk):  # itk without the elastix module
    pytest.skip(f"itk-elastix is not installed ({REQUIREMENTS}): peer benchmark not tested", allow_module_level=True)

METHODS = ("affine", "unireg", "unireg_io", "ants", "elastix")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("peers")
    stdout = run_benchmark_smoke("peers.py", out)
    return {
        "dir": out,
        "stdout": stdout,
        "rows": {r["method"]: r for r in read_commented_csv(out / "peers.csv") if r["task"] == "mono"},
        "pairs": read_commented_csv(out / "peers.pairs.csv"),
    }


def test_every_method_has_a_row_with_sane_numbers(smoke):
    rows = smoke["rows"]
    assert set(rows) == set(METHODS)
    for method, row in rows.items():
        dice, hd95, folding = float(row["dice_mean"]), float(row["hd95_mean_mm"]), float(row["folding_percent"])
        assert 0.0 <= dice <= 1.0 and math.isfinite(dice), (method, row)
        assert 0.0 <= float(row["dice_median"]) <= 1.0, (method, row)
        assert 0.0 < hd95 < 100.0, (method, row)  # mm, on a 4 mm grid
        assert 0.0 <= folding <= 100.0, (method, row)
        assert int(row["pairs"]) == 1
        if method != "affine":
            assert float(row["seconds_per_pair"]) > 0 and float(row["peak_rss_mb"]) > 10, (method, row)


def test_methods_beat_or_match_affine_on_the_smoke_pair(smoke):
    dice = {m: float(r["dice_mean"]) for m, r in smoke["rows"].items()}
    print("smoke pair (4 mm grid), mean Dice over 148 DLMUSE labels:", dice)
    assert dice["affine"] > 0.3  # real inter-subject pair after the MI affine (0.454 when written)
    # the default model runs off its 2 mm training grid here (4 mm: MIND-SSC's patches and the UNet's
    # receptive field cover twice the anatomy): its prediction alone fell 0.047 below affine when
    # written (0.407 vs 0.454; README, "Atlases coarser than 2 mm"), so only "not broken" is asked of
    # it; with IO it must beat affine
    assert dice["unireg"] > dice["affine"] - 0.08
    assert dice["unireg_io"] > dice["affine"]
    assert dice["ants"] > dice["affine"] + 0.03
    assert dice["elastix"] > 0.15  # unstable at 4 mm with its default map, but not broken
    assert float(smoke["rows"]["unireg"]["folding_percent"]) < 0.5


def test_fields_follow_each_tool_convention(smoke):
    """Re-warping the moving image with a method's exported field reproduces the tool's own warped image,
    so the fields every score is computed from are read in the right axis order, units and direction."""
    for row in smoke["pairs"]:
        if row["method"] != "affine":
            assert float(row["rewarp_error"]) < 2e-3, row


def test_tables_say_where_and_how_they_were_made(smoke):
    text = (smoke["dir"] / "peers.md").read_text()
    assert text.strip() == smoke["stdout"].strip()  # the script prints the table it writes
    for key in ("date:", "machine:", "git commit:", "command:", "--smoke", "SMOKE settings", "4 mm"):
        assert key in text, key
    for label in ("affine only", "UniReg", "UniReg + 5 IO steps", "ANTs SyN", "elastix B-spline"):
        assert f"| {label} |" in text, label
    with open(smoke["dir"] / "peers.csv") as fh:
        head = [next(fh) for _ in range(5)]
    assert head[0].startswith("# date:") and any(line.startswith("# machine:") for line in head)
