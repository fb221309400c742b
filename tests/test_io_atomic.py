"""Outputs appear complete or not at all: a job killed while writing leaves nothing under the final name."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from unireg.io import load_image, write_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]


def test_writer_failing_midway_leaves_neither_output_nor_temp(tmp_path):
    target = tmp_path / "out.tsv"

    def half_then_crash(tmp):
        Path(tmp).write_text("subject\tdice\n01\t0.")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(target, half_then_crash)
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_whole_file_and_keeps_umask_permissions(tmp_path):
    target = tmp_path / "info.json"
    write_text_atomic(target, json.dumps({"a": 1}))
    write_text_atomic(target, json.dumps({"a": 2}))
    assert json.loads(target.read_text()) == {"a": 2}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["info.json"]


def test_process_killed_while_writing_an_image_leaves_no_output(tmp_path):
    """SIGKILL (what SLURM or the OOM killer sends) in the middle of writing a 64 MB NIfTI."""
    target = tmp_path / "warped.nii.gz"
    script = (
        "import numpy as np; from unireg.io import Image, save_image; "
        "rng = np.random.default_rng(0); "
        f"save_image(Image(rng.random((256, 256, 256), dtype=np.float32), np.eye(4)), {str(target)!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".warped.nii.gz.*")):
        time.sleep(0.005)
    assert list(tmp_path.glob(".warped.nii.gz.*")), "the writer never started its temporary file"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()  # only a hidden temporary file is left, never "warped.nii.gz"
    # the same write, not killed, gives a complete image under the final name
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True)
    image = load_image(target)
    assert image.shape == (256, 256, 256) and np.isfinite(image.data).all()
