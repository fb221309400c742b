import numpy as np
import pytest
import torch

from unireg.errors import UniregError
from unireg.features import build_extractor
from unireg.fields import warp
from unireg.io import load_displacement, save_displacement
from unireg.model import build_model, load_checkpoint, save_checkpoint
from unireg.weights import sha256_file

SHAPE = (32, 32, 32)


def test_displacement_nifti_is_world_mm_and_itk_is_lps(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 0]
    field = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype(np.float32)
    save_displacement(field, affine, tmp_path / "d.nii.gz")
    save_displacement(field, affine, tmp_path / "d_itk.nii.gz", lps=True)
    back, aff = load_displacement(tmp_path / "d.nii.gz")
    np.testing.assert_allclose(back, field)
    np.testing.assert_allclose(aff, affine)
    itk, _ = load_displacement(tmp_path / "d_itk.nii.gz")
    np.testing.assert_allclose(itk[:2], -field[:2])
    np.testing.assert_allclose(itk[2], field[2])
    import nibabel as nib

    assert nib.load(str(tmp_path / "d.nii.gz")).header.get_intent()[0] == "vector"


@pytest.mark.parametrize("extractor", ["mobilenet_v1_025", "mind"])
def test_network_shapes_and_identity_start(extractor):
    torch.manual_seed(0)
    model = build_model({"extractor": extractor, "channels": [8, 16, 16]})
    fixed, moving = torch.rand(1, 1, *SHAPE), torch.rand(1, 1, *SHAPE)
    ddf = model(fixed, moving)
    assert ddf.shape == (1, 3, *SHAPE)
    assert ddf.abs().max() < 0.05  # the flow head starts near the identity


def test_training_step_changes_unet_but_not_frozen_extractor():
    torch.manual_seed(0)
    model = build_model({"extractor": "mobilenet_v1_025", "channels": [8, 16, 16]})
    model.train()
    assert not model.extractor.training
    frozen = {k: v.clone() for k, v in model.extractor.state_dict().items()}
    unet = {k: v.clone() for k, v in model.unet.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    fixed, moving = torch.rand(1, 1, *SHAPE), torch.rand(1, 1, *SHAPE)
    for _ in range(2):
        opt.zero_grad()
        ddf = model(fixed, moving)
        loss = ((warp(moving, ddf) - fixed) ** 2).mean() + (ddf**2).mean()
        loss.backward()
        opt.step()
    assert all(torch.equal(frozen[k], v) for k, v in model.extractor.state_dict().items())
    assert any(not torch.equal(unet[k], v) for k, v in model.unet.state_dict().items())


def test_checkpoint_round_trip_and_integrity(tmp_path):
    torch.manual_seed(0)
    config = {"extractor": "mobilenet_v1_025", "channels": [8, 16, 16]}
    model = build_model(config)
    path = save_checkpoint(tmp_path / "m.pt", model, config, extra={"model_card": {"steps": 3}})
    assert (tmp_path / "m.pt.sha256").is_file()
    loaded, payload = load_checkpoint(path)
    assert payload["extractor_weights_sha256"] == build_extractor("mobilenet_v1_025").weights_sha256
    assert payload["model_card"] == {"steps": 3}
    x, y = torch.rand(1, 1, *SHAPE), torch.rand(1, 1, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, y), model.eval()(x, y))
    # frozen extractor weights are not duplicated into the checkpoint
    assert not any(k.startswith("extractor.") for k in payload["state_dict"])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(UniregError, match="m.pt: checkpoint sha256 does not match"):
        load_checkpoint(path)


def test_checkpoint_refuses_other_extractor_weights(tmp_path):
    model = build_model({"extractor": "mind", "channels": [8, 16, 16]})
    path = save_checkpoint(tmp_path / "m.pt", model, {"extractor": "mind", "channels": [8, 16, 16]})
    payload = torch.load(path, weights_only=False)
    payload["extractor_weights_sha256"] = "0" * 64
    torch.save(payload, path)
    (tmp_path / "m.pt.sha256").write_text(f"{sha256_file(path)}  m.pt\n")  # a consistent, re-hashed copy
    with pytest.raises(UniregError, match="not those the model was trained on"):
        load_checkpoint(path)


