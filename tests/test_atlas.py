import numpy as np
import pytest
from conftest import shared_file

from unireg.atlas import import_atlas, load_atlas
from unireg.errors import UniregError
from unireg.io import read_label_table


def test_default_atlas_is_built_offline_with_tissue_labels(default_atlas):
    atlas = default_atlas
    assert all(s % 16 == 0 for s in atlas.grid.shape)
    assert atlas.grid.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert atlas.grid.orientation == ("R", "A", "S")
    assert atlas.table == {1: "CSF", 2: "grey_matter", 3: "white_matter"}
    counts = np.bincount(atlas.labels.data.ravel(), minlength=4)
    # real anatomy at 2 mm (argmax of smooth priors: a generous GM ribbon): volumes in mm^3
    assert 0.8e6 < counts[2] * 8 < 1.3e6 and 0.45e6 < counts[3] * 8 < 0.8e6 and counts[1] > 0
    assert atlas.image.data.min() == 0.0 and atlas.image.data.max() == 1.0
    # labels and mask agree: every labelled voxel is in the brain mask
    assert np.all(atlas.mask.data[atlas.labels.data > 0] == 1)
    # the atlas origin is MNI: the anterior commissure (0, 0, 0) lies inside the brain
    ijk = np.round(np.linalg.inv(atlas.grid.affine) @ [0, 0, 0, 1])[:3].astype(int)
    assert atlas.mask.data[tuple(ijk)] == 1


def test_load_default_atlas_by_name_builds_it_in_the_cache():
    atlas = load_atlas("mni2009a")
    assert atlas.path.endswith("atlas-mni2009a-2mm") and len(atlas.table) == 3


def test_user_atlas_import_and_validation(tmp_path):
    image = shared_file("atlas_mni_ants", "mni.nii.gz")
    labels = shared_file("atlas_mni_ants", "mnia.nii.gz")
    table = tmp_path / "labels.tsv"
    table.write_text("index\tname\n" + "".join(f"{i}\tregion_{i}\n" for i in range(1, 117)))
    atlas = import_atlas(image, labels, table, tmp_path / "aal", spacing=2.0)
    assert all(s % 16 == 0 for s in atlas.grid.shape)
    present = set(np.unique(atlas.labels.data)) - {0}
    assert len(present) > 100 and present <= set(range(1, 117))
    assert load_atlas(tmp_path / "aal").table == read_label_table(table)

    table.write_text("index\tname\n1\tonly_one\n")
    with pytest.raises(UniregError, match="not in the table"):
        import_atlas(image, labels, table, tmp_path / "bad")
    table.write_text("id,name\n1,x\n")
    with pytest.raises(UniregError, match="header"):
        read_label_table(table)


def test_missing_atlas_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UniregError, match="atlas folder not found"):
        load_atlas(tmp_path / "nowhere")
