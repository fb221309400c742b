"""The command line: every verb answers --help, and every option vocabulary has one source
(unireg.defaults) that the CLI, the modules, the workflow's config schema and config agree with."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from unireg import defaults
from unireg.cli import build_parser, main
from unireg.layout import SUBJECT_PATTERN

REPO = Path(__file__).resolve().parents[1]
VERBS = ["preprocess", "atlas prepare", "atlas import", "index", "convert", "demo", "train", "register",
         "propagate", "metrics", "report", "weights fetch", "weights list"]


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


def test_top_level_help_lists_every_verb():
    out = subprocess.run([sys.executable, "-m", "unireg", "--help"], capture_output=True, text=True, check=True).stdout
    for verb in {v.split()[0] for v in VERBS}:
        assert verb in out


@pytest.mark.parametrize("verb, flag, choices, default", [
    ("preprocess", "--similarity", defaults.AFFINE_SIMILARITIES, defaults.AFFINE_SIMILARITY),
    ("preprocess", "--nonfinite", defaults.NONFINITE_POLICIES, defaults.NONFINITE_POLICY),
    ("register", "--instance-opt-similarity", defaults.INSTANCE_OPT_SIMILARITIES, defaults.INSTANCE_OPT_SIMILARITY),
    ("register", "--instance-opt", None, defaults.INSTANCE_OPT_STEPS),
    ("register", "--device", None, defaults.DEVICE),
])
def test_cli_choices_and_defaults_come_from_defaults(verb, flag, choices, default):
    action = _option(_subparser(build_parser(), verb), flag)
    assert action.default == default
    assert (tuple(action.choices) if action.choices is not None else None) == choices


def test_modules_check_against_the_same_vocabularies():
    from unireg import affine, intensity, losses
    assert affine.SIMILARITIES is defaults.AFFINE_SIMILARITIES
    assert intensity.NONFINITE_POLICIES is defaults.NONFINITE_POLICIES
    assert losses.SIMILARITIES is defaults.INSTANCE_OPT_SIMILARITIES


def test_config_schema_and_shipped_config_agree_with_the_package():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert tuple(schema["preprocess"]["properties"]["similarity"]["enum"]) == defaults.AFFINE_SIMILARITIES
    register = schema["register"]["properties"]
    assert tuple(register["instance_opt_similarity"]["enum"]) == defaults.INSTANCE_OPT_SIMILARITIES
    assert register["instance_opt_similarity"]["default"] == defaults.INSTANCE_OPT_SIMILARITY
    assert tuple(register["device"]["enum"]) == defaults.DEVICES
    assert schema["subjects"]["items"]["pattern"] == f"^{SUBJECT_PATTERN}$"
    # the shipped configuration is the package's defaults
    assert config["preprocess"]["similarity"] == defaults.AFFINE_SIMILARITY
    assert config["register"]["instance_opt"] == defaults.INSTANCE_OPT_STEPS
    assert config["register"]["instance_opt_similarity"] == defaults.INSTANCE_OPT_SIMILARITY
    assert config["register"]["device"] == defaults.DEVICE


def test_each_memory_request_has_one_place():
    """A rule that sets mem_mb is not overridden by the SLURM profile (it would be, silently)."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    checked = []
    for rule_file in (REPO / "workflow" / "rules").glob("*.smk"):
        text = rule_file.read_text()
        for rule in [line.split()[1].rstrip(":") for line in text.splitlines()
                     if line.startswith(("rule ", "checkpoint "))]:
            block = text.split(f"{rule}:", 1)[1].split("\nrule ", 1)[0]
            if "mem_mb=" in block:
                assert "mem_mb" not in (profile.get("set-resources", {}).get(rule) or {}), rule
                checked.append(rule)
    assert sorted(checked) == ["preprocess", "register"]
