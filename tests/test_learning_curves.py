"""benchmarks/learning_curves.py: validation curves of several training runs in one table and figure."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LOG_FIELDS = ["step", "total", "val_dice_affine", "val_dice", "val_dice_io"]


def _load():
    spec = importlib.util.spec_from_file_location("learning_curves", REPO / "benchmarks" / "learning_curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(root: Path, name: str, extractor: str, curve: dict, val=("a", "b"), model=None) -> Path:
    run = root / name
    run.mkdir()
    config = {"model": {"extractor": extractor, **(model or {})}, "train": {}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "splits.json").write_text(json.dumps({"train": ["c"], "val": list(val)}))
    with open(run / "log.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        writer.writeheader()
        for step in range(1, max(curve) + 1):
            row = {"step": step, "total": 0.1}
            if step in curve:
                row.update(val_dice_affine=0.4, val_dice=curve[step][0], val_dice_io=curve[step][1])
            writer.writerow(row)
    return run


def test_table_and_figure_of_runs_of_different_lengths(tmp_path):
    a = _run(tmp_path, "fast", "mind", {2: (0.45, 0.55), 4: (0.5, 0.6)})
    b = _run(tmp_path, "slow", "mobilenet_v1_025", {2: (0.42, 0.52)}, model={"cascade": 2, "flow_stride": 1})
    _load().main([str(a), str(b), "--out", str(tmp_path / "out"), "--name", "lc"])
    table = (tmp_path / "out" / "lc.md").read_text()
    assert "| fast | mind | default | 0.0 | - | 0.500 (4) | 0.450 / 0.550 | 0.500 / 0.600 |" in table
    assert "| slow | mobilenet_v1_025 | cascade 2, flow_stride 1 | 0.0 | - | 0.420 (2) | 0.420 / 0.520 | - |" in table
    assert "affine only: 0.4000" in table
    rows = list(csv.DictReader(open(tmp_path / "out" / "lc.csv")))
    assert [(r["run"], r["step"], r["val_dice"]) for r in rows] == [
        ("fast", "2", "0.45"),
        ("fast", "4", "0.5"),
        ("slow", "2", "0.42"),
    ]
    assert (tmp_path / "out" / "lc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _load().main([str(a), str(b), "--out", str(tmp_path / "out"), "--name", "lc4", "--every", "4"])
    assert "| step 4 |" in (tmp_path / "out" / "lc4.md").read_text()
    assert "| step 2 |" not in (tmp_path / "out" / "lc4.md").read_text()


def test_runs_validated_on_other_subjects_do_not_compare(tmp_path):
    a = _run(tmp_path, "one", "mind", {2: (0.45, 0.55)})
    b = _run(tmp_path, "two", "mind", {2: (0.45, 0.55)}, val=("a", "z"))
    with pytest.raises(SystemExit, match="different subjects"):
        _load().main([str(a), str(b), "--out", str(tmp_path / "out")])
