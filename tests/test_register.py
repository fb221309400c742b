"""Registration with the packaged default model on real data (IXI validation subjects, MNI)."""

import json

import numpy as np
import pytest
import torch
from conftest import shared_file

from unireg.affine import read_affine_txt
from unireg.cli import main
from unireg.fields import integrate, resize_field, warp
from unireg.io import Image, load_displacement, load_image, save_image
from unireg.metrics import mean_dice
from unireg.model import load_checkpoint
from unireg.preprocess import OUTPUT_FILES, preprocess_file
from unireg.register import OUTPUT_FILES as REG_FILES
from unireg.register import InstanceOptOptions, register_images
from unireg.transforms import resample

INSTANCE_OPT_STEPS = 30


@pytest.fixture(scope="module")
def default_model():
    return load_checkpoint()


@pytest.fixture(scope="module")
def ixi_validation_subjects(default_model, default_atlas, tmp_path_factory):
    """Three IXI subjects the default model never saw in training, preprocessed onto the atlas."""
    _, payload = default_model
    ids = payload["model_card"]["val_subjects"][:3]
    out = tmp_path_factory.mktemp("ixi_val")
    records = []
    for sid in ids:
        t1 = shared_file("ixi_t1_dlmuse", "t1", f"{sid}.nii.gz")
        labels = shared_file("ixi_t1_dlmuse", "labels", f"{sid}_DLMUSE.nii.gz")
        preprocess_file(t1, default_atlas, out / sid, subject=sid)
        matrix = read_affine_txt(out / sid / OUTPUT_FILES["affine"])
        lab = resample(load_image(labels, label=True), default_atlas.grid, matrix)
        records.append(
            {"id": sid, "image": load_image(out / sid / OUTPUT_FILES["image"]), "labels": lab, "dir": out / sid}
        )
    return records


def test_default_model_beats_affine_and_instance_opt_improves_it(default_model, ixi_validation_subjects):
    model, _ = default_model
    rows = []
    for fixed, moving in [(0, 1), (1, 2), (2, 0)]:
        f, m = ixi_validation_subjects[fixed], ixi_validation_subjects[moving]
        affine = mean_dice(f["labels"].data, m["labels"].data)
        net = register_images(f["image"], m["image"], model, moving_labels=m["labels"])
        opt = register_images(
            f["image"],
            m["image"],
            model,
            moving_labels=m["labels"],
            instance_opt=InstanceOptOptions.schedule(INSTANCE_OPT_STEPS),
        )
        rows.append(
            (
                affine,
                mean_dice(f["labels"].data, net.warped_labels.data),
                mean_dice(f["labels"].data, opt.warped_labels.data),
            )
        )
        assert net.info["jacobian"]["folding_percent"] < 0.5
        assert set(np.unique(net.warped_labels.data)) <= set(np.unique(m["labels"].data))
    affine, net, opt = np.mean(rows, axis=0)
    print(
        f"mean label Dice over {len(rows)} IXI validation pairs (148 DLMUSE labels): "
        f"affine {affine:.3f}, UniReg {net:.3f}, UniReg + {INSTANCE_OPT_STEPS} instance-opt steps {opt:.3f}"
    )
    assert net > affine + 0.04
    assert opt > net + 0.005


