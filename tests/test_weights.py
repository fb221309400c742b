"""Weight files of the feature extractors: the packaged MobileNet weights (known sha256, corrupted,
missing) and torchvision-format files (explicit file, hub cache, wrong keys, missing file, fetching)."""

from __future__ import annotations

import dataclasses
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch
from conftest import TORCHVISION_EXTRA_KEYS, write_torchvision_file

from unireg import features, weights
from unireg.errors import UniregError

# ---------------------------------------------------------------------------------------------
# Packaged MobileNet weights
# ---------------------------------------------------------------------------------------------


def test_mobilenet_uses_packaged_weights_with_known_hash():
    packaged = weights.WEIGHTS_DIR / weights.MOBILENET_FILE
    assert (
        weights.sha256_file(packaged)
        == weights.MOBILENET_SHA256
        == "1a73859ca67b1d1753f5e01af050d660880dc6a97b4b346905356d65f3ee8755"
    )
    assert (weights.WEIGHTS_DIR / "Pytorch_Retinaface_LICENSE.MIT").is_file()
    assert "non-commercial" in (weights.WEIGHTS_DIR / "README.md").read_text()

    extractor = features.build_extractor("mobilenet_v1_025")
    assert extractor.weights_sha256 == weights.MOBILENET_SHA256
    checkpoint = torch.load(packaged, map_location="cpu", weights_only=True)["state_dict"]
    loaded = extractor.encoder.state_dict()
    assert torch.equal(loaded["0.0.weight"], checkpoint["module.stage1.0.0.weight"])
    assert torch.equal(loaded["1.4.running_var"], checkpoint["module.stage1.1.4.running_var"])


def test_corrupted_mobilenet_weights_are_refused(tmp_path):
    corrupted = tmp_path / weights.MOBILENET_FILE
    shutil.copyfile(weights.WEIGHTS_DIR / weights.MOBILENET_FILE, corrupted)
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    with pytest.raises(UniregError) as err:
        features.build_extractor("mobilenet_v1_025", weights=corrupted)
    assert str(corrupted) in str(err.value) and "sha256" in str(err.value) and "corrupted" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(UniregError, match="not found"):
        features.build_extractor("mobilenet_v1_025", weights=tmp_path / "absent.pth.tar")


# ---------------------------------------------------------------------------------------------
# torchvision-format weights: explicit file, hub cache, wrong keys, missing file, fetching
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(weights.WEIGHT_SOURCES))
def test_torchvision_weights_load_from_a_file(tmp_path, name):
    path = tmp_path / "my_weights.pth"
    state = write_torchvision_file(name, path, seed=5)
    extractor = features.build_extractor(name, weights=str(path))
    assert extractor.weights_sha256 == weights.sha256_file(path)
    loaded = extractor.encoder.state_dict()
    for key, value in state.items():
        if key in loaded:
            assert torch.equal(loaded[key], value), key
    assert not set(TORCHVISION_EXTRA_KEYS[name]) & set(loaded)  # later layers are not part of the extractor


@pytest.mark.parametrize("name, key", [("resnet18", "layer1.1.conv2.weight"), ("vgg16", "features.7.bias")])
def test_torchvision_file_with_wrong_keys_is_refused(tmp_path, name, key):
    path = tmp_path / "wrong.pth"
    state = write_torchvision_file(name, path)
    state[key.replace(".weight", ".kernel").replace(".bias", ".offset")] = state.pop(key)
    torch.save(state, path)
    with pytest.raises(UniregError) as err:
        features.build_extractor(name, weights=path)
    message = str(err.value)
    assert str(path) in message and repr(key) in message and "missing" in message and "\n" not in message

    state = write_torchvision_file(name, path)
    state[key] = torch.zeros(3, 3)
    torch.save(state, path)
    with pytest.raises(UniregError, match=rf"{key}' has shape \(3, 3\), expected"):
        features.build_extractor(name, weights=path)

    path.write_bytes(b"<html>not a weight file</html>")
    with pytest.raises(UniregError, match="cannot be read as a PyTorch weight file"):
        features.build_extractor(name, weights=path)


def accept_stand_in(monkeypatch, name, path):
    """Let a stand-in state dict pass as torchvision's file: its name's hash prefix becomes the stand-in's."""
    source = weights.WEIGHT_SOURCES[name]
    monkeypatch.setitem(
        weights.WEIGHT_SOURCES, name, dataclasses.replace(source, sha256_prefix=weights.sha256_file(path)[:8])
    )


@pytest.mark.parametrize("name", list(weights.WEIGHT_SOURCES))
def test_torchvision_weights_found_in_the_hub_cache(tmp_path, monkeypatch, name):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / weights.WEIGHT_SOURCES[name].file_name
    assert weights.hub_checkpoint_dir() == cached.parent
    write_torchvision_file(name, cached)
    with pytest.raises(UniregError, match=f"does not start with {weights.WEIGHT_SOURCES[name].sha256_prefix}"):
        features.build_extractor(name)  # a stand-in file under torchvision's name fails the name's hash
    accept_stand_in(monkeypatch, name, cached)
    assert features.build_extractor(name).weights_sha256 == weights.sha256_file(cached)


@pytest.mark.parametrize("name", list(weights.WEIGHT_SOURCES))
def test_missing_torchvision_weights_say_which_file_and_how(tmp_path, monkeypatch, name):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UniregError) as err:
        features.build_extractor(name)
    message = str(err.value)
    assert weights.WEIGHT_SOURCES[name].file_name in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert f"unireg weights fetch {name}" in message and "pass the file's path" in message


def test_fetch_weights_failure_names_the_file_to_place_by_hand(tmp_path, monkeypatch):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UniregError) as err:
        weights.fetch_weights("vgg16")
    message = str(err.value)
    assert "vgg16-397923af.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message and "name resolution" in message


def test_fetch_weights_downloads_into_the_cache_once(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        write_torchvision_file("resnet18", Path(dst))

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = weights.fetch_weights("resnet18")
    assert path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth" and path.is_file()
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd")]
    assert weights.fetch_weights("resnet18") == path and len(calls) == 1  # present: no download
    accept_stand_in(monkeypatch, "resnet18", path)
    assert features.build_extractor("resnet18").weights_sha256 == weights.sha256_file(path)

    elsewhere = weights.fetch_weights("vgg16", dest_dir=tmp_path / "elsewhere")
    assert elsewhere == tmp_path / "elsewhere" / "vgg16-397923af.pth"
    assert calls[-1] == ("https://download.pytorch.org/models/vgg16-397923af.pth", "397923af")
    with pytest.raises(UniregError, match="no weights to fetch for 'mind'"):
        weights.fetch_weights("mind")


def test_weights_cli_lists_where_each_file_is_looked_for_and_fetches(tmp_path, monkeypatch, capsys):
    from unireg.cli import main

    monkeypatch.setattr(
        torch.hub,
        "download_url_to_file",
        lambda url, dst, hash_prefix=None, progress=True: write_torchvision_file("vgg16", Path(dst)),
    )
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    assert main(["weights", "list"]) == 0
    listed = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert list(listed) == features.available_extractors()
    assert listed["resnet18"] == str(cache / "resnet18-f37072fd.pth")
    assert listed["mobilenet_v1_025"] == listed["mind"] == "packaged / none needed"
    assert main(["weights", "fetch", "vgg16"]) == 0
    assert capsys.readouterr().out == f"unireg weights fetch: {cache / 'vgg16-397923af.pth'}\n"
    assert (cache / "vgg16-397923af.pth").is_file()
