"""Packaging: one version source, honest dependencies, licence and type marker, and (slow) an sdist that builds,
installs with pip into a fresh virtual environment and imports from there."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mdm_sched"
# import name -> distribution name, where they differ
_DIST = {"huggingface_hub": "huggingface_hub", "yaml": "pyyaml"}


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower().replace("-", "_") for r in requirements}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported anywhere in the package that are neither stdlib nor mdm_sched -> files."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top != "mdm_sched":
                    found.setdefault(top, set()).add(path.name)
    return found


def test_dependencies_are_what_the_package_imports():
    project = _pyproject()["project"]
    core = _names(project["dependencies"])
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items()}
    imported = {_DIST.get(m, m).lower() for m in _third_party_imports()}
    optional = {"diffusers", "lm_eval"}  # imported only by optional modules, each declared as an extra
    assert imported - optional <= core, f"imported but not declared: {sorted(imported - optional - core)}"
    assert core <= imported, f"declared but never imported: {sorted(core - imported)}"
    assert "diffusers" in extras["diffusers"] and "lm_eval" in extras["lm-eval"] and not optional & core


def test_one_version_source_licence_and_type_marker():
    import mdm_sched

    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mdm_sched.__version__"}
    assert mdm_sched.__version__.count(".") == 2
    assert project["license"] == "MIT" and "MIT License" in (ROOT / "LICENSE").read_text()
    assert (PACKAGE / "py.typed").is_file() and (ROOT / "CHANGELOG.md").is_file()
    for doc in ("theory.md", "generation.md", "assets.md"):
        assert f"docs/{doc}" in (ROOT / "README.md").read_text(), doc


def _copy_sources(dst: Path) -> Path:
    skip = shutil.ignore_patterns(".git", ".venv", "runs", "out", "build", "dist", "__pycache__", ".pytest_cache",
                                  ".ruff_cache", "*.egg-info")
    shutil.copytree(ROOT, dst, ignore=skip)
    return dst


@pytest.mark.slow
def test_sdist_builds_installs_into_a_fresh_venv_and_imports(tmp_path):
    """Build the sdist (setuptools' PEP 517 hook, no isolation: offline), pip-install it with --no-deps into a new venv
    that sees this environment's packages only through a .pth line after its own, then import from there."""
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 (pyproject's build requirement)")
    src = _copy_sources(tmp_path / "src")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    out = subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; print(b.build_sdist('dist'))"],
                         cwd=src, env=env, capture_output=True, text=True, check=True)
    sdist = src / "dist" / out.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        pkg_info = tar.extractfile(f"{sdist.name[:-len('.tar.gz')]}/PKG-INFO").read().decode()
    import mdm_sched

    assert {"LICENSE", "CHANGELOG.md", "docs/theory.md", "mdm_sched/py.typed", "pyproject.toml"} <= names
    assert f"Version: {mdm_sched.__version__}" in pkg_info and "License-Expression: MIT" in pkg_info
    assert "safetensors" not in pkg_info and "Provides-Extra: diffusers" in pkg_info

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, pip, setuptools: no download
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--ignore-installed",
                    "--no-cache-dir", "-q", str(sdist)], cwd=tmp_path, env=env, check=True, capture_output=True)
    check = ("import mdm_sched as ms, importlib.metadata as md, pathlib; "
             "print(ms.__file__); print(md.version('mdm_sched')); "
             "print(pathlib.Path(ms.__file__).with_name('py.typed').is_file()); "
             "print(ms.schedules.optimal([3.0, 2.0, 1.5, 1.4], steps=2).sizes)")
    lines = subprocess.run([python, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert lines[0].startswith(str(site)), lines  # imported from the fresh venv, not from the source tree
    expected = str(mdm_sched.schedules.optimal([3.0, 2.0, 1.5, 1.4], steps=2).sizes)
    assert lines[1] == mdm_sched.__version__ and lines[2] == "True" and lines[3] == expected
    version = subprocess.run([env_dir / "bin" / "mdm-sched", "--version"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, check=True).stdout
    assert mdm_sched.__version__ in version
