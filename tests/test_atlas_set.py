"""unireg.atlas_set: importing labelled subjects as an atlas set onto a reference atlas, and its checks.

Members here are the MNI tissue atlas's own template and labels, moved by known affines (so the
import's MI affine has something to undo), plus bad members that each check must refuse."""

import json

import numpy as np
import pytest

from unireg.atlas_set import SET_FILE, import_atlas_set, is_atlas_set, load_atlas_set, read_manifest
from unireg.errors import UniregError


def test_import_aligns_members_onto_the_reference_and_keeps_common_labels(default_atlas, atlas_set_members, tmp_path):
    manifest, table = atlas_set_members
    out = tmp_path / "set"
    aset = import_atlas_set(manifest("a", "b", "c"), default_atlas, table, out)
    assert is_atlas_set(out) and aset.ids == ("a", "b", "c")
    info = json.loads((out / SET_FILE).read_text())
    assert info["label_ids"] == [1, 2, 3]
    assert [m["dropped_ids"] for m in info["members"]] == [[], [], [99]]
    assert set(aset.table) == {1, 2, 3}
    for member in aset.members:
        assert member.image.shape == default_atlas.image.shape
        assert np.allclose(member.image.affine, default_atlas.image.affine)
        assert 99 not in np.unique(member.labels.data)
        # the MI affine undid the shift: the member's labels agree with the reference atlas's
        ref = default_atlas.labels.data
        agree = np.mean(member.labels.data[ref > 0] == ref[ref > 0])
        assert agree > 0.9, agree
    assert all(m["template_correlation"] > 0.9 for m in info["members"])
    again = load_atlas_set(out)
    assert again.ids == aset.ids and np.array_equal(again.members[1].labels.data, aset.members[1].labels.data)


def test_a_member_of_another_contrast_is_refused_by_name(default_atlas, atlas_set_members, tmp_path):
    manifest, table = atlas_set_members
    with pytest.raises(UniregError, match=r"^inverted: .*inverted_t1.nii.gz: after the affine, the image correlates"):
        import_atlas_set(manifest("a", "inverted"), default_atlas, table, tmp_path / "set")
    assert not is_atlas_set(tmp_path / "set")


def test_labels_outside_the_table_and_bad_manifests_are_refused(default_atlas, atlas_set_members, tmp_path):
    manifest, table = atlas_set_members
    table = tmp_path / "no_blob.tsv"
    table.write_text("index\tname\n1\tCSF\n2\tgrey\n3\twhite\n")
    with pytest.raises(UniregError, match=r"^c: .*c_labels.nii.gz: label ids \[99\] are not in the table"):
        import_atlas_set(manifest("a", "c"), default_atlas, table, tmp_path / "set")
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\timage\nx\ty.nii.gz\n")
    with pytest.raises(UniregError, match="needs the tab-separated columns id, image, labels"):
        read_manifest(bad)
    bad.write_text("id\timage\tlabels\nx/../y\ta\tb\n")
    with pytest.raises(UniregError, match="member ids must be unique"):
        read_manifest(bad)
    with pytest.raises(UniregError, match="not an atlas set"):
        load_atlas_set(tmp_path)
