"""The conda route (`snakemake --sdm conda`): envs/ranke.yaml is self-contained and lists exactly
pyproject.toml's dependencies. Building it needs conda-forge (bench/conda_env.sh)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", requirement.strip()).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def test_conda_env_is_self_contained_and_matches_pyproject():
    env = yaml.safe_load((REPO / "envs" / "ranke.yaml").read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]  # not the deprecated pytorch channel
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                # Snakemake copies the file into .snakemake/conda/: no references to other files
                assert not line.startswith(("-r", "-e", ".", "/")), line
                name, spec = _split(line)
                pip[name] = spec
        elif dep not in ("pip",) and not dep.startswith("python="):
            name, spec = _split(dep)
            conda[CONDA_NAMES.get(name, name)] = spec
    listed = {**conda, **pip}
    project = dict(_split(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    assert listed == project
    # the rules point at it
    assert 'CONDA_ENV = "../../envs/ranke.yaml"' in (REPO / "workflow" / "rules" / "common.smk").read_text()
