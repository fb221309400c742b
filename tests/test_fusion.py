"""unireg.fusion: majority, locally weighted voting and joint label fusion on small arrays whose
right answer is known."""

import numpy as np
import pytest
import torch

from unireg.errors import UniregError
from unireg.fusion import FUSIONS, _best_offsets, _offsets, _patch_stats, fuse, jlf_parameters, jlf_weights, vote


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
    diffs = torch.from_numpy(np.abs(np.stack([copy, copy, other]) - target).reshape(1, 3, -1))
    w = jlf_weights(diffs, alpha=0.1, beta=2.0)[0]
    assert torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    assert torch.isclose(w[0], w[1])  # the copies share their weight
    assert w[2] > 0.5


def test_jlf_search_finds_each_atlas_s_match_when_the_atlases_are_misaligned():
    """Three atlases, each the subject's image and labels moved by a voxel or two in a different
    direction: where their labels disagree, majority voting (and JLF without search) errs on every
    boundary; the local search finds each atlas's matching patch and recovers the subject's labels."""
    rng = np.random.default_rng(3)
    shape = (32, 32, 32)
    smooth = torch.nn.functional.avg_pool3d(torch.from_numpy(rng.normal(size=(1, 1, *shape))).float(), 5, 1, 2)
    target = smooth[0, 0].numpy() * 10
    truth = np.digitize(target, np.quantile(target, [0.3, 0.6])).astype(np.int32)  # labels 0, 1, 2
    shifts = [(1, 0, 0), (0, -1, 0), (0, 0, 2)]
    images = [np.roll(target, s, (0, 1, 2)) for s in shifts]
    labels = [np.roll(truth, s, (0, 1, 2)) for s in shifts]
    inner = np.zeros(shape, bool)
    inner[(slice(8, -8),) * 3] = True  # away from the wrap-around of np.roll
    fused_here = inner & ~np.all(np.stack(labels) == labels[0], axis=0)  # where the atlases disagree

    def errors(out):
        return int((out.labels[fused_here] != truth[fused_here]).sum())

    assert fused_here.sum() > 200
    assert errors(fuse(labels, "majority")) > 0.3 * fused_here.sum()
    assert errors(fuse(labels, "jlf", images=images, target=target, options={"search": 0})) > 0.3 * fused_here.sum()
    searched = fuse(labels, "jlf", images=images, target=target)
    assert errors(searched) == 0
    assert searched.confidence[fused_here].mean() > 0.95


def test_jlf_search_scores_every_offset_as_the_normalised_patch_distance():
    """The search scores all offsets over the whole box at once by shifted slices; at every centre its
    choice must be the offset a direct patch-by-patch comparison picks: the smallest sum of squared
    differences between the normalised patches (std with n - 1, floored)."""
    rng = np.random.default_rng(7)
    radius, search, floor, shape = 1, 2, 0.01, (11, 12, 13)
    t = torch.from_numpy(rng.random(shape, dtype=np.float32))
    a = torch.from_numpy(rng.random((2, *shape), dtype=np.float32))
    a[1, :6] = 0.5  # flat patches: their std is the floor
    edge = radius + search
    inner = np.zeros(shape, bool)
    inner[tuple(slice(edge, n - edge) for n in shape)] = True
    centres = torch.from_numpy(np.flatnonzero(inner))
    size = 2 * radius + 1
    best = _best_offsets(
        t, a, _patch_stats(t[None], size, floor), _patch_stats(a, size, floor), centres, radius=radius, search=search
    )

    def patch(x, centre):
        p = x[tuple(slice(c - radius, c + radius + 1) for c in centre)].numpy().astype(np.float64).ravel()
        return (p - p.mean()) / max(p.std(ddof=1), floor)

    shifts = _offsets(search).numpy()
    for n, flat in enumerate(centres.tolist()):
        centre = np.unravel_index(flat, shape)
        for i in range(len(a)):
            ssd = [np.square(patch(a[i], np.add(centre, o)) - patch(t, centre)).sum() for o in shifts]
            assert best[i, n] == int(np.argmin(ssd)), (centre, i)


