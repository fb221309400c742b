"""The many-structure atlas mni2009a-allen, built for real from the shipped Allen labels at 2 mm
(through the CLI, into the cache) and at 1 mm (through the API), once per module."""

import csv
import json

import numpy as np
import pytest

from unireg import atlas_allen
from unireg.atlas import default_atlas_dir, load_atlas, prepare_atlas
from unireg.atlas_allen import LEFT_OFFSET, MIN_VOXELS, RIGHT_OFFSET, load_source_labels
from unireg.cli import main
from unireg.io import read_label_table

pytestmark = pytest.mark.usefixtures("isolated_home_for_module_fixtures")


@pytest.fixture(scope="module")
def built(isolated_home_for_module_fixtures, tmp_path_factory):
    """{spacing: (atlas, label table rows, atlas.json)}: 2 mm by the CLI (default folder), 1 mm by the API."""
    assert main(["atlas", "prepare", "--name", "mni2009a-allen", "--spacing", "2"]) == 0
    atlases = {
        2.0: load_atlas(default_atlas_dir(2.0, "mni2009a-allen")),
        1.0: prepare_atlas("mni2009a-allen", tmp_path_factory.mktemp("allen") / "allen-1mm", spacing=1.0),
    }
    out = {}
    for spacing, atlas in atlases.items():
        with open(f"{atlas.path}/atlas_labels.tsv", newline="") as fh:
            rows = {int(r["index"]): r for r in csv.DictReader(fh, delimiter="\t")}
        out[spacing] = (atlas, rows, json.loads(open(f"{atlas.path}/atlas.json").read()))
    return out


@pytest.fixture(scope="module")
def source_volumes_mm3():
    """Source volume of each structure (merged ids folded in), from the shipped 0.5 mm map."""
    source = load_source_labels()
    return np.bincount(source.data.ravel()) * float(np.prod(source.spacing))


SPACINGS = pytest.mark.parametrize("spacing", [2.0, 1.0])


def _x(atlas) -> np.ndarray:
    return atlas.grid.world_coordinates()[..., 0]


def test_cli_builds_into_the_cache_and_the_name_loads_it(built, capsys):
    atlas = load_atlas("mni2009a-allen")  # already built by the CLI: loaded, not rebuilt
    assert atlas.path == str(default_atlas_dir(2.0, "mni2009a-allen")) and atlas.path.endswith(
        "atlas-mni2009a-allen-2mm"
    )
    assert atlas.grid.spacing == pytest.approx((2.0, 2.0, 2.0)) and all(s % 16 == 0 for s in atlas.grid.shape)
    assert load_atlas("mni2009a").table == {1: "CSF", 2: "grey_matter", 3: "white_matter"}  # both coexist
    assert default_atlas_dir(2.0, "mni2009a") != default_atlas_dir(2.0, "mni2009a-allen")


