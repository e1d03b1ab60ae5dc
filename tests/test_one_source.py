"""Each fact has one definition; everything that repeats it is checked against it here: the
hardened `docker run` flags (mk/container.mk), the package's imports against its declared
dependencies, and the schema's target platforms and TPC versions against the installed MCT's."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata

import pytest
from conftest import ROOT
from container_support import hardened_flags

from mctq_job import config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def joined_lines(text: str) -> str:
    """Shell text with backslash continuations joined and spaces collapsed."""
    return re.sub(r"\s+", " ", text.replace("\\\n", " "))


def test_the_ci_example_and_the_docs_use_the_hardened_flags_of_the_makefile():
    """The worked CI script and the documented `docker run` line carry every hardened flag."""
    flags = " ".join(hardened_flags())
    assert "--read-only" in flags and "--network none" in flags
    script = joined_lines((ROOT / "examples" / "ci" / "quantize-and-gate.sh").read_text())
    runs = [line for line in script.split('"$docker" run')[1:]]
    assert runs and all(all(flag in run for flag in _pairs(flags)) for run in runs)
    documented = [
        run
        for doc in DOCS
        for run in joined_lines(doc.read_text()).split("docker run")[1:]
        if "--read-only" in run.split("mctq-job")[0]
    ]
    assert documented, "no hardened docker run line in README.md or docs/"
    for run in documented:
        assert all(flag in run for flag in _pairs(flags)), run[:300]


def _pairs(flags: str) -> list[str]:
    """'--network none --read-only' -> ['--network none', '--read-only']."""
    return [m.strip() for m in re.findall(r"--\S+(?: [^-\s]\S*)?", flags)]


def _imported_top_level_modules() -> set[str]:
    found = set()
    for path in (ROOT / "mctq_job").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"mctq_job"}


def test_every_package_the_job_imports_is_a_declared_dependency():
    """A module imported by mctq_job/ must come from a distribution pyproject.toml declares."""
    declared = {
        re.split(r"[<>=\[ ;]", dep)[0].lower().replace("_", "-")
        for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    distributions = metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_imported_top_level_modules()):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & declared:
            undeclared[module] = sorted(names)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def mcts_choices(what: str, **call: str) -> set[str]:
    """The devices or versions MCT lists when asked for one it does not have."""
    import model_compression_toolkit as mct

    with pytest.raises(AssertionError) as refused:
        mct.get_target_platform_capabilities(**call)
    listed = re.search(rf"Available {what} are: ([^.]+(?:\.\d+[^.]*)*)\. ", str(refused.value))
    assert listed, str(refused.value)
    return {item.strip() for item in listed.group(1).split(",")}


@pytest.mark.slow
def test_the_schemas_platforms_and_versions_are_the_ones_mct_has():
    """What `mctq-job schema` offers and validate accepts, against what the installed MCT lists
    (its refusal of an unknown device or version names them): an MCT upgrade that adds or
    drops a target platform or TPC version fails here until config.TPC_VERSIONS follows."""
    schema = config.json_schema()["properties"]
    platforms = set(schema["target_platform"]["enum"])
    assert platforms == mcts_choices("devices", device_type="no-such-device")
    for platform in platforms:
        offered = set(config.TPC_VERSIONS[platform])
        assert offered == mcts_choices("versions", device_type=platform, tpc_version="0.0"), platform
        assert offered <= set(schema["target_platform_version"]["enum"])