def test_recovers_known_smooth_deformation_of_mni_template(default_model, default_atlas):
    """Fixed = the template deformed by a known diffeomorphism; moving = the template."""
    model, _ = default_model
    g = torch.Generator().manual_seed(0)
    shape = default_atlas.grid.shape
    coarse = torch.randn(1, 3, *(s // 16 for s in shape), generator=g) * 2.5
    velocity = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    truth = integrate(velocity, 7)
    with torch.no_grad():
        fixed_t = warp(torch.from_numpy(default_atlas.image.data)[None, None], truth)
        fixed_lab = (
            warp(torch.from_numpy(default_atlas.labels.data)[None, None].float(), truth, label=True)[0, 0]
            .long()
            .numpy()
        )
    fixed = default_atlas.image.with_data(fixed_t[0, 0].numpy())
    result = register_images(fixed, default_atlas.image, model, moving_labels=default_atlas.labels)
    before = mean_dice(fixed_lab, default_atlas.labels.data)
    after = mean_dice(fixed_lab, result.warped_labels.data)
    brain = torch.from_numpy(default_atlas.mask.data > 0)
    err_before = truth[0].norm(dim=0)[brain].mean()
    err_after = (result.ddf[0] - truth[0]).norm(dim=0)[brain].mean()
    print(
        f"MNI known field: tissue Dice {before:.3f} -> {after:.3f}; mean endpoint error "
        f"{float(err_before) * 2:.2f} -> {float(err_after) * 2:.2f} mm"
    )
    assert truth[0].norm(dim=0)[brain].max() > 2.5  # a real deformation (> 5 mm somewhere)
    assert after > before + 0.05
    assert err_after < 0.75 * err_before


def test_register_cli_writes_outputs(ixi_validation_subjects, tmp_path, capsys):
    f, m = ixi_validation_subjects[0], ixi_validation_subjects[1]
    save_image(m["labels"], tmp_path / "moving_labels.nii.gz")
    out = tmp_path / "reg"
    assert (
        main(
            [
                "register",
                "--fixed",
                str(f["dir"] / OUTPUT_FILES["image"]),
                "--moving",
                str(m["dir"] / OUTPUT_FILES["image"]),
                "--moving-labels",
                str(tmp_path / "moving_labels.nii.gz"),
                "--fixed-mask",
                str(f["dir"] / OUTPUT_FILES["mask"]),
                "--moving-mask",
                str(m["dir"] / OUTPUT_FILES["mask"]),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "on cpu" in printed and "QC similarity" in printed
    assert all((out / name).is_file() for name in REG_FILES.values())
    info = json.loads((out / REG_FILES["info"]).read_text())
    assert info["device"] == "cpu" and info["jacobian"]["folding_percent"] < 0.5
    assert info["mirror_axis"] == 0  # test-time mirroring is on by default, along the RAS grid's x
    qc = info["qc"]  # subject -> subject of the same modality: both measures agree it worked
    assert qc["fixed_mask"] == "fixed mask" and qc["moving_mask"] == "moving mask"
    assert 0.2 < qc["similarity_before"] < qc["similarity_after"] <= 1.0
    assert 0.9 < qc["brain_mask_dice_before"] < qc["brain_mask_dice_after"] <= 1.0
    field, affine = load_displacement(out / REG_FILES["displacement"])
    np.testing.assert_allclose(affine, f["image"].affine, atol=1e-5)
    assert field.shape == (3, *f["image"].shape) and 0.5 < np.abs(field).max() < 40  # mm


# --------------------------------------------------------------------------- reference-free QC


def _smooth_noise(shape=(32, 32, 32), seed=0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.random.default_rng(seed).normal(size=shape), 2.0).astype(np.float32)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


def test_masked_local_ncc2_scores_alignment_also_for_inverted_contrast():
    from unireg.register import masked_local_ncc2

    image = _smooth_noise()
    mask = np.zeros(image.shape, np.float32)
    mask[8:24, 8:24, 8:24] = 1
    score = lambda a: masked_local_ncc2(_t(a), _t(image), _t(mask))  # noqa: E731
    assert score(image) == pytest.approx(1.0, abs=1e-6)
    assert score(5.0 - 2.0 * image) == pytest.approx(1.0, abs=1e-6)  # inverted contrast scores the same
    shifted = [score(np.roll(image, k, axis=0)) for k in (1, 2, 4)]
    assert 1.0 > shifted[0] > shifted[1] > shifted[2]  # misalignment lowers it, monotonically here
    assert score(_smooth_noise(seed=1)) < 0.1  # unrelated images
    assert score(np.full(image.shape, 3.0)) == 0.0  # constant windows score 0, not NaN
    assert np.isnan(masked_local_ncc2(_t(image), _t(image), _t(np.zeros_like(mask))))


def test_registration_qc_before_and_after_a_known_shift_and_mask_fallbacks():
    from unireg.io import Image
    from unireg.register import RegistrationResult, mask_dice, registration_qc

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed = Image(_smooth_noise(), affine)
    fixed_mask = np.zeros(fixed.shape, np.int32)
    fixed_mask[8:24, 8:24, 8:24] = 1
    # moving = fixed shifted by 4 voxels along i; the field ddf = +4 voxels (i) undoes it
    moving = Image(np.roll(fixed.data, 4, axis=0), affine)
    moving_mask = np.roll(fixed_mask, 4, axis=0)  # 12 of 16 planes overlap: Dice 0.75
    ddf = torch.zeros(1, 3, *fixed.shape)
    ddf[:, 0] = 4.0
    result = RegistrationResult(warped=Image(fixed.data, affine), displacement_mm=np.zeros((3, *fixed.shape)), ddf=ddf)
    qc = registration_qc(
        fixed,
        moving,
        result,
        fixed_mask=Image(fixed_mask, affine, is_label=True),
        moving_mask=Image(moving_mask, affine, is_label=True),
    )
    assert qc["similarity_before"] < 0.5 and qc["similarity_after"] == 1.0
    assert qc["brain_mask_dice_before"] == 0.75 and qc["brain_mask_dice_after"] == 1.0
    assert qc["fixed_mask"] == "fixed mask" and qc["moving_mask"] == "moving mask"
    # no masks: the fixed image's non-zero voxels (here all), the moving labels > 0
    qc = registration_qc(fixed, moving, result, moving_labels=Image(moving_mask * 3, affine, is_label=True))
    assert qc["fixed_mask"] == "fixed image != 0" and qc["moving_mask"] == "moving labels > 0"
    assert qc["brain_mask_dice_after"] == round(mask_dice(_t(np.ones(fixed.shape)), _t(fixed_mask)), 4)
    assert registration_qc(fixed, moving, result)["brain_mask_dice_after"] is None
    assert np.isnan(mask_dice(torch.zeros(3), torch.zeros(3)))


def test_the_mirror_axis_is_the_voxel_axis_closest_to_world_left_right():
    from unireg.register import left_right_axis

    assert left_right_axis(np.diag([2.0, 2.0, 2.0, 1.0])) == 0
    assert left_right_axis(np.diag([-1.0, 1.0, 1.0, 1.0])) == 0  # LAS: still axis 0
    permuted = np.array([[0, 0, -1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # a sagittal stack
    assert left_right_axis(permuted) == 2
    oblique = np.array([[0.2, 0.1, 0.95, 0], [0.9, 0.1, -0.2, 0], [0.1, 0.95, 0.1, 0], [0, 0, 0, 1]])
    assert left_right_axis(oblique) == 2


def test_no_mirror_is_the_network_alone_and_mirror_changes_the_field(default_model, ixi_validation_subjects):
    model, _ = default_model
    f, m = ixi_validation_subjects[0], ixi_validation_subjects[1]
    plain = register_images(f["image"], m["image"], model, mirror=False)
    mirrored = register_images(f["image"], m["image"], model, mirror=True)
    assert plain.info["mirror_axis"] is None and mirrored.info["mirror_axis"] == 0
    fixed, moving = (torch.from_numpy(i.data.astype(np.float32))[None, None] for i in (f["image"], m["image"]))
    with torch.no_grad():
        network, _ = model.predict(model.features(fixed), model.features(moving))
    torch.testing.assert_close(plain.ddf, resize_field(network, f["image"].shape))
    change = (mirrored.ddf - plain.ddf).abs()
    assert 0.01 < float(change.mean()) < 1.0  # voxels: a correction, not another registration
    assert mirrored.info["jacobian"]["folding_percent"] < 0.5


def test_network_factor_is_the_integer_ratio_of_model_to_grid_spacing():
    from unireg.register import network_factor

    assert network_factor((1.0, 1.0, 1.0), (2.0, 2.0, 2.0)) == 2
    assert network_factor((2.0, 2.0, 2.0), (2.0, 2.0, 2.0)) == 1
    assert network_factor((0.5, 0.5, 0.5), (2.0, 2.0, 2.0)) == 4
    assert network_factor((1.5, 1.5, 1.5), (2.0, 2.0, 2.0)) == 1  # not an integer factor
    assert network_factor((1.0, 1.0, 2.0), (2.0, 2.0, 2.0)) == 1  # not the same on every axis
    assert network_factor((4.0, 4.0, 4.0), (2.0, 2.0, 2.0)) == 1  # coarser than the model: as given


def test_network_pooling_needs_the_model_grid_and_a_pooled_shape_the_network_takes():
    from unireg.errors import UniregError
    from unireg.register import network_pooling

    one_mm, model = (1.0, 1.0, 1.0), (2.0, 2.0, 2.0)
    assert network_pooling((160, 192, 160), one_mm, model, "model") == 2
    assert network_pooling((160, 192, 160), one_mm, model, "atlas") == 1
    assert network_pooling((160, 192, 176), one_mm, model, "model") == 1  # 176 / 2 = 88 is not divisible by 16
    assert network_pooling((160, 192, 160), one_mm, None, "model") == 1  # a model without a recorded grid
    with pytest.raises(UniregError, match="unknown network grid"):
        network_pooling((160, 192, 160), one_mm, model, "fine")


def test_a_2mm_model_on_a_1mm_grid_predicts_at_2mm_and_recovers_a_known_field(default_model, default_atlas):
    """The 2 mm template upsampled to 1 mm, deformed by a known field: the network run on the images
    pooled back to 2 mm (network_factor 2) recovers the field in 1 mm voxels, better than run on
    the 1 mm grid it was not trained at."""
    model, _ = default_model
    g = torch.Generator().manual_seed(1)
    fine_shape = tuple(2 * s for s in default_atlas.grid.shape)
    coarse = torch.randn(1, 3, *(s // 32 for s in fine_shape), generator=g) * 5.0  # 1 mm voxels
    truth = integrate(torch.nn.functional.interpolate(coarse, size=fine_shape, mode="trilinear", align_corners=True), 7)
    fine_affine = default_atlas.image.affine.copy()
    fine_affine[:3, :3] /= 2
    fine_affine[:3, 3] -= 0.5 * np.diag(fine_affine[:3, :3])  # voxel centres of the 2 mm grid, halved
    with torch.no_grad():
        atlas_t = torch.nn.functional.interpolate(
            torch.from_numpy(default_atlas.image.data)[None, None], size=fine_shape, mode="trilinear"
        )
        fixed_t = warp(atlas_t, truth)
    fixed = Image(fixed_t[0, 0].numpy(), fine_affine)
    moving = Image(atlas_t[0, 0].numpy(), fine_affine)
    brain = torch.nn.functional.interpolate(
        torch.from_numpy(default_atlas.mask.data.astype(np.float32))[None, None], size=fine_shape
    )[0, 0].bool()
    errors = {}
    for factor in (1, 2):
        result = register_images(fixed, moving, model, network_factor=factor)
        assert result.ddf.shape[2:] == fine_shape and result.info["network_factor"] == factor
        errors[factor] = float((result.ddf[0] - truth[0]).norm(dim=0)[brain].mean())
    before = float(truth[0].norm(dim=0)[brain].mean())
    print(f"1 mm known field, error (mm): {before:.2f} -> network at 1 mm {errors[1]:.2f}, 2 mm {errors[2]:.2f}")
    assert errors[2] < 0.75 * before
    assert errors[2] < errors[1]