def test_cascade_composes_its_stages_and_round_trips(tmp_path):
    """A two-stage cascade: stage 2 sees the moving features warped by stage 1's field and its
    field is composed onto it (d2 + d1 o (id + d2)); a cascade of 1 is the one-stage network."""
    from unireg.fields import integrate

    torch.manual_seed(0)
    config = {"extractor": "mind", "channels": [8, 16, 16], "cascade": 2}
    model = build_model(config).eval()
    assert len(model.refine) == 1 and build_model({**config, "cascade": 1}).refine.__len__() == 0
    for p in model.parameters():  # leave the identity start: make both stages move
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    fixed, moving = torch.rand(1, 1, *SHAPE), torch.rand(1, 1, *SHAPE)
    with torch.no_grad():
        ff, fm = model.features(fixed), model.features(moving)
        ddf, velocity = model.predict(ff, fm)
        assert velocity is None  # a composition is not one velocity's exponential
        d1 = integrate(model.velocity(ff, fm), model.int_steps)
        d2 = integrate(model.refine[0](torch.cat([ff, warp(fm, d1)], dim=1)), model.int_steps)
        torch.testing.assert_close(ddf, d2 + warp(d1, d2))
        assert d1.abs().max() > 0.01 and d2.abs().max() > 0.01 and not torch.allclose(ddf, d1)
        assert model(fixed, moving).shape == (1, 3, *SHAPE)
    path = save_checkpoint(tmp_path / "c.pt", model, config)
    loaded, payload = load_checkpoint(path)
    assert loaded.cascade == 2 and any(k.startswith("refine.0.") for k in payload["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(fixed, moving), model(fixed, moving))
    with pytest.raises(UniregError, match="cascade must be at least 1"):
        build_model({**config, "cascade": 0})


def test_one_stage_prediction_is_the_integrated_velocity():
    from unireg.fields import integrate

    torch.manual_seed(0)
    model = build_model({"extractor": "mind", "channels": [8, 16, 16]}).eval()
    ff, fm = model.features(torch.rand(1, 1, *SHAPE)), model.features(torch.rand(1, 1, *SHAPE))
    with torch.no_grad():
        ddf, velocity = model.predict(ff, fm)
        torch.testing.assert_close(velocity, model.velocity(ff, fm))
        torch.testing.assert_close(ddf, integrate(velocity, model.int_steps))


@pytest.mark.parametrize("cascade", [1, 2])
def test_mirrored_prediction_is_the_mean_of_both_and_mirror_equivariant(cascade):
    """Test-time mirroring averages the prediction with the prediction for the mirrored pair,
    mirrored back (velocities for a one-stage network, then integrated), so mirroring the pair
    mirrors the result, which the network alone does not do."""
    from unireg.fields import integrate, mirror_field

    torch.manual_seed(0)
    model = build_model({"extractor": "mind", "channels": [8, 16, 16], "cascade": cascade}).eval()
    for p in model.parameters():  # leave the identity start
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    fixed, moving = torch.rand(1, 1, *SHAPE), torch.rand(1, 1, *SHAPE)
    flip = (2,)  # voxel axis 0
    with torch.no_grad():
        plain, plain_velocity = model.predict_images(fixed, moving)
        torch.testing.assert_close(plain, model.predict(model.features(fixed), model.features(moving))[0])
        ddf, velocity = model.predict_images(fixed, moving, mirror_axis=0)
        other, other_velocity = model.predict_images(torch.flip(fixed, flip), torch.flip(moving, flip))
        if cascade == 1:
            torch.testing.assert_close(velocity, 0.5 * (plain_velocity + mirror_field(other_velocity, 0)))
            torch.testing.assert_close(ddf, integrate(velocity, model.int_steps))
        else:
            assert velocity is None
            torch.testing.assert_close(ddf, 0.5 * (plain + mirror_field(other, 0)))
        mirrored, _ = model.predict_images(torch.flip(fixed, flip), torch.flip(moving, flip), mirror_axis=0)
        torch.testing.assert_close(mirrored, mirror_field(ddf, 0), atol=1e-5, rtol=1e-4)
        gap = (other - mirror_field(plain, 0)).abs().max()
        assert gap > 10 * (mirrored - mirror_field(ddf, 0)).abs().max()  # the network alone is not equivariant
