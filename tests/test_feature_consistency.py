"""benchmarks/feature_consistency.py: its two scores on constructed features, and the --smoke run on
one real IXI subject (properties that hold for any correct implementation, no timing)."""

import sys

import numpy as np
import pytest
from conftest import REPO, read_commented_csv, run_benchmark_smoke

sys.path.insert(0, str(REPO / "benchmarks"))
import feature_consistency as fc  # noqa: E402


@pytest.fixture
def maps():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 12, 12, 12))
    inside = np.zeros((12, 12, 12), bool)
    inside[2:10, 2:10, 2:10] = True
    return a, inside


def test_scores_are_one_for_the_same_features_up_to_a_positive_gain_per_channel(maps):
    a, inside = maps
    gains = np.arange(1, 7, dtype=float)[:, None, None, None]
    assert fc.vector_r(a, a * gains + 3.0, inside) == pytest.approx(1.0, abs=1e-6)
    assert fc.channel_lncc(a, a * gains + 3.0, inside) == pytest.approx(1.0, abs=1e-6)


def test_scores_are_minus_one_for_inverted_features_and_near_zero_for_unrelated_ones(maps):
    a, inside = maps
    assert fc.vector_r(a, -a, inside) == pytest.approx(-1.0, abs=1e-6)
    assert fc.channel_lncc(a, -a, inside) == pytest.approx(-1.0, abs=1e-6)
    other = np.random.default_rng(1).normal(size=a.shape)
    assert abs(fc.vector_r(a, other, inside)) < 0.1
    assert abs(fc.channel_lncc(a, other, inside)) < 0.1


def test_brain_cells_pool_the_mask_to_the_feature_grid():
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[:4] = 1
    mask[4, ::2, ::2] = 1  # an eighth of the next cells' voxels: below half
    cells = fc.brain_cells(mask, 2)
    assert cells.shape == (4, 4, 4) and cells[:2].all() and not cells[2:].any()
    assert (fc.brain_cells(mask, 1) == (mask > 0)).all()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("feature_consistency")
    stdout = run_benchmark_smoke("feature_consistency.py", out)
    return {"dir": out, "stdout": stdout, "rows": read_commented_csv(out / "feature_consistency.csv")}


def test_smoke_run_scores_every_layer_and_contrast(smoke):
    rows = {(r["extractor"], r["layer"], r["contrast"]): r for r in smoke["rows"]}
    layers = [("intensity", "-"), ("MIND-SSC", "-"), ("reinit", "conv1"), ("reinit", "dw1")]
    layers += [(f, layer) for f in ("ImageNet MobileNet", "random MobileNet") for layer in fc.MOBILENET_LAYERS]
    assert set(rows) == {(*key, c) for key in layers for c in fc.CONTRAST_TITLES.values()}
    for row in rows.values():
        assert -1.0 <= float(row["vector_r"]) <= 1.0 and -1.0 <= float(row["channel_lncc"]) <= 1.0, row
    # what the remaps are: T2-like inverts the tissue order, so the raw intensity anti-correlates;
    # MIND-SSC (local self-similarity) is built to survive that
    assert float(rows[("intensity", "-", "T2-like")]["vector_r"]) < -0.5
    for contrast in fc.CONTRAST_TITLES.values():
        assert float(rows[("MIND-SSC", "-", contrast)]["channel_lncc"]) > 0.5
    assert (smoke["dir"] / "feature_consistency.png").stat().st_size > 10_000
    text = (smoke["dir"] / "feature_consistency.md").read_text()
    assert smoke["stdout"].strip() == text.strip() and "git commit:" in text
