"""unireg.segment / ``unireg segment``: multi-atlas segmentation of a subject with an atlas set
(built by ``unireg atlas import-set`` from the shifted MNI tissue atlases of conftest), then the
fused labels brought to the native grid by ``unireg propagate`` without a displacement."""

import json

import numpy as np
import pytest
from conftest import dice, shifted

from unireg.cli import main
from unireg.io import load_image, save_image


@pytest.fixture(scope="module")
def atlas_set(atlas_set_members, tmp_path_factory):
    manifest, table = atlas_set_members
    out = tmp_path_factory.mktemp("segment") / "set"
    args = ["--manifest", str(manifest("a", "b", "c")), "--table", str(table), "--reference", "mni2009a"]
    assert main(["atlas", "import-set", *args, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("fusion", ["majority", "jlf"])
def test_segment_fuses_every_member_onto_the_subject(atlas_set, tmp_path, fusion):
    fixed = atlas_set / "members" / "b" / "atlas.nii.gz"  # a member is as good a subject as any (on the grid)
    out = tmp_path / f"seg_{fusion}"
    args = ["segment", "--fixed", str(fixed), "--atlas-set", str(atlas_set), "--out", str(out)]
    assert main(args + ["--fusion", fusion, "--instance-opt", "0", "--device", "cpu", "--subject", "s1"]) == 0
    info = json.loads((out / "segment.json").read_text())
    assert info["k"] == 3 and [m["id"] for m in info["members"]] == ["a", "b", "c"]
    assert info["fusion"] == fusion and info["subject"] == "s1"
    fused = load_image(out / "labels.nii.gz", label=True)
    truth = load_image(atlas_set / "members" / "b" / "atlas_labels.nii.gz", label=True)
    for label in (1, 2, 3):
        assert dice(fused.data == label, truth.data == label) > 0.75, label
    confidence = load_image(out / "confidence.nii.gz").data
    assert confidence.min() >= 0 and confidence.max() <= 1 and np.mean(confidence == 1) > 0.5


def test_fused_labels_reach_the_native_grid_through_propagate(atlas_set, default_atlas, tmp_path):
    native = shifted(default_atlas.image, (0, 0, 0))
    save_image(native, tmp_path / "native.nii.gz")
    (tmp_path / "identity.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    fixed = atlas_set / "members" / "a" / "atlas.nii.gz"
    assert main(["segment", "--fixed", str(fixed), "--atlas-set", str(atlas_set), "--out", str(tmp_path / "seg"),
                 "--k", "2", "--fusion", "weighted", "--instance-opt", "0", "--device", "cpu"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "seg" / "segment.json").read_text())["k"] == 2
    out = tmp_path / "native_labels.nii.gz"
    assert main(["propagate", "--atlas-labels", str(tmp_path / "seg" / "labels.nii.gz"), "--native",
                 str(tmp_path / "native.nii.gz"), "--affine", str(tmp_path / "identity.txt"), "--out", str(out),
                 "--table", str(atlas_set / "atlas_labels.tsv")]) == 0  # fmt: skip
    labels = load_image(out, label=True)
    assert labels.shape == native.shape and set(np.unique(labels.data)) <= {0, 1, 2, 3}


def test_a_subject_off_the_set_grid_is_refused(atlas_set, tmp_path, capsys):
    img = load_image(atlas_set / "members" / "a" / "atlas.nii.gz")
    save_image(img.with_data(img.data[:-16]), tmp_path / "small.nii.gz")
    assert main(["segment", "--fixed", str(tmp_path / "small.nii.gz"), "--atlas-set", str(atlas_set), "--out",
                 str(tmp_path / "o"), "--subject", "s9", "--device", "cpu"]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.startswith("unireg: s9: ") and "not on the atlas set's reference grid" in err and "\n" not in err
