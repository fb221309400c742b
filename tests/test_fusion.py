"""unireg.fusion: majority, locally weighted voting and joint label fusion on small arrays whose
right answer is known."""

import numpy as np
import pytest

from unireg.errors import UniregError
from unireg.fusion import FUSIONS, fuse, jlf_weights, vote


def maps(*values, shape=(4, 4, 4)):
    return [np.full(shape, v, np.int32) for v in values]


def test_majority_keeps_agreement_and_takes_the_most_votes():
    a, b, c = maps(1, 1, 2)
    c[0, 0, 0] = 1  # one voxel where all three agree
    out = fuse([a, b, c], "majority")
    assert (out.labels == 1).all()
    assert out.confidence[0, 0, 0] == 1.0
    assert out.confidence[1, 1, 1] == pytest.approx(2 / 3)
    assert out.disagreement_fraction == pytest.approx(63 / 64)


def test_ties_go_to_the_first_atlas_that_voted_for_a_tied_label():
    assert (fuse(maps(5, 3), "majority").labels == 5).all()
    assert (fuse(maps(3, 5), "majority").labels == 3).all()
    assert (fuse(maps(7, 3, 3, 7), "majority").labels == 7).all()
    labels, share = vote(np.array([[0], [4], [4], [0]]), np.ones((4, 1)))
    assert labels.tolist() == [0] and share.tolist() == [0.5]


def test_background_is_a_label_so_a_majority_of_background_stays_background():
    out = fuse(maps(0, 0, 9), "majority")
    assert (out.labels == 0).all()


def test_all_agree_is_returned_as_is_for_every_rule():
    image = np.random.default_rng(0).normal(size=(4, 4, 4)).astype(np.float32)
    for fusion in FUSIONS:
        out = fuse(maps(3, 3), fusion, images=[image, image], target=image)
        assert (out.labels == 3).all() and (out.confidence == 1).all() and out.disagreement_fraction == 0


def test_weighted_voting_follows_the_atlas_whose_image_matches_locally():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(8, 8, 8)).astype(np.float32)
    good = target + 0.05 * rng.normal(size=target.shape).astype(np.float32)
    bad = [target + rng.normal(size=target.shape).astype(np.float32) for _ in range(2)]
    labels = maps(1, 2, 2, shape=target.shape)
    assert (fuse(labels, "majority").labels == 2).all()
    out = fuse(labels, "weighted", images=[good, *bad], target=target)
    assert (out.labels == 1).all()
    assert (out.confidence > 0.9).all()


def test_jlf_discounts_atlases_that_make_the_same_errors():
    """Two copies of one atlas (identical errors) against one independent, somewhat better atlas (errors
    0.7 of theirs): majority voting follows the copies; joint label fusion treats them as one opinion."""
    rng = np.random.default_rng(2)
    shape = (10, 10, 10)
    target = rng.normal(size=shape).astype(np.float32)
    copy = target + rng.normal(size=shape).astype(np.float32)
    other = target + 0.7 * rng.normal(size=shape).astype(np.float32)
    labels = maps(1, 1, 2, shape=shape)
    assert (fuse(labels, "majority").labels == 1).all()
    out = fuse(labels, "jlf", images=[copy, copy, other], target=target)
    inner = (slice(2, -2),) * 3  # away from the zero padding at the border
    assert (out.labels[inner] == 2).all()
    w = jlf_weights(np.stack([copy, copy, other]), target, np.arange(target.size), radius=2, alpha=0.1, beta=2.0)
    assert np.allclose(w.sum(0), 1.0)
    assert np.allclose(w[0], w[1])  # the copies share their weight
    assert np.median(w[2]) > 0.5


def test_bad_requests_fail_with_one_clear_line():
    with pytest.raises(UniregError, match="unknown fusion 'vote'"):
        fuse(maps(1, 2), "vote")
    with pytest.raises(UniregError, match="needs the warped atlas images"):
        fuse(maps(1, 2), "jlf")
    with pytest.raises(UniregError, match="not on the labels' grid"):
        fuse(maps(1, 2), "weighted", images=[np.zeros((2, 2, 2))] * 2, target=np.zeros((4, 4, 4)))
