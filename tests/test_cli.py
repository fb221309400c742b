"""The command line: every verb answers --help, and every option vocabulary has one source
(unireg.defaults) that the CLI, the modules, the workflow's config schema and config agree with."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from unireg import cli, defaults
from unireg.cli import build_parser, main
from unireg.layout import SUBJECT_PATTERN

REPO = Path(__file__).resolve().parents[1]
VERBS = [
    "preprocess",
    "atlas prepare",
    "atlas import",
    "atlas import-set",
    "index",
    "convert",
    "demo",
    "train",
    "register",
    "segment",
    "propagate",
    "metrics",
    "report",
    "batch",
    "weights fetch",
    "weights list",
]


def _subparser(parser: argparse.ArgumentParser, path: str) -> argparse.ArgumentParser:
    for name in path.split():
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_answers_help(verb, capsys):
    with pytest.raises(SystemExit) as done:
        main([*verb.split(), "--help"])
    assert done.value.code == 0 and "usage: unireg " + verb in capsys.readouterr().out


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[str, argparse.ArgumentParser]:
    """Every runnable verb ('atlas prepare', 'index', ...) and its parser."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        return {" ".join(path): parser}
    return {
        verb: leaf for name, sub in subparsers[0].choices.items() for verb, leaf in _leaves(sub, (*path, name)).items()
    }


def test_build_parser_lists_every_verb_each_with_a_run_function():
    leaves = _leaves(build_parser())
    assert sorted(leaves) == sorted(VERBS)
    for verb, parser in leaves.items():
        assert callable(parser.get_default("func")), verb


def test_every_verb_module_registers_exactly_one_top_level_verb():
    modules = {path.stem for path in (REPO / "unireg" / "cli").glob("*.py") if not path.stem.startswith("_")}
    assert {m.__name__.rsplit(".", 1)[1] for m in cli.VERB_MODULES} == modules  # none forgotten
    registered = []
    for module in cli.VERB_MODULES:
        verbs = argparse.ArgumentParser().add_subparsers()
        module.add_parser(verbs)
        assert len(verbs.choices) == 1, module.__name__
        registered += list(verbs.choices)
    assert registered == list(dict.fromkeys(v.split()[0] for v in VERBS))  # in the order of `unireg --help`


