"""`python -m ranke install-profile`: put the shipped SLURM profile where Snakemake finds it.

`snakemake --profile slurm` resolves a bare name only in the current directory and in Snakemake's
user config directory (~/.config/snakemake, or $XDG_CONFIG_HOME/snakemake), never in
workflow/profiles/. This command copies workflow/profiles/slurm there. It never overwrites a
profile the user has edited unless asked to (--force), because that file holds site settings.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
from pathlib import Path

PROFILE_NAME = "slurm"
PROFILE_FILES = ("profile.yaml", "config.yaml")  # identical; Snakemake < 9.19 reads config.yaml


def shipped_profile_dir() -> Path:
    """workflow/profiles/slurm of the checkout this package runs from."""
    return Path(__file__).resolve().parents[1] / "workflow" / "profiles" / PROFILE_NAME


def snakemake_user_config_dir() -> Path:
    """The user directory Snakemake searches for profiles (same rule as Snakemake: platformdirs)."""
    try:
        from platformdirs import user_config_dir  # a Snakemake dependency
    except ImportError:  # pragma: no cover - Snakemake always brings platformdirs
        xdg = os.environ.get("XDG_CONFIG_HOME", "").strip()
        return Path(xdg or Path.home() / ".config") / "snakemake"
    return Path(user_config_dir("snakemake", "snakemake"))


def default_dest() -> Path:
    return snakemake_user_config_dir() / PROFILE_NAME


def install_profile(dest: str | os.PathLike | None = None, *, force: bool = False,
                    source: str | os.PathLike | None = None) -> Path:
    """Copy the profile files into `dest` (default: Snakemake's user profile dir) and return it.

    Raises FileExistsError when `dest` already holds a different version of a profile file and
    `force` is false, so that a site's edits are never lost silently.
    """
    src = Path(source) if source is not None else shipped_profile_dir()
    dest = Path(dest) if dest is not None else default_dest()
    missing = [name for name in PROFILE_FILES if not (src / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"SLURM profile not found: {', '.join(str(src / m) for m in missing)} "
            "(run from a RankE checkout, or pass --source)"
        )
    changed = [
        dest / name
        for name in PROFILE_FILES
        if (dest / name).exists() and not filecmp.cmp(src / name, dest / name, shallow=False)
    ]
    if changed and not force:
        raise FileExistsError(
            "a different profile is already installed: "
            + ", ".join(map(str, changed))
            + " (it may hold your site's settings; compare it with "
            + f"{src}, or pass --force to overwrite)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROFILE_FILES:
        tmp = dest / f".tmp-{name}"
        shutil.copyfile(src / name, tmp)
        os.replace(tmp, dest / name)
    return dest


def _usage_text(dest: Path) -> str:
    profile_arg = PROFILE_NAME if dest.resolve() == default_dest().resolve() else str(dest)
    return (
        f"installed the SLURM profile in {dest}\n"
        f"  edit the lines marked EDIT in {dest / 'profile.yaml'} (partition, account, jobs)\n"
        f"  and keep {dest / 'config.yaml'} identical (Snakemake < 9.19 reads that one)\n"
        "  round jobs (submitit) take their partition/account/GPUs from the study config:\n"
        "    cluster: {executor: slurm, slurm: {partition: ..., account: ..., gpus_per_node: ...}}\n"
        "run the workflow on SLURM with:\n"
        f"  snakemake --profile {profile_arg} --configfile <your study config>"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ranke install-profile",
        description="Install the SLURM profile so that `snakemake --profile slurm` finds it.",
    )
    parser.add_argument(
        "--dest",
        type=Path,
        default=None,
        help=f"target folder (default: {default_dest()}, where `--profile slurm` looks)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite a different installed profile")
    parser.add_argument(
        "--source", type=Path, default=None, help=f"profile folder to copy (default: {shipped_profile_dir()})"
    )
    args = parser.parse_args(argv)
    try:
        dest = install_profile(args.dest, force=args.force, source=args.source)
    except (FileExistsError, FileNotFoundError) as e:
        print(f"install-profile: {e}", file=sys.stderr)
        return 1
    print(_usage_text(dest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
