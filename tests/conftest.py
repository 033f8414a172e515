"""Shared test helpers: the vendored golden fixtures directory and the seeded-weights recipe."""

from __future__ import annotations

import math
import os
import sys
import zlib
from pathlib import Path

import pytest
import torch

# One intra-op thread by default: on the shared 2-core machine, 2 OpenMP threads spin against
# other processes and made the model tests 4x slower (48 s vs 11.5 s measured); RANKE_TEST_THREADS
# overrides it (e.g. 2 on an idle machine).
torch.set_num_threads(int(os.environ.get("RANKE_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests run against the checkout even when ranke is not installed
    sys.path.insert(0, str(REPO))


FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The golden fixtures vendored in tests/fixtures (see their README.md files). They are part of
    the repository: a missing one is an error, never a skip."""
    if not (FIXTURES / "llamagen" / "golden_gpt_t2i.pt").is_file():
        raise FileNotFoundError(f"golden fixtures missing from {FIXTURES} (they are committed with the tests)")
    return FIXTURES


def seeded_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The golden files' weights: each float entry seeded from crc32 of its key (fixture README)."""
    out = {}
    for k, t in model.state_dict().items():
        if not t.is_floating_point():
            out[k] = t
            continue
        if k.endswith("codebook_used"):
            out[k] = torch.zeros_like(t)
            continue
        shape = tuple(t.shape)
        g = torch.Generator().manual_seed(zlib.crc32(k.encode()) & 0x7FFFFFFF)
        v = torch.randn(shape, generator=g, dtype=torch.float32)
        if len(shape) >= 2:
            v = v / math.sqrt(math.prod(shape[1:]))
        elif k.endswith("weight"):
            v = 1 + 0.1 * v
        else:
            v = 0.1 * v
        out[k] = v
    return out


def tiny_open_clip_reward(tmp_path: Path) -> dict:
    """An `assets.reward` block for a tiny random open_clip model written under tmp_path (8 px
    images, 12-token context)."""
    import json

    from ranke.models.clip import create_clip

    torch.manual_seed(0)
    name = "ranke-tiny-test-clip"
    arch = {"embed_dim": 8,
            "vision_cfg": {"image_size": 8, "layers": 1, "width": 16, "patch_size": 4, "head_width": 8},
            "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / f"{name}.json").write_text(json.dumps(arch))
    model = create_clip(name, config=tmp_path / f"{name}.json")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    return {"kind": "open_clip", "model": name, "config": str(tmp_path / f"{name}.json"),
            "weights": str(tmp_path / "w.pt"), "quick_gelu": False, "prompt_prefix": ""}


# ----------------------------------------------------------------------------------------------
# One local run of the tiny demo DAG per test session, shared by tests/test_pipeline.py (what
# users rely on: restart, no-op rerun, single-stage rerun) and tests/test_slurm.py (the reference
# a SLURM run must equal). It is interrupted once after the tokens exist and restarted, so the
# run itself proves that an interrupted study continues where it stopped.

TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"),
            "--directory", str(workdir), *args]


def snakemake_env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture(scope="session")
def tiny_local_study(tmp_path_factory):
    import signal
    import subprocess
    import time

    work = tmp_path_factory.mktemp("tiny_study")
    cmd = snakemake_cmd(work, "--cores", "2", "--configfile", str(TINY_CONFIG))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=snakemake_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    tokens = work / "resources" / "demo" / "tokens" / "train.parquet"  # the demo world's tokens

    def base_policy_trained() -> bool:
        # Snakemake's own record, not the file: a job killed after writing its output but before
        # Snakemake registered it is rightly treated as incomplete and its output removed.
        logs = sorted((work / ".snakemake" / "log").glob("*.snakemake.log"))
        return bool(logs) and "(Rule: demo_gpt)" in logs[-1].read_text(errors="ignore")

    killed = False
    try:
        while not base_policy_trained() and proc.poll() is None and time.monotonic() - t0 < 900:
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Snakemake 9 deadlocks when the signal lands while it selects jobs: its handler
            # (JobScheduler.exit_gracefully) takes the scheduler's lock, which the interrupted job
            # selection holds (seen once in CI, with the ILP solver running). A user would kill it
            # too; the restart then has to unlock the directory and redo what was incomplete.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            killed = True
    interrupted = tokens.exists()
    tokens_mtime = tokens.stat().st_mtime if interrupted else None
    if killed:
        subprocess.run([*cmd, "--unlock"], cwd=REPO, env=snakemake_env(), capture_output=True, timeout=300)
        cmd = [*cmd, "--rerun-incomplete"]
    out = subprocess.run(cmd, cwd=REPO, env=snakemake_env(), capture_output=True, text=True, timeout=1500)
    if out.returncode != 0:
        pytest.fail(f"tiny demo study failed:\n{out.stdout[-4000:]}\n{out.stderr[-8000:]}")
    return {
        "dir": work,
        "interrupted": interrupted,
        "tokens_mtime_before_restart": tokens_mtime,
        "seconds": time.monotonic() - t0,
    }


# ----------------------------------------------------------------------------------------------
# Stand-in assets of the paper's studies (ranke.standins), written once per test session and
# shared by the format tests (tests/test_standins.py) and the end-to-end study runs
# (tests/test_studies.py).

STUDIES = {name: REPO / "workflow" / "studies" / f"{name}.yaml" for name in ("llamagen_xl", "janus_pro")}


@pytest.fixture(scope="session")
def standin_sets(tmp_path_factory):
    """study name -> (stand-in directory, overlay.yaml), written lazily on first use."""
    from ranke.standins import write_standins

    written: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in written:
            out = tmp_path_factory.mktemp(f"standins_{name}")
            written[name] = (out, write_standins(STUDIES[name], out))
        return written[name]

    return get