def test_propagate_and_help_do_not_import_torch(tmp_path):
    """`unireg propagate` runs in an env without torch; `unireg --help` stays fast (no numpy either)."""
    import numpy as np

    from unireg.io import Image, save_image, write_affine_txt, write_label_table

    labels = np.zeros((8, 8, 8), np.int16)
    labels[2:6, 2:6, 2:6] = 1
    save_image(Image(labels, np.eye(4), is_label=True), tmp_path / "atlas_labels.nii.gz")
    save_image(Image(np.zeros((10, 9, 8), np.float32), np.eye(4)), tmp_path / "native.nii.gz")
    write_affine_txt(tmp_path / "affine.txt", np.eye(4))
    write_label_table(tmp_path / "table.tsv", {1: "blob"})
    argv = [
        "propagate",
        "--atlas-labels",
        str(tmp_path / "atlas_labels.nii.gz"),
        "--native",
        str(tmp_path / "native.nii.gz"),
        "--affine",
        str(tmp_path / "affine.txt"),
        "--table",
        str(tmp_path / "table.tsv"),
        "--out",
        str(tmp_path / "sub-x_dseg.nii.gz"),
        "--subject",
        "x",
    ]
    code = f"""
import sys
import unireg.cli
for help_argv in (["--help"], ["propagate", "--help"]):
    try:
        unireg.cli.main(help_argv)
    except SystemExit as done:
        assert done.code == 0
assert "torch" not in sys.modules and "numpy" not in sys.modules, "--help imported numpy or torch"
assert unireg.cli.main({argv!r}) == 0
assert "torch" not in sys.modules, "unireg propagate imported torch"
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"unireg propagate: wrote {tmp_path / 'sub-x_dseg.nii.gz'} (1 labels)")
    assert (tmp_path / "sub-x_dseg.tsv").is_file()


@pytest.mark.parametrize("module", ["unireg", "unireg.cli"])
def test_python_m_version(module):
    from unireg import __version__

    proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"unireg {__version__}"


def test_console_script_entry_point_is_main():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["unireg"].split(":")
    assert getattr(importlib.import_module(module), func) is main


def test_a_unireg_error_is_one_line_on_stderr_and_exit_1(tmp_path, capsys):
    missing = tmp_path / "atlas_labels.nii.gz"
    assert (
        main(
            [
                "propagate",
                "--native",
                str(tmp_path / "native.nii.gz"),
                "--affine",
                str(tmp_path / "affine.txt"),
                "--atlas-labels",
                str(missing),
                "--out",
                str(tmp_path / "out.nii.gz"),
            ]
        )
        == 1
    )
    assert capsys.readouterr().err == f"unireg: {missing}: file not found\n"


def test_top_level_help_lists_every_verb():
    out = subprocess.run([sys.executable, "-m", "unireg", "--help"], capture_output=True, text=True, check=True).stdout
    for verb in {v.split()[0] for v in VERBS}:
        assert verb in out


@pytest.mark.parametrize(
    "verb, flag, choices, default",
    [
        ("preprocess", "--similarity", defaults.AFFINE_SIMILARITIES, defaults.AFFINE_SIMILARITY),
        ("preprocess", "--nonfinite", defaults.NONFINITE_POLICIES, defaults.NONFINITE_POLICY),
        ("register", "--instance-opt-similarity", defaults.INSTANCE_OPT_SIMILARITIES, defaults.INSTANCE_OPT_SIMILARITY),
        ("register", "--instance-opt", None, defaults.INSTANCE_OPT_STEPS),
        ("register", "--device", None, defaults.DEVICE),
        ("register", "--network-grid", defaults.NETWORK_GRIDS, defaults.NETWORK_GRID),
        ("register", "--mirror", None, defaults.MIRROR),
        ("segment", "--mirror", None, defaults.MIRROR),
        ("atlas prepare", "--name", defaults.BUILTIN_ATLASES, defaults.DEFAULT_ATLAS),
        ("preprocess", "--atlas", None, defaults.DEFAULT_ATLAS),
        ("propagate", "--atlas", None, defaults.DEFAULT_ATLAS),
    ],
)
def test_cli_choices_and_defaults_come_from_defaults(verb, flag, choices, default):
    action = _option(_subparser(build_parser(), verb), flag)
    assert action.default == default
    assert (tuple(action.choices) if action.choices is not None else None) == choices


def test_modules_check_against_the_same_vocabularies():
    from unireg import affine, atlas, intensity, layout, losses

    assert affine.SIMILARITIES is defaults.AFFINE_SIMILARITIES
    assert intensity.NONFINITE_POLICIES is defaults.NONFINITE_POLICIES
    assert losses.SIMILARITIES is defaults.INSTANCE_OPT_SIMILARITIES
    assert atlas.BUILTIN_ATLASES is defaults.BUILTIN_ATLASES
    assert tuple(layout.BUILTIN_ATLASES) == defaults.BUILTIN_ATLASES  # each built-in's BIDS space and label set


def test_config_schema_and_shipped_config_agree_with_the_package():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert tuple(schema["preprocess"]["properties"]["similarity"]["enum"]) == defaults.AFFINE_SIMILARITIES
    register = schema["register"]["properties"]
    assert tuple(register["instance_opt_similarity"]["enum"]) == defaults.INSTANCE_OPT_SIMILARITIES
    assert register["instance_opt_similarity"]["default"] == defaults.INSTANCE_OPT_SIMILARITY
    assert tuple(register["device"]["enum"]) == defaults.DEVICES
    assert tuple(register["network_grid"]["enum"]) == defaults.NETWORK_GRIDS
    assert register["network_grid"]["default"] == config["register"]["network_grid"] == defaults.NETWORK_GRID
    assert register["mirror"]["default"] == config["register"]["mirror"] == defaults.MIRROR
    assert schema["subjects"]["items"]["pattern"] == f"^{SUBJECT_PATTERN}$"
    assert tuple(schema["atlas"]["examples"]) == defaults.BUILTIN_ATLASES
    assert schema["atlas"]["default"] == defaults.DEFAULT_ATLAS
    # the shipped configuration is the package's defaults
    assert config["atlas"] == defaults.DEFAULT_ATLAS
    assert config["preprocess"]["similarity"] == defaults.AFFINE_SIMILARITY
    assert config["register"]["instance_opt"] == defaults.INSTANCE_OPT_STEPS
    assert config["register"]["instance_opt_similarity"] == defaults.INSTANCE_OPT_SIMILARITY
    assert config["register"]["device"] == defaults.DEVICE
    assert config["atlas_set"]["fusion"] == defaults.FUSION and schema["atlas_set"]["properties"]["fusion"][
        "enum"
    ] == list(defaults.FUSIONS)


def test_each_memory_request_has_one_place():
    """A rule that sets mem_mb is not overridden by the SLURM profile (it would be, silently)."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    checked = []
    for rule_file in (REPO / "workflow" / "rules").glob("*.smk"):
        text = rule_file.read_text()
        for rule in [
            line.split()[1].rstrip(":") for line in text.splitlines() if line.startswith(("rule ", "checkpoint "))
        ]:
            block = text.split(f"{rule}:", 1)[1].split("\nrule ", 1)[0]
            if "mem_mb=" in block:
                assert "mem_mb" not in (profile.get("set-resources", {}).get(rule) or {}), rule
                checked.append(rule)
    assert sorted(checked) == ["preprocess", "register", "segment"]
