"""Each fact has one definition; everything that repeats it is checked against it here: the
hardened `docker run` flags (mk/container.mk), the package's imports against its declared
dependencies, and the schema's choices against the tuples they are built from."""

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


@pytest.mark.parametrize(
    "field,values",
    [
        ("target_platform", config.TARGET_PLATFORMS),
        ("target_platform_version", config.ALL_TPC_VERSIONS),
        ("export_format", config.EXPORT_FORMATS),
        ("quantized_io", config.QUANTIZED_IO),
    ],
)
def test_the_schemas_choices_are_the_tuples_they_are_built_from(field, values):
    """The JSON Schema (what `mctq-job schema` prints and validate enforces) offers exactly these."""
    assert tuple(config.json_schema()["properties"][field]["enum"]) == tuple(values)
