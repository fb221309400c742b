"""scripts/train_burst.py: recipes trained side by side until a deadline, stopped resumably, packed."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_burst_stops_every_run_resumably_and_packs_a_common_step(tiny_dataset, tmp_path):
    root = tiny_dataset
    (root / "data.tsv").write_text(
        "id\timage\tlabels\n"
        + "".join(f"s{k}_T1\timages/s{k}_T1.nii.gz\tlabels/s{k}_T1_seg.nii.gz\n" for k in range(5))
    )
    recipes = []
    for name, extractor in (("a", "mobilenet_v1_025"), ("b", "mind")):
        recipe = tmp_path / f"train_{name}.yaml"
        recipe.write_text(
            yaml.safe_dump(
                {
                    "data": {"images": "x", "n_train": 3, "n_val": 2},
                    "atlas": str(root / "atlas"),
                    "preprocess": {"brain_extraction": False},
                    "model": {"extractor": extractor, "channels": [8, 16, 16]},
                    "train": {"val_pairs": 2},
                    "output": "unused",
                }
            )
        )
        recipes.append(str(recipe))
    work, pack = tmp_path / "work", tmp_path / "pack"
    cmd = [sys.executable, str(REPO / "scripts" / "train_burst.py"), *recipes, "--data", str(root / "data.tsv")]
    cmd += ["--cache", str(tmp_path / "cache"), "--work", str(work), "--seconds", "40", "--device", "cpu"]
    cmd += [
        "--validate-every",
        "2",
        "--val-io-steps",
        "0",
        "--patience",
        "0",
        "--threads",
        "1",
        "--pack",
        str(pack),
        "--part-mb",
        "1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((pack / "burst.json").read_text())
    assert set(summary["reached"]) == {"a", "b"}
    assert summary["common_step"] == min(summary["reached"].values()) >= 2
    assert all(summary["logged"][n] >= summary["reached"][n] for n in ("a", "b"))
    for name in ("a", "b"):  # stopped by SIGTERM, resumable: last.pt, no model.pt
        assert "run the same command to resume" in (work / name / "stdout.log").read_text()
        assert (work / name / "last.pt").is_file() and not (work / name / "model.pt").exists()
    # the parts (1 MiB each here) join into one tar holding each run's state and its common-step snapshot
    parts = sorted(pack.glob("burst.tar.part*"), key=lambda p: int(p.name.removeprefix("burst.tar.part")))
    assert len(parts) > 1
    joined = tmp_path / "joined.tar"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    names = set(tarfile.open(joined).getnames())
    step = f"step_{summary['common_step']:06d}.pt"
    for name in ("a", "b"):
        last = f"{name}/snapshots/step_{summary['reached'][name]:06d}.pt"
        assert {f"{name}/last.pt", f"{name}/log.csv", f"{name}/config.yaml", f"{name}/snapshots/{step}", last} <= names


def test_a_burst_recipe_keeps_its_init_checkpoint(tmp_path):
    """A recipe's relative train.init still names its checkpoint from the burst's own config folder."""
    sys.path.insert(0, str(REPO / "scripts"))
    from argparse import Namespace

    from train_burst import burst_config

    recipe = tmp_path / "recipes" / "train_more.yaml"
    recipe.parent.mkdir()
    for init, expected in (
        ("../runs/base/model.pt", str(tmp_path / "runs" / "base" / "model.pt")),
        ("default", "default"),
    ):
        recipe.write_text(yaml.safe_dump({"data": {"images": "x"}, "train": {"init": init}, "output": "o"}))
        args = Namespace(data="d.tsv", cache="c", device="cpu", max_steps=10, validate_every=5, val_io_steps=0)
        args.patience, args.min_delta = 0, 0.002
        assert burst_config(recipe, args, tmp_path / "work")["train"]["init"] == expected
