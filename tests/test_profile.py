"""The shipped SLURM profile and `python -m ranke install-profile` (no cluster needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ranke.profile import PROFILE_FILES, install_profile, shipped_profile_dir

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = VENV_BIN / "snakemake"

TOY_SNAKEFILE = """
rule all:
    input: "b.txt"

rule a:
    output: "a.txt"
    shell: "touch {output}"

rule b:
    input: "a.txt"
    output: "b.txt"
    resources: runtime=7, mem_mb=123
    shell: "touch {output}"
"""


def _env(xdg: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(xdg)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    return env


def _install_cli(xdg: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ranke", "install-profile", *args],
        env=_env(xdg),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_shipped_profile_files_are_identical_and_complete():
    src = shipped_profile_dir()
    assert src == REPO / "workflow" / "profiles" / "slurm"
    texts = [(src / name).read_bytes() for name in PROFILE_FILES]
    assert texts[0] == texts[1], "profile.yaml and config.yaml must stay identical"
    profile = yaml.safe_load(texts[0])
    assert profile["executor"] == "slurm"
    assert int(profile["jobs"]) >= 1
    assert set(profile["default-resources"]) >= {"slurm_partition", "slurm_account", "runtime", "mem_mb"}
    # the plugin's default of 40 s before the first status check makes short jobs idle for that long
    assert 1 <= int(profile["slurm-init-seconds-before-status-checks"]) <= 10  # not the 40 s default
    assert int(profile["retries"]) == 1  # a job that died with its node gets one more attempt


def test_install_profile_writes_into_xdg_config_home(tmp_path):
    xdg = tmp_path / "xdg"
    proc = _install_cli(xdg, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    dest = xdg / "snakemake" / "slurm"
    for name in PROFILE_FILES:
        assert (dest / name).read_bytes() == (shipped_profile_dir() / name).read_bytes()
    assert "snakemake --profile slurm" in proc.stdout
    # installing the same profile again is fine (idempotent)
    assert _install_cli(xdg, cwd=tmp_path).returncode == 0


def test_install_profile_keeps_edited_profile_unless_forced(tmp_path):
    dest = tmp_path / "profiles" / "slurm"
    install_profile(dest)
    edited = (dest / "profile.yaml").read_text().replace('slurm_partition: ""', "slurm_partition: gpu")
    (dest / "profile.yaml").write_text(edited)
    with pytest.raises(FileExistsError, match="--force"):
        install_profile(dest)
    assert (dest / "profile.yaml").read_text() == edited
    proc = _install_cli(tmp_path / "xdg", "--dest", str(dest), cwd=tmp_path)
    assert proc.returncode == 1 and "--force" in proc.stderr
    proc = _install_cli(tmp_path / "xdg", "--dest", str(dest), "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "profile.yaml").read_bytes() == (shipped_profile_dir() / "profile.yaml").read_bytes()
    # a --dest outside Snakemake's search path is used by path
    assert f"snakemake --profile {dest}" in proc.stdout


def test_install_profile_names_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="profile.yaml"):
        install_profile(tmp_path / "dest", source=tmp_path / "nowhere")


def _dry_run(workdir: Path, xdg: Path, profile: str) -> str:
    proc = subprocess.run(
        [str(SNAKEMAKE), "--profile", profile, "-n"],
        cwd=workdir,
        env=_env(xdg),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def test_snakemake_profile_lookup(tmp_path, monkeypatch):
    """Snakemake's own lookup: the bare name resolves only once installed; a path always does."""
    from snakemake.cli import get_profile_dir

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert get_profile_dir("slurm") is None
    install_profile()
    found_dir, found_file = get_profile_dir("slurm")
    assert found_dir == tmp_path / "xdg" / "snakemake" / "slurm"
    assert found_file.name in PROFILE_FILES
    found_dir, _ = get_profile_dir(str(shipped_profile_dir()))
    assert found_dir == shipped_profile_dir()


def test_snakemake_profile_slurm_dry_run(tmp_path):
    """`snakemake --profile slurm` (the README's command) reads the installed profile."""
    workdir = tmp_path / "wf"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(TOY_SNAKEFILE)
    xdg = tmp_path / "xdg"
    assert _install_cli(xdg, cwd=tmp_path).returncode == 0
    res = _resources_by_rule(_dry_run(workdir, xdg, "slurm"))
    # default resources from the profile reach a rule without its own ...
    assert res["a"]["runtime"] == "60" and res["a"]["mem_mb"] == "4000"
    assert res["a"]["slurm_partition"] == "" and res["a"]["slurm_account"] == ""
    # ... and a rule's own resources win over them
    assert res["b"]["runtime"] == "7" and res["b"]["mem_mb"] == "123"


def _resources_by_rule(dry_run_output: str) -> dict[str, dict[str, str]]:
    """{rule: {resource: value}} from the `rule X:` / `resources: k=v, ...` lines of a dry run."""
    out: dict[str, dict[str, str]] = {}
    rule = None
    for line in dry_run_output.splitlines():
        stripped = line.strip()
        if line.startswith("rule ") and stripped.endswith(":"):
            rule = stripped[len("rule "):-1]
        elif rule and stripped.startswith("resources:"):
            items = stripped[len("resources:"):].split(", ")
            out[rule] = dict(item.strip().split("=", 1) for item in items)
    return out