@SPACINGS
def test_label_ids_match_the_table_and_say_their_side(built, spacing):
    atlas, rows, _ = built[spacing]
    assert set(np.unique(atlas.labels.data)) - {0} == set(atlas.table) == set(rows)
    assert read_label_table(f"{atlas.path}/atlas_labels.tsv") == atlas.table  # extra columns stay readable
    assert list(rows[min(rows)]) == ["index", "name", "side", "abbreviation", "allen_id", "volume_mm3"]
    for index, row in rows.items():
        side = ("midline", "left", "right")[index // LEFT_OFFSET]
        assert row["side"] == side
        if side != "midline":  # "left head of caudate" and "right head of caudate", one abbreviation
            twin = rows[index + (LEFT_OFFSET if side == "left" else -LEFT_OFFSET)]
            assert row["name"] == f"{side} " + twin["name"].split(" ", 1)[1]
            assert twin["abbreviation"] == row["abbreviation"] and twin["allen_id"] == row["allen_id"]
    voxel_mm3 = spacing**3
    counts = np.bincount(atlas.labels.data.ravel())
    assert all(float(row["volume_mm3"]) == counts[index] * voxel_mm3 for index, row in rows.items())


@SPACINGS
def test_left_is_left_and_pairs_are_symmetric(built, spacing):
    atlas, rows, _ = built[spacing]
    x, labels = _x(atlas), atlas.labels.data
    left, right = (labels >= LEFT_OFFSET) & (labels < RIGHT_OFFSET), labels >= RIGHT_OFFSET
    assert x[left].max() <= 0 and x[right].min() > 0  # the source's voxels on x = 0 go to the left
    pairs = [(i, i + LEFT_OFFSET) for i, row in rows.items() if row["side"] == "left"]
    assert len(pairs) > 90
    for i, j in pairs:
        a, b = float(rows[i]["volume_mm3"]), float(rows[j]["volume_mm3"])
        assert abs(a - b) <= 0.2 * max(a, b), rows[i]["abbreviation"]  # the template is symmetric
    assert x[left].mean() < -25 and x[right].mean() > 25


@SPACINGS
def test_midline_structures_straddle_the_midline(built, spacing):
    atlas, rows, info = built[spacing]
    x, labels = _x(atlas), atlas.labels.data
    midline = [i for i, row in rows.items() if row["side"] == "midline"]
    # decided on the source: ventricles and aqueduct of the midline, the vermis, the tegmentum
    assert {"3V", "4V", "CBV", "MTg", "PnTg", "MoTg", "MiN"} <= {rows[i]["abbreviation"] for i in midline}
    assert {"Pu", "THM", "HiH", "CaH", "SFG", "CBL"}.isdisjoint(rows[i]["abbreviation"] for i in midline)
    assert sorted(rows[i]["abbreviation"] for i in midline) == sorted(
        set(info["lateral_rule"]["midline_structures"]) - set(info["small_structure_rule"]["dropped"])
    )
    for i in midline:
        where = x[labels == i]
        assert where.min() < 0 < where.max() and abs(where.mean()) < 1.0, rows[i]["abbreviation"]
        assert abs((where < 0).sum() - (where > 0).sum()) <= 0.1 * where.size  # as much on each side


def test_small_structures_are_dropped_at_2mm_and_kept_at_1mm(built, source_volumes_mm3):
    atlas, rows, info = built[2.0]
    dropped = set(info["small_structure_rule"]["dropped"])
    assert info["small_structure_rule"]["min_voxels"] == MIN_VOXELS == 27
    assert {"cec", "FI", "mtt", "Me", "HN"} <= dropped  # central canal, area FI, ... : < 216 mm3 a side
    assert dropped.isdisjoint(row["abbreviation"] for row in rows.values())
    assert np.bincount(atlas.labels.data.ravel())[list(rows)].min() >= MIN_VOXELS
    # every structure of more than 1 cm3 (a side) stays
    structures = atlas_allen.source_structures()
    big = {s.abbreviation for i, s in structures.items() if source_volumes_mm3[i] > 2000}
    assert big.isdisjoint(dropped) and len(big) > 60
    atlas1, rows1, info1 = built[1.0]
    assert info1["small_structure_rule"]["dropped"] == []
    assert len(rows1) == 2 * 122 + 16 == len(atlas1.table)  # 138 structures: 122 lateral, 16 midline
    assert 150 < len(rows) < len(rows1)


@SPACINGS
def test_label_volume_is_the_source_volume_less_the_dropped(built, spacing, source_volumes_mm3):
    atlas, rows, info = built[spacing]
    structures = atlas_allen.source_structures()
    dropped = {i for i, s in structures.items() if s.abbreviation in info["small_structure_rule"]["dropped"]}
    expected = source_volumes_mm3[1:].sum() - source_volumes_mm3[sorted(dropped)].sum()
    assert sum(float(row["volume_mm3"]) for row in rows.values()) == pytest.approx(expected, rel=0.02)
    # the labels lie on the template's brain, and CSF is dark, white matter bright in its T1
    assert (atlas.mask.data[atlas.labels.data > 0] == 1).mean() > 0.995
    by_abbreviation = {}
    for index, row in rows.items():
        by_abbreviation.setdefault(row["abbreviation"], []).append(index)

    def mean_t1(*abbreviations):
        ids = [i for a in abbreviations for i in by_abbreviation[a]]
        return float(atlas.image.data[np.isin(atlas.labels.data, ids)].mean())

    ventricles, cortex, white = mean_t1("aLV", "bLV", "3V"), mean_t1("PrCG", "SFG", "MFG", "STG"), mean_t1("FWM")
    assert ventricles < cortex < white and white - ventricles > 0.35


@SPACINGS
def test_subcortical_structures_exist_on_both_sides_where_they_belong(built, spacing):
    atlas, rows, _ = built[spacing]
    names = {row["name"]: index for index, row in rows.items()}
    world = atlas.grid.world_coordinates()

    def centre(name):
        return world[atlas.labels.data == names[name]].mean(0)

    # MNI centroids (mm), within a few mm: x (left side), y, z
    where = {
        "head of hippocampus": (-25, -14, -21),
        "head of caudate": (-13, 15, 5),
        "putamen": (-26, 2, 0),
        "thalamus": (-12, -17, 5),
    }
    for name, (x, y, z) in where.items():
        left, right = centre(f"left {name}"), centre(f"right {name}")
        np.testing.assert_allclose(left, (x, y, z), atol=4, err_msg=name)
        np.testing.assert_allclose(right, (-x, y, z), atol=4, err_msg=name)
    assert {"HiB", "HiT", "CaB", "PuPV"} <= {row["abbreviation"] for row in rows.values()}


def test_licence_and_citation_ship_in_the_package_and_beside_the_atlas(built):
    notice = (atlas_allen.SOURCE_DIR / "ATTRIBUTION.md").read_text()
    for words in ("CC BY 4.0", "Allen Institute", "10.1002/cne.24080", "J Comp Neurol 524(16):3127"):
        assert words in notice
    assert atlas_allen.SOURCE_LABELS.is_file() and (atlas_allen.SOURCE_DIR / "NIIVUE_README.md").is_file()
    atlas, _, info = built[2.0]
    for path in atlas_allen.NOTICES:
        assert (atlas_allen.SOURCE_DIR / path.name).read_text() == open(f"{atlas.path}/{path.name}").read()
    assert "CC BY 4.0" in info["licence"] and "10.1002/cne.24080" in info["citation"]
    assert info["lateral_rule"]["max_midline_fraction"] == 0.10 and info["lateral_rule"]["midline_band_mm"] == 1.0
    assert info["source"]["labels_sha256"] == "9bfb87ae3be25f1724b209fbfd3b2a02edc379922363a3721946cc7841719d28"


def test_structure_names_cover_every_source_id_once():
    with open(atlas_allen.STRUCTURE_NAMES, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    with open(atlas_allen.SOURCE_DIR / "itksnap_label_description_Br.txt") as fh:
        itksnap = {int(line.split()[0]): line.rsplit('"', 2)[1] for line in fh if line.strip()}
    assert [int(r["index"]) for r in rows] == list(range(1, 142))
    assert all(itksnap[int(r["index"])] == f"{r['abbreviation']} - {r['allen_id']}" for r in rows)
    assert len({r["name"] for r in rows}) == 141 and all(r["name"] != r["abbreviation"] for r in rows)
    merged = atlas_allen.source_structures()[138]
    assert merged.abbreviation == "FP+PaCG+RoG+FMG" and merged.name.startswith("frontal pole + paracingulate gyrus")
    assert set(atlas_allen.source_structures()) == set(range(1, 142)) - {135, 136, 137}


def test_structure_labels_on_another_grid_are_the_atlas_labels(built):
    """The demo's reference labels: drawn on the atlas's own (uncropped) grid they are exactly the
    atlas's labels, the same structures dropped; on the 1 mm template grid the same ids remain."""
    from unireg.atlas_allen import atlas_grid, structure_labels
    from unireg.transforms import resample

    atlas, rows, _ = built[2.0]
    t1, grid = atlas_grid(2.0)
    on_atlas_grid = structure_labels(grid, 2.0)
    cropped = resample(on_atlas_grid, atlas.grid, label_mode="nearest")  # the crop: voxels line up
    assert np.array_equal(cropped.data, atlas.labels.data)
    fine = structure_labels(t1.grid, 2.0)
    assert set(np.unique(fine.data).tolist()) - {0} == set(rows)
