"""``unireg weights fetch`` / ``unireg weights list``: ImageNet weights of the feature extractors."""

from __future__ import annotations

from ._common import add_actions


def add_parser(verbs) -> None:
    actions = add_actions(verbs, "weights", "ImageNet weights of the feature extractors")
    p = actions.add_parser("fetch", help="download torchvision ImageNet weights (hash-checked) into the hub cache")
    p.add_argument("name", choices=["resnet18", "vgg16"])
    p.add_argument("--dest", help="folder (default: $TORCH_HOME/hub/checkpoints)")
    p.set_defaults(func=run_fetch)
    p = actions.add_parser("list", help="where each extractor's weights are looked for")
    p.set_defaults(func=run_list)


def run_fetch(args) -> None:
    from ..weights import fetch_weights

    path = fetch_weights(args.name, args.dest)
    print(f"unireg weights fetch: {path}")


def run_list(args) -> None:
    from ..features import EXTRACTORS
    from ..weights import WEIGHT_SOURCES, hub_checkpoint_dir

    for name in EXTRACTORS:
        source = WEIGHT_SOURCES.get(name)
        where = f"{hub_checkpoint_dir() / source.file_name}" if source else "packaged / none needed"
        print(f"{name:18s} {where}")