def test_jlf_normalised_patches_ignore_each_atlas_s_gain_and_offset():
    """Patches divided by their standard deviation: atlases whose intensities differ from the
    subject's by a gain and an offset (another scanner's scaling) are matched and weighed as if they
    had the subject's own scale: the same labels, the same confidence."""
    rng = np.random.default_rng(5)
    shape = (32, 32, 32)
    smooth = torch.nn.functional.avg_pool3d(torch.from_numpy(rng.normal(size=(1, 1, *shape))).float(), 5, 1, 2)
    target = smooth[0, 0].numpy()
    target = (target - target.min()) / (target.max() - target.min())  # 0..1, as unireg preprocess leaves it
    truth = np.digitize(target, np.quantile(target, [0.3, 0.6])).astype(np.int32)
    shifts, scales = [(1, 0, 0), (0, -1, 0), (0, 0, 2)], [(0.3, 0.5), (1.8, -0.4), (1.0, 0.0)]
    images = [g * np.roll(target, s, (0, 1, 2)) + b for s, (g, b) in zip(shifts, scales)]
    labels = [np.roll(truth, s, (0, 1, 2)) for s in shifts]
    inner = np.zeros(shape, bool)
    inner[(slice(8, -8),) * 3] = True
    here = inner & ~np.all(np.stack(labels) == labels[0], axis=0)
    same_scale = [np.roll(target, s, (0, 1, 2)) for s in shifts]
    options = {"std_floor": 1e-4}
    reference = fuse(labels, "jlf", images=same_scale, target=target, options=options)
    scaled = fuse(labels, "jlf", images=images, target=target, options=options)
    assert (reference.labels[here] != truth[here]).sum() == 0
    assert (scaled.labels[here] != truth[here]).sum() == 0
    np.testing.assert_allclose(scaled.confidence[here], reference.confidence[here], atol=1e-3)
    unnormalised = fuse(labels, "jlf", images=images, target=target, options={"std_floor": 1.0})
    assert np.abs(unnormalised.confidence[here] - reference.confidence[here]).max() > 0.05  # scale mattered


def test_jlf_radii_are_set_in_mm_and_rounded_to_the_grid():
    """antsJointFusion's patch radius 2 and search radius 3 voxels at 1 mm; the same millimetres on a
    2 mm grid (radius 1, search 2), at least one voxel on a coarse one, or voxels given outright."""
    assert {k: jlf_parameters(1.0)[k] for k in ("radius", "search", "alpha", "beta")} == {
        "radius": 2,
        "search": 3,
        "alpha": 0.1,
        "beta": 2.0,
    }
    assert jlf_parameters(None) == jlf_parameters((1.0, 1.0, 1.0))
    assert (jlf_parameters((2.0, 2.0, 2.0))["radius"], jlf_parameters(2.0)["search"]) == (1, 2)
    assert (jlf_parameters(4.0)["radius"], jlf_parameters(4.0)["search"]) == (1, 1)
    assert jlf_parameters(2.0, {"radius": 2, "search": 0})["radius"] == 2
    assert jlf_parameters(2.0, {"radius": 2, "search": 0})["search"] == 0
    assert jlf_parameters(2.0, {"radius_mm": 4.0})["radius"] == 2
    # fuse() takes the grid's spacing: on a 2 mm grid its defaults are the 1 mm call's radius 1, search 2
    rng = np.random.default_rng(11)
    target = rng.random((12, 12, 12)).astype(np.float32)
    labels = [(target > t).astype(np.int32) for t in (0.4, 0.5, 0.6)]
    images = [target + 0.1 * rng.random(target.shape).astype(np.float32) for _ in labels]
    at_2mm = fuse(labels, "jlf", images=images, target=target, spacing=(2.0, 2.0, 2.0))
    as_voxels = fuse(labels, "jlf", images=images, target=target, options={"radius": 1, "search": 2})
    np.testing.assert_array_equal(at_2mm.labels, as_voxels.labels)
    assert not np.array_equal(at_2mm.confidence, fuse(labels, "jlf", images=images, target=target).confidence)


def test_bad_requests_fail_with_one_clear_line():
    with pytest.raises(UniregError, match="unknown fusion 'vote'"):
        fuse(maps(1, 2), "vote")
    with pytest.raises(UniregError, match="needs the warped atlas images"):
        fuse(maps(1, 2), "jlf")
    with pytest.raises(UniregError, match="not on the labels' grid"):
        fuse(maps(1, 2), "weighted", images=[np.zeros((2, 2, 2))] * 2, target=np.zeros((4, 4, 4)))
