"""Feature extractors: shapes, freezing, the full MobileNet classifier, MIND-SSC properties, and
translation equivariance on a real T1 volume (their weight files: tests/test_weights.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_torchvision_file

from unireg import defaults, features
from unireg.errors import UniregError
from unireg.weights import MOBILENET_SHA256, WEIGHT_SOURCES

IXI_T1 = sorted(Path("/work/shared/data/ixi_t1_dlmuse/t1").glob("*.nii.gz"))

# name: (out_channels, stride, grid_offset), as the module docstring promises
EXPECTED = {
    "mobilenet_v1_025": (16, 2, 0.0),
    "mind": (12, 1, 0.0),
    "resnet18": (64, 4, 0.0),
    "vgg16": (128, 2, 0.5),
    "scratch": (16, 2, 0.0),
    "mobilenet_v1_025_reinit": (16, 2, 0.0),
}
FROZEN = [name for name in EXPECTED if name != "scratch"]


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("torchvision")
    # random stand-ins, so not named like torchvision's files (whose names carry their sha256 prefix)
    paths = {name: folder / f"stand-in-{name}.pth" for name in WEIGHT_SOURCES}
    for name, path in paths.items():
        write_torchvision_file(name, path)
    return paths


@pytest.fixture
def make(torchvision_files):
    def build(name: str) -> features.FeatureExtractor:
        torch.manual_seed(0)
        return features.build_extractor(name, torchvision_files.get(name))

    return build


@pytest.fixture(scope="module")
def real_t1() -> torch.Tensor:
    """An 80^3 crop (2 mm voxels) of a real IXI T1, intensities scaled to [0, 1]."""
    if not IXI_T1:
        pytest.skip("real-data test: /work/shared/data/ixi_t1_dlmuse/t1/*.nii.gz is not available here")
    import nibabel as nib

    data = np.asarray(nib.load(IXI_T1[0]).dataobj, dtype=np.float32)
    starts = [(n - 80) // 2 for n in data.shape]
    crop = data[tuple(slice(s, s + 80) for s in starts)]
    crop = np.clip(crop / np.percentile(crop, 99.5), 0, 1)
    return torch.from_numpy(np.ascontiguousarray(crop))[None, None]


def random_volume(shape=(1, 1, 32, 32, 32), seed=0) -> torch.Tensor:
    """Smooth random structure in [0, 1] (a blurred noise volume, like tissue, not pure noise)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(shape, generator=generator)
    smooth = F.avg_pool3d(F.pad(noise, (1,) * 6, mode="replicate"), 3, stride=1)
    return (smooth - smooth.min()) / (smooth.max() - smooth.min())


# ---------------------------------------------------------------------------------------------
# Registry and the extractor contract
# ---------------------------------------------------------------------------------------------


def test_registry_lists_every_extractor_default_first():
    assert features.available_extractors() == list(EXPECTED)
    assert features.available_extractors()[0] == defaults.DEFAULT_EXTRACTOR == "mobilenet_v1_025"


