"""Shared fixtures: real data from ../shared (skipped with a reason when absent), small atlases and
torchvision-format weight files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UNIREG_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test saying which file is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not available: {path} (../shared/data is absent)")
    return path


@pytest.fixture(scope="session")
def default_atlas(tmp_path_factory):
    """The default MNI 2009a tissue atlas at 2 mm, built offline from nilearn's files."""
    from unireg.atlas import prepare_default_atlas
    return prepare_default_atlas(tmp_path_factory.mktemp("atlas") / "mni2009a-2mm", spacing=2.0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never write into the user's ~/.cache from tests."""
    monkeypatch.setenv("UNIREG_HOME", str(tmp_path_factory.getbasetemp() / "unireg_home"))


# later-layer keys of the full torchvision files, so the test files look like the real ones
TORCHVISION_EXTRA_KEYS = {
    "resnet18": {"layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer4.1.bn2.running_var": (512,),
                 "fc.weight": (1000, 512), "fc.bias": (1000,)},
    "vgg16": {"features.10.weight": (256, 128, 3, 3), "features.28.bias": (512,),
              "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)},
}


def write_torchvision_file(name: str, path: Path, seed: int = 0) -> dict:
    """A torchvision-format state dict (``resnet18``, ``vgg16``) with random weights: the early-layer
    keys/shapes of our module (torchvision names, no num_batches_tracked, like the official files)
    plus later keys. Used by tests/test_weights.py and tests/test_features.py."""
    import torch
    from unireg.features import ResNet18Early, VGG16Early
    torch.manual_seed(seed)
    state = {key: torch.randn(value.shape) * 0.1 if value.is_floating_point() else value
             for key, value in {"resnet18": ResNet18Early, "vgg16": VGG16Early}[name]().state_dict().items()
             if not key.endswith("num_batches_tracked")}
    state.update({key: value.abs() + 0.5 for key, value in state.items() if key.endswith("running_var")})
    state.update({key: torch.randn(shape) for key, shape in TORCHVISION_EXTRA_KEYS[name].items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def read_commented_csv(path) -> list[dict]:
    """Rows of a benchmark CSV whose provenance lines start with '#'."""
    import csv
    with open(path) as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def run_benchmark_smoke(script: str, out: Path) -> str:
    """Run ``benchmarks/<script> --smoke --out <out>`` on the shared IXI data (skips without it),
    with its own UNIREG_HOME (never the user's cache); returns its stdout."""
    import subprocess
    import sys
    shared_file("ixi_t1_dlmuse", "t1")
    shared_file("ixi002_t1_t2")
    env = {**os.environ, "UNIREG_HOME": str(out / "unireg_home")}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
