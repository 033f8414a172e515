"""Shared test helpers: the vendored golden fixtures directory and the seeded-weights recipe."""

from __future__ import annotations

import json
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
# users rely on: no-op rerun, single-stage rerun, added replicates) and tests/test_slurm.py (the
# reference a SLURM run must equal); tests/test_pipeline.py also kills a second run at several
# moments and checks that the reruns end with the same results.

TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"),
            "--directory", str(workdir), *args]


def snakemake_env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture(scope="session")
def tiny_local_study(tmp_path_factory):
    """The tiny demo study run once, locally and uninterrupted: the reference that the SLURM run
    (tests/test_slurm.py) and the killed-and-rerun run (tests/test_pipeline.py) must equal."""
    import subprocess
    import time

    work = tmp_path_factory.mktemp("tiny_study")
    t0 = time.monotonic()
    out = subprocess.run(snakemake_cmd(work, "--cores", "2", "--configfile", str(TINY_CONFIG)), cwd=REPO,
                         env=snakemake_env(), capture_output=True, text=True, timeout=1500)
    if out.returncode != 0:
        pytest.fail(f"tiny demo study failed:\n{out.stdout[-4000:]}\n{out.stderr[-8000:]}")
    return {"dir": work, "seconds": time.monotonic() - t0}


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


# ----------------------------------------------------------------------------------------------
# Two runs of a study compared file by file (the SLURM run and the killed-and-rerun run against
# the uninterrupted local one)

# What measures time, not results: train_log columns, metrics rows (e.g. wall_time_s), details keys.
# Everything else must be equal exactly (measured: it is, CPU, 2 cores, torch 2.14.1).
TIMING_COLUMNS = {"train_log": {"step_time_s"}}
TIMING_WORDS = ("time", "timing", "seconds", "elapsed", "duration")


def read_result(path: Path):
    """(kind, DataFrame) of a results Parquet file, timing columns dropped, details made comparable."""
    import pandas as pd
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    kind = meta.get(b"ranke.kind", b"").decode() or path.stem
    df = pd.read_parquet(path)
    df = df.drop(columns=[c for c in TIMING_COLUMNS.get(kind, ()) if c in df.columns])
    if kind == "metrics":
        timing = df["metric"].str.lower().map(lambda name: any(w in name for w in TIMING_WORDS))
        df = df[~timing].reset_index(drop=True)
    if "details" in df.columns:
        def strip_timing(text):
            try:
                obj = json.loads(text)
            except (TypeError, ValueError):
                return text
            if isinstance(obj, dict):
                obj = {k: v for k, v in obj.items() if not any(w in k.lower() for w in TIMING_WORDS)}
            return json.dumps(obj, sort_keys=True)
        df["details"] = df["details"].map(strip_timing)
    return kind, df


def compare_results(local: Path, cluster: Path) -> list[str]:
    """Differences between two runs' result Parquet files (empty = identical in content)."""
    import numpy as np

    problems = []
    local_files = sorted(p.relative_to(local) for p in (local / "results").rglob("*.parquet"))
    cluster_files = sorted(p.relative_to(cluster) for p in (cluster / "results").rglob("*.parquet"))
    if local_files != cluster_files:
        problems.append(f"different files: local only {sorted(set(local_files) - set(cluster_files))}, "
                        f"cluster only {sorted(set(cluster_files) - set(local_files))}")
    for rel in local_files:
        if not (cluster / rel).exists():
            continue
        kind, a = read_result(local / rel)
        _, b = read_result(cluster / rel)
        if list(a.columns) != list(b.columns) or len(a) != len(b):
            problems.append(f"{rel}: shape/columns differ: {a.shape} {list(a.columns)} vs {b.shape} {list(b.columns)}")
            continue
        for col in a.columns:
            x, y = a[col].to_numpy(), b[col].to_numpy()
            if x.dtype.kind == "f":
                same = np.array_equal(x, y, equal_nan=True)
                if not same:
                    diff = np.nanmax(np.abs(x.astype(float) - y.astype(float)))
                    problems.append(f"{rel}: column {col} differs (max |diff| {diff:.3g})")
            elif x.dtype == object and len(x) and isinstance(x[0], np.ndarray):  # list columns (codes)
                if not all(np.array_equal(u, v) for u, v in zip(x, y)):
                    problems.append(f"{rel}: column {col} differs")
            elif not (x == y).all():
                problems.append(f"{rel}: column {col} differs")
    return problems
