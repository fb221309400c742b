"""Where a registration runs: device selection (also through the CLI), the recorded execution
environment, and the memory check against the cgroup limit or MemAvailable."""

import io
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import shared_file

from unireg import runtime
from unireg.errors import UniregError
from unireg.io import load_image, save_image
from unireg.register import InstanceOptOptions, register_images

MEMINFO = "MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"


# --------------------------------------------------------------------------- device


def test_auto_and_cpu_devices():
    assert runtime.select_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.select_device("cpu") == torch.device("cpu")


def test_cuda_without_a_visible_gpu_says_what_torch_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert runtime.select_device() == torch.device("cpu")
    with pytest.raises(UniregError, match=r"device cuda\) but torch sees none \(CUDA_VISIBLE_DEVICES unset, torch "):
        runtime.select_device("cuda:1")


def test_cuda_requested_without_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    img = tmp_path / "x.nii.gz"
    save_image(load_image(shared_file("ixi_t1_dlmuse", "t1", "IXI012-HH-1211_T1.nii.gz")), img)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unireg.cli",
            "register",
            "--fixed",
            str(img),
            "--moving",
            str(img),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cuda",
            "--subject",
            "s01",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"},
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        "unireg: s01: a GPU was requested (device cuda) but torch sees none (CUDA_VISIBLE_DEVICES='0'"
    )
    assert "register.device: cpu" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- execution environment


def test_execution_environment_records_host_device_and_scheduler_variables(monkeypatch):
    for name in runtime.SCHEDULER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_PARTITION", "gpu")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # not a variable that says where the job runs
    assert runtime.execution_environment(torch.device("cpu")) == {
        "host": socket.gethostname(),
        "device": "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "slurm_job_id": "4242",
        "slurm_job_partition": "gpu",
    }


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"/proc/meminfo": MEMINFO}, 8000000 * 1024.0),
        ({"/sys/fs/cgroup/memory.max": "max\n", "/proc/meminfo": MEMINFO}, 8000000 * 1024.0),  # no cgroup limit
        ({"/sys/fs/cgroup/memory.max": "4000000000\n", "/proc/meminfo": MEMINFO}, 4e9),
        ({"/sys/fs/cgroup/memory/memory.limit_in_bytes": "2000000000\n", "/proc/meminfo": MEMINFO}, 2e9),  # cgroup v1
        ({}, float("inf")),
    ],
    ids=["meminfo", "cgroup-max", "cgroup-v2", "cgroup-v1", "nothing-readable"],
)
def test_available_memory_is_the_smaller_of_cgroup_limit_and_memavailable(monkeypatch, files, expected):
    def fake_open(path, *args, **kwargs):
        if path not in files:
            raise FileNotFoundError(path)
        return io.StringIO(files[path])

    monkeypatch.setattr(runtime, "open", fake_open, raising=False)
    assert runtime.available_memory_bytes() == expected


def test_too_little_memory_is_a_clear_error_naming_grid_and_setting(default_atlas, monkeypatch):
    monkeypatch.setattr(runtime, "available_memory_bytes", lambda: 0.5e9)
    with pytest.raises(UniregError) as err:
        register_images(default_atlas.image, default_atlas.image, None, instance_opt=InstanceOptOptions.schedule(5))
    message = str(err.value)
    assert "80x96x96 atlas grid with instance optimisation needs about" in message
    assert "register.instance_opt: 0" in message and "atlas_spacing" in message
    runtime.check_memory((512, 512, 512), 5, torch.device("cuda"))  # only the CPU's memory is checked
    monkeypatch.undo()
    runtime.check_memory(default_atlas.grid.shape, 20, torch.device("cpu"))  # 2 mm fits on this 24 GB machine


def test_keep_freed_memory_tunes_glibc_once_and_can_be_switched_off():
    """In a fresh process: glibc's mallopt accepts both settings (True) and a second call is a no-op;
    UNIREG_MALLOC=default leaves the allocator alone (False)."""
    code = "from unireg.runtime import keep_freed_memory as k; print(k(), k())"
    env = {**os.environ, "UNIREG_MALLOC": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
    env["UNIREG_MALLOC"] = "default"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
