"""benchmarks/index_speed.py on a tiny synthetic export from the real MPRAGE header: the export is
valid (the manifest has its series, subjects and selections), the pass reads each file once, and the
table prints and is written. No timing is asserted: the machine may be shared."""

import sys

import pytest
from conftest import REPO, shared_file

sys.path.insert(0, str(REPO / "benchmarks"))
import index_speed  # noqa: E402

SERIES, FILES_PER_SERIES = 21, 10  # 11 subjects: the last one has its MPRAGE only


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    shared_file("dicom_mprage_vsseg001", "1-001.dcm")
    tmp = tmp_path_factory.mktemp("index_speed")
    return tmp, index_speed.benchmark(SERIES, FILES_PER_SERIES, series_per_subject=2, count_series=5, tmp=tmp)


def test_the_manifest_describes_the_export(result):
    _, r = result
    assert (r["series"], r["subjects"], r["files"]) == (SERIES, 11, SERIES * FILES_PER_SERIES)
    assert (r["rows"], r["selected"]) == (SERIES, 11)  # one row per series, the MPRAGE chosen for each subject
    assert 3000 * r["files"] < r["bytes"] < 6000 * r["files"]  # the real header (~3.7 kB) + 8x8 pixels


def test_the_pass_reads_each_header_once(result):
    reads = result[1]["reads"]
    assert reads["files"] == 5 * FILES_PER_SERIES
    assert reads["opens_min"] == reads["opens_max"] == 1
    assert reads["dcmread_per_file"] == 1


def test_the_check_catches_a_manifest_that_misses_a_series(result):
    tmp, r = result
    export = {k: r[k] for k in ("series", "subjects", "files", "t1_description")}
    with pytest.raises(AssertionError):
        index_speed.check_manifest(tmp / "out", {**export, "series": SERIES + 1}, FILES_PER_SERIES)


def test_main_prints_and_writes_the_table(tmp_path, capsys):
    shared_file("dicom_mprage_vsseg001", "1-001.dcm")
    r = index_speed.main(["--series", "3", "--count-series", "2", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert (r["rows"], r["subjects"], r["selected"]) == (3, 2, 2)
    row = next(line for line in printed.splitlines() if line.startswith("| 3 | 30 |"))
    assert "| 1, 1 |" in row  # header reads per file: opens, dcmread
    assert (tmp_path / "index_speed.md").read_text() == printed.removesuffix("\n")
