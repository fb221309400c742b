"""Every workflow rule's conda env lists the third-party packages its unireg code imports."""

import argparse
import ast
import inspect
import re
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from unireg.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "unireg"
# import name -> conda/pip package name where they differ
DISTRIBUTION = {
    "torch": "pytorch",
    "yaml": "pyyaml",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "PIL": "pillow",
}


def _rules():
    """(rule name, env file, CLI words) for every rule that runs the unireg CLI: a batch rule's are
    those of the verb it runs for each member (``unireg batch ... -- VERB``)."""
    found = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for block in re.split(r"\n(?=(?:rule|checkpoint) \w+:)", text):
            head = re.match(r"(?:rule|checkpoint) (\w+):", block.strip())
            shell = re.search(r"\{params\.unireg\} (?:batch \{params\.options\} -- )?((?:[a-z]+ ?)+)", block)
            if not head or not shell:
                continue
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            found.append((head.group(1), env and (smk.parent / env.group(1)).resolve(), shell.group(1).split()))
    return found


def _imports(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(third-party top-level names, unireg module names) imported anywhere in ``tree``."""
    external, internal = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (internal if alias.name.startswith("unireg") else external).add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0:
                if node.module:
                    internal.add(node.module.split(".")[0])
                else:
                    internal.update(alias.name for alias in node.names)
            elif node.module:
                (internal if node.module.startswith("unireg") else external).add(node.module.split(".")[0])
    internal = {m.replace("unireg.", "") for m in internal if m != "unireg"}
    return external - set(sys.stdlib_module_names) - {"__future__"}, internal


def _run_function(words: list[str]) -> ast.AST:
    """The parsed run function of ``unireg WORDS`` (the ``func`` its verb module in unireg/cli/ sets)."""
    parser = build_parser()
    for word in words:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    func = parser.get_default("func")
    assert func is not None, f"no run function in unireg/cli/ for 'unireg {' '.join(words)}'"
    return ast.parse(textwrap.dedent(inspect.getsource(func)))


def _needed_packages(words: list[str]) -> set[str]:
    external, todo = _imports(_run_function(words))
    seen = set()
    while todo:
        module = todo.pop()
        if module in seen or not (PACKAGE / f"{module}.py").is_file():
            continue
        seen.add(module)
        ext, internal = _imports(ast.parse((PACKAGE / f"{module}.py").read_text()))
        external |= ext
        todo |= internal - seen
    return {DISTRIBUTION.get(name, name).lower() for name in external}


def _env_packages(path: Path) -> set[str]:
    spec = yaml.safe_load(path.read_text())
    names = set()
    for dep in spec["dependencies"]:
        for item in dep["pip"] if isinstance(dep, dict) else [dep]:
            names.add(re.split(r"[=<>! \[]", item.strip())[0].lower())
    return names


RULES = _rules()


def test_every_rule_has_an_env_and_calls_the_cli():
    names = {name for name, _, _ in RULES}
    assert {"index", "convert", "preprocess", "register", "propagate", "metrics", "report"} <= names
    for name, env, _ in RULES:
        assert env is not None and env.is_file(), f"rule {name} has no conda env file"


def test_batch_needs_no_third_party_package():
    """`unireg batch` runs in every per-subject rule's env, and the Snakefile imports unireg.batch."""
    assert _needed_packages(["batch"]) == set()
    assert sum(1 for _, _, words in RULES if words[0] in ("convert", "preprocess", "register", "segment")) == 4


@pytest.mark.parametrize("name,env,words", RULES, ids=[r[0] for r in RULES])
def test_rule_env_has_every_package_its_code_imports(name, env, words):
    missing = _needed_packages(words) - _env_packages(env)
    assert not missing, f"rule {name} ({' '.join(words)}) imports {sorted(missing)} but {env.name} lacks them"


def test_envs_pin_python_and_use_conda_forge():
    for path in sorted((REPO / "envs").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        assert "conda-forge" in spec["channels"], path.name
        assert any(str(d).startswith("python=") for d in spec["dependencies"]), path.name


# conda-forge name -> the distribution installed in the tested environment
TESTED_AS = {"pytorch": "torch", "pyyaml": "PyYAML"}


def _pins(path: Path) -> list[tuple[str, str]]:
    """(conda name, version) of every ``name=version`` dependency (pip lines: ``name==version``)."""
    spec = yaml.safe_load(path.read_text())
    pins = []
    for dep in spec["dependencies"]:
        for item in dep["pip"] if isinstance(dep, dict) else [dep]:
            if m := re.fullmatch(r"([A-Za-z0-9_.\-]+)==?([0-9][^=]*)(=.*)?", item.strip()):
                pins.append((m.group(1).lower(), m.group(2)))
    return pins


@pytest.mark.parametrize("path", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_envs_pin_the_versions_the_tests_run_with(path):
    from importlib.metadata import PackageNotFoundError, version

    unpinned = [
        d
        for d in yaml.safe_load(path.read_text())["dependencies"]
        if isinstance(d, str) and not re.search(r"=\d", d) and d != "pip"
    ]
    assert not unpinned, f"{path.name}: unpinned {unpinned}"
    for name, pinned in _pins(path):
        if name == "python":
            assert f"{sys.version_info.major}.{sys.version_info.minor}" == pinned, path.name
            continue
        try:
            tested = version(TESTED_AS.get(name, name)).split("+")[0]
        except PackageNotFoundError:
            pytest.fail(f"{path.name}: {name} is pinned but not installed in the tested environment")
        assert tested == pinned, f"{path.name}: {name}={pinned}, but the tests run with {tested}"
