"""Device, precision, seeding and logging: the few run-time decisions every stage shares.

torch and numpy are imported inside the functions that need them: the round driver
(`python -m ranke round`, ranke.train.launch) only logs and waits for its submitit job, and
importing torch costs it ~2.5 s of CPU per round on a small machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ranke")


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config asks for device 'cuda' but no CUDA device is visible")
    return dev


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` ("auto": bf16 on GPU, none = fp32 on CPU)."""
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    raise ValueError(f"precision must be auto | fp32 | bf16, got {precision!r}")


def autocast(device: torch.device, dtype: torch.dtype | None):
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_threads(n: int) -> None:
    """torch intra-op threads = what the rule declared (`threads:`), so that jobs Snakemake runs
    side by side do not each spin one thread per core; 0 leaves torch's default (all cores)."""
    if n:
        import torch

        torch.set_num_threads(n)


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr (captured by Snakemake's `log:` redirection) and optionally to a file."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def log_environment(extra: dict | None = None) -> None:
    """One block a failed SLURM job's log needs: host, job id, devices, versions."""
    import torch

    info = {
        "host": os.uname().nodename,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "threads": torch.get_num_threads(),
    }
    if extra:
        info.update(extra)
    log.info("environment: %s", json.dumps(info, default=str))


def parse_config_json(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--config-json is not valid JSON: {e}") from e