def test_unknown_extractor_names_the_valid_ones():
    with pytest.raises(UniregError, match="unknown feature extractor 'dino'.*mobilenet_v1_025, mind, resnet18"):
        features.build_extractor("dino")


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("shape", [(1, 1, 32, 32, 32), (2, 1, 16, 32, 48)])
def test_output_shape_stride_channels(make, name, shape):
    extractor = make(name)
    channels, stride, offset = EXPECTED[name]
    assert (extractor.name, extractor.out_channels, extractor.stride, extractor.grid_offset) == (
        name,
        channels,
        stride,
        offset,
    )
    out = extractor(random_volume(shape))
    assert out.shape == (shape[0], channels, *(n // stride for n in shape[2:]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.std() > 1e-4  # not a constant map


@pytest.mark.parametrize("name", list(EXPECTED))
def test_batch_items_are_independent_and_output_deterministic(make, name):
    """A batch gives each volume's own features (catches slice/batch reshape mix-ups)."""
    extractor = make(name).eval()
    pair = torch.cat([random_volume(seed=1), random_volume(seed=2)])
    with torch.no_grad():
        together = extractor(pair)
        alone = torch.cat([extractor(pair[:1]), extractor(pair[1:])])
        again = extractor(pair)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert torch.equal(together, again)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_wrong_input_shape_is_refused(make, name):
    with pytest.raises(UniregError, match=rf"{name} takes a \(B, 1, D, H, W\) volume"):
        make(name)(torch.rand(1, 2, 32, 32, 32))
    if EXPECTED[name][1] > 1:
        with pytest.raises(UniregError, match="divisible by"):
            make(name)(torch.rand(1, 1, 32, 33, 32))


# ---------------------------------------------------------------------------------------------
# Frozen vs trainable
# ---------------------------------------------------------------------------------------------


def training_step(extractor: features.FeatureExtractor) -> torch.nn.Module:
    """One SGD step of a model whose trainable first layer feeds the extractor inside the loss."""
    upstream = torch.nn.Conv3d(1, 1, 3, padding=1)
    model = torch.nn.Sequential(upstream, extractor)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
    loss = model(random_volume()).square().mean()
    loss.backward()
    optimizer.step()
    return upstream


@pytest.mark.parametrize("name", FROZEN)
def test_frozen_extractor_never_changes_but_passes_gradients(make, name):
    extractor = make(name)
    assert not extractor.trainable and not extractor.training
    assert all(not p.requires_grad for p in extractor.parameters())
    before = {key: value.clone() for key, value in extractor.state_dict().items()}
    upstream = training_step(extractor)
    assert not extractor.training  # the parent's .train() kept it in eval mode
    after = extractor.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)  # weights and BN statistics
    assert upstream.weight.grad.abs().sum() > 0  # the loss gradient went through the extractor

    x = random_volume().requires_grad_()
    extractor(x).square().mean().backward()
    assert x.grad is not None and (x.grad != 0).float().mean() > 0.5


@pytest.mark.parametrize("name", FROZEN)
def test_train_keeps_frozen_extractor_in_eval(make, name):
    extractor = make(name)
    extractor.train()
    assert not extractor.training and not any(m.training for m in extractor.modules())
    extractor.train(True).eval().train()
    assert not any(m.training for m in extractor.modules())


def test_scratch_is_seeded_trainable_and_learns(make):
    torch.manual_seed(3)
    first = features.build_extractor("scratch")
    torch.manual_seed(3)
    second = features.build_extractor("scratch")
    assert first.weights_sha256 is None and first.trainable
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert all(p.requires_grad for p in first.parameters()) and len(list(first.parameters())) == 9  # 3 convs, 3 BNs
    # the same architecture as the pretrained encoder
    pretrained = make("mobilenet_v1_025")
    assert {k: v.shape for k, v in first.state_dict().items()} == {
        k: v.shape for k, v in pretrained.state_dict().items()
    }

    before = [p.clone() for p in first.parameters()]
    training_step(first)
    assert first.training
    assert all(not torch.equal(b, p) for b, p in zip(before, first.parameters()))
    first.eval()
    assert not any(m.training for m in first.modules())


def test_reinit_ablation_redraws_only_the_first_layer_reproducibly():
    torch.manual_seed(5)
    reinit = features.build_extractor("mobilenet_v1_025_reinit").state_dict()
    torch.manual_seed(6)  # its own seed: the same layer whatever the global seed
    again = features.build_extractor("mobilenet_v1_025_reinit").state_dict()
    pretrained = features.build_extractor("mobilenet_v1_025").state_dict()
    assert all(torch.equal(reinit[k], again[k]) for k in reinit)
    first = [k for k in reinit if k.startswith("encoder.0.") and not k.endswith("num_batches_tracked")]
    assert len(first) == 5  # conv weight, BN weight/bias/mean/var
    assert all(not torch.equal(reinit[k], pretrained[k]) for k in first)
    assert all(torch.equal(reinit[k], pretrained[k]) for k in reinit if k.startswith("encoder.1."))
    assert features.build_extractor("mobilenet_v1_025_reinit").weights_sha256 == MOBILENET_SHA256


# ---------------------------------------------------------------------------------------------
# The full MobileNet classifier; extractors without weights
# ---------------------------------------------------------------------------------------------


def test_full_mobilenet_recognises_a_cat():
    """The whole classifier loads strictly and, with our ImageNet normalisation, calls
    scikit-image's cat photo a cat: architecture, weights and input scaling are right."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photo")
    photo = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1)[None].float() / 255
    photo = F.interpolate(photo, size=(224, 224), mode="bilinear", antialias=True)
    mean, std = torch.tensor(features.IMAGENET_MEAN), torch.tensor(features.IMAGENET_STD)
    with torch.no_grad():
        logits = features.load_mobilenet_v1_025()((photo - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    top3 = set(logits.topk(3).indices[0].tolist())
    assert top3 <= {281, 282, 283, 284, 285}  # tabby, tiger, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize("name", ["mind", "scratch"])
def test_weight_free_extractors_refuse_a_weight_file(tmp_path, name):
    assert features.build_extractor(name).weights_sha256 is None
    with pytest.raises(UniregError, match=f"{name} takes no weight file"):
        features.build_extractor(name, weights=tmp_path / "w.pth")


# ---------------------------------------------------------------------------------------------
# MIND-SSC
# ---------------------------------------------------------------------------------------------


def test_mind_is_invariant_to_intensity_rescaling(real_t1):
    mind = features.build_extractor("mind")
    reference = mind(real_t1)
    for scale, shift in [(3.0, 0.0), (0.2, 0.5), (1000.0, -7.0)]:
        torch.testing.assert_close(mind(scale * real_t1 + shift), reference, rtol=1e-3, atol=2e-4)
    assert reference.min() >= 0 and reference.max() <= 1
    assert (reference == 1).any(dim=1).all()  # the most similar neighbour pair gives exp(0)
    assert torch.equal(mind(torch.full((1, 1, 16, 16, 16), 0.3)), torch.ones(1, 12, 16, 16, 16))


def test_mind_tells_a_volume_from_its_shifted_copy():
    mind = features.build_extractor("mind")
    volume = random_volume(seed=4)
    original, shifted = mind(volume), mind(torch.roll(volume, 2, dims=3))
    assert (original - shifted).abs().mean() > 0.05
    # ... and the shifted copy's descriptor is the shifted descriptor (away from the border)
    torch.testing.assert_close(
        torch.roll(original, 2, dims=3)[..., 8:-8, 8:-8, 8:-8], shifted[..., 8:-8, 8:-8, 8:-8], rtol=1e-4, atol=1e-5
    )


def test_mind_pairs_are_the_12_orthogonal_neighbour_pairs():
    assert len(features._MIND_PAIRS) == 12 == len(set(features._MIND_PAIRS))
    for p, q in features._MIND_PAIRS:
        assert sum(map(abs, p)) == sum(map(abs, q)) == 1 and sum(a * b for a, b in zip(p, q)) == 0


# ---------------------------------------------------------------------------------------------
# Real data: the three views line up (translation equivariance on every axis)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, margin", [("mobilenet_v1_025", 4), ("mind", 6), ("resnet18", 7), ("vgg16", 6), ("scratch", 4)]
)
def test_shifting_the_volume_by_one_stride_shifts_the_features_by_one_voxel(make, real_t1, name, margin):
    """Shift a real T1 by ``stride`` voxels along each axis: the features move by one voxel
    along that axis, away from the borders. A view fused along the wrong axis, or a slice
    batch put back in the wrong order, breaks this."""
    extractor = make(name).eval()
    volume = real_t1 if name == "resnet18" else real_t1[..., 24:56, 24:56, 24:56]
    interior = (..., *[slice(margin, -margin)] * 3)
    with torch.no_grad():
        reference = extractor(volume)
        assert reference[interior].std() > 1e-3
        for axis in (2, 3, 4):
            moved = extractor(torch.roll(volume, extractor.stride, dims=axis))
            torch.testing.assert_close(
                moved[interior], torch.roll(reference, 1, dims=axis)[interior], rtol=1e-4, atol=1e-5
            )


# ---------------------------------------------------------------------------------------------
# Concatenation ("a+b")
# ---------------------------------------------------------------------------------------------


def test_concatenation_puts_each_part_on_the_coarsest_grid():
    """mobilenet_v1_025+mind: the MobileNet channels unchanged, then MIND pooled onto stride 2
    with windows centred on the MobileNet samples (voxel 2 i), so both describe the same place."""
    both = features.build_extractor("mobilenet_v1_025+mind")
    assert (both.name, both.out_channels, both.stride, both.grid_offset) == ("mobilenet_v1_025+mind", 28, 2, 0.0)
    assert not both.trainable and not any(p.requires_grad for p in both.parameters())
    assert both.weights_sha256 == f"{MOBILENET_SHA256}+-"
    volume = random_volume(seed=3)
    with torch.no_grad():
        out = both(volume)
        torch.testing.assert_close(out[:, :16], features.build_extractor("mobilenet_v1_025")(volume))
        mind = features.build_extractor("mind")(volume)
    assert out.shape == (1, 28, 16, 16, 16)
    for i, j, k in [(1, 1, 1), (5, 9, 3), (0, 4, 15)]:
        window = tuple(slice(max(0, 2 * n - 1), 2 * n + 2) for n in (i, j, k))
        torch.testing.assert_close(out[0, 16:, i, j, k], mind[0][(slice(None), *window)].mean((1, 2, 3)))


def test_concatenation_names_are_checked():
    for name in ("mobilenet_v1_025+dino", "mind+mind"):
        with pytest.raises(UniregError, match="unknown feature extractor"):
            features.build_extractor(name)
    with pytest.raises(UniregError, match="grids differ"):  # stride 2 at offsets 0 and 0.5
        features.Concatenated([features.build_extractor("mobilenet_v1_025"), _vgg_like()])


def _vgg_like() -> features.FeatureExtractor:
    return features.SliceWise3d(torch.nn.Conv2d(3, 4, 2, 2), name="stand-in", out_channels=4, stride=2, grid_offset=0.5)


def test_concatenation_passes_a_weight_file_to_its_one_weighted_part(tmp_path):
    with pytest.raises(UniregError, match="exactly one part"):
        features.build_extractor("mind+scratch", tmp_path / "w.pt")
    with pytest.raises(UniregError, match="sha256"):  # the file goes to the MobileNet part, which checks it
        (tmp_path / "w.pt").write_bytes(b"not the weights")
        features.build_extractor("mobilenet_v1_025+mind", tmp_path / "w.pt")
