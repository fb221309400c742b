"""Weight files of the feature extractors: where they are, how they are checked, fetched and loaded.

The extractors themselves (:mod:`unireg.features`) take their weights from here:

* ``mobilenet_v1_025`` (and its ``_reinit`` ablation): the ImageNet MobileNetV1 x0.25 weights
  ship in ``unireg/data/weights`` (:data:`WEIGHTS_DIR` / :data:`MOBILENET_FILE`; MIT code,
  Pytorch_Retinaface commit 3c31dcd) and are checked against :data:`MOBILENET_SHA256` before
  every load.
* ``resnet18``, ``vgg16``: torchvision's ImageNet files (:data:`WEIGHT_SOURCES`), a path given
  as ``weights`` or else the file in the torch hub cache (:func:`hub_checkpoint_dir`). A file
  under torchvision's name must start with the sha256 prefix that name carries; a file under
  another name is the user's own and is only recorded. Only :func:`fetch_weights` (``unireg
  weights fetch``) downloads; nothing here downloads implicitly.

Files are read with ``torch.load(weights_only=True)`` (tensors only, no code execution); every
error names the file and says what to do. All these weights were trained on ImageNet, whose
terms ask for research/non-commercial use. The sha256 of the file an extractor loaded
(:func:`sha256_file`) is its ``weights_sha256``; checkpoints trained on top of it record it too.
"""

from __future__ import annotations

import hashlib
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .defaults import DEFAULT_EXTRACTOR
from .errors import UniregError

WEIGHTS_DIR = Path(__file__).resolve().parent / "data" / "weights"
MOBILENET_FILE = "mobilenetV1x0.25_imagenet_model_best.pth.tar"
MOBILENET_SHA256 = "1a73859ca67b1d1753f5e01af050d660880dc6a97b4b346905356d65f3ee8755"


@dataclass(frozen=True)
class WeightSource:
    """Where torchvision publishes a weight file; its name embeds the first 8 hex of its sha256."""

    file_name: str
    url: str
    sha256_prefix: str


WEIGHT_SOURCES: dict[str, WeightSource] = {
    "resnet18": WeightSource(
        "resnet18-f37072fd.pth", "https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd"
    ),
    "vgg16": WeightSource("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth", "397923af"),
}


# ---------------------------------------------------------------------------------------------
# Files: hashes, the hub cache, loading
# ---------------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_checkpoint_dir() -> Path:
    """torch hub's weight cache: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/...``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _load_weight_file(path: Path) -> Mapping:
    """``torch.load`` (tensors only, no code execution) with errors meant for people."""
    if not path.is_file():
        raise UniregError("weight file not found", path=path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails with many types; all mean "not a weight file"
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise UniregError(f"cannot be read as a PyTorch weight file ({reason})", path=path) from None
    if not isinstance(state, Mapping):
        raise UniregError(f"holds a {type(state).__name__}, not a state dict", path=path)
    return state


def _load_matching(module: nn.Module, state: Mapping, path: Path, name: str) -> None:
    """Load the entries of a full state dict that ``module`` (named like the full net) needs.

    Checks every needed key and shape first; ``num_batches_tracked`` (unused in eval mode,
    absent from older torchvision files) may be missing.
    """
    needed = {key: value for key, value in module.state_dict().items() if not key.endswith("num_batches_tracked")}
    for key, value in needed.items():
        if key not in state:
            raise UniregError(
                f"not a torchvision {name} state dict: key {key!r} is missing (expected shape {tuple(value.shape)})",
                path=path,
            )
        found = state[key]
        if not isinstance(found, torch.Tensor) or found.shape != value.shape:
            shape = tuple(found.shape) if isinstance(found, torch.Tensor) else type(found).__name__
            raise UniregError(
                f"not a torchvision {name} state dict: key {key!r} has shape {shape}, expected {tuple(value.shape)}",
                path=path,
            )
    module.load_state_dict({key: state[key] for key in needed}, strict=False)


def _verified(path: Path, expected_sha256: str, what: str) -> str:
    """The file's sha256, after checking that it is ``expected_sha256``."""
    if not path.is_file():
        raise UniregError(f"{what} not found; reinstall unireg or pass the file's path as weights", path=path)
    digest = sha256_file(path)
    if digest != expected_sha256:
        raise UniregError(
            f"sha256 {digest[:16]}... is not the {expected_sha256[:16]}... of {what}: the file "
            "is corrupted or a different file; reinstall unireg or restore the file",
            path=path,
        )
    return digest


# ---------------------------------------------------------------------------------------------
# torchvision's files: fetching, finding, the hash in the name
# ---------------------------------------------------------------------------------------------


def fetch_weights(name: str, dest_dir: str | Path | None = None) -> Path:
    """Download torchvision's ImageNet weights for ``name`` (``resnet18``, ``vgg16``).

    Saves ``WEIGHT_SOURCES[name].file_name`` into ``dest_dir`` (default: the torch hub cache,
    where :func:`unireg.features.build_extractor` looks) and checks the sha256 prefix; an existing file is
    kept. Returns the file's path. The only function here that touches the network.
    """
    if name not in WEIGHT_SOURCES:
        raise UniregError(
            f"no weights to fetch for {name!r}; fetchable: {', '.join(WEIGHT_SOURCES)} "
            f"({DEFAULT_EXTRACTOR} ships with unireg, mind and scratch have no weights)"
        )
    source = WEIGHT_SOURCES[name]
    folder = Path(dest_dir).expanduser() if dest_dir is not None else hub_checkpoint_dir()
    dest = folder / source.file_name
    if dest.is_file():
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(source.url, str(dest), hash_prefix=source.sha256_prefix)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise UniregError(
            f"could not download {source.url} ({reason}); download that file where there "
            f"is internet and place it here as {source.file_name} (folder {folder}), "
            f"or pass its path as weights",
            path=dest,
        ) from None
    except RuntimeError as err:  # download_url_to_file's hash check
        raise UniregError(
            f"the download of {source.url} failed its sha256 check ({err}); try again", path=dest
        ) from None
    return dest


def _torchvision_weights(name: str, weights: Path | None) -> Path:
    """The weight file for ``name``: ``weights`` if given, else torchvision's file in the hub cache."""
    if weights is not None:
        if not weights.is_file():
            raise UniregError(f"{name} weight file not found", path=weights)
        return weights
    source = WEIGHT_SOURCES[name]
    cached = hub_checkpoint_dir() / source.file_name
    if cached.is_file():
        return cached
    raise UniregError(
        f"feature extractor {name} needs torchvision's ImageNet weights {source.file_name}, "
        f"not found in {cached.parent}; run `unireg weights fetch {name}` (downloads "
        f"{source.url}) or pass the file's path as weights"
    )


def _check_torchvision_hash(name: str, path: Path) -> str:
    """The file's sha256; a file named like torchvision's must start with the hash its name carries.

    torchvision names each weight file after the first 8 hex digits of its sha256 (what
    ``torch.hub`` checks on download), so a corrupted or replaced ``resnet18-f37072fd.pth`` is
    caught before use; a file under another name is the user's own and is only recorded.
    """
    digest = sha256_file(path)
    source = WEIGHT_SOURCES[name]
    if path.name == source.file_name and not digest.startswith(source.sha256_prefix):
        raise UniregError(
            f"sha256 {digest[:16]}... does not start with {source.sha256_prefix}, the hash in "
            f"torchvision's file name: the file is corrupted or a different file; delete it and run "
            f"`unireg weights fetch {name}`, or copy it again",
            path=path,
        )
    return digest
