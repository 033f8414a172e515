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
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ranke")


class CudaUnavailableError(RuntimeError):
    """CUDA was asked for (config `device: cuda`, or a round's ranks on GPUs) and cannot be had."""


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` = the first CUDA device if one is usable, else the CPU (logged with the reason);
    `cuda` / `cuda:N` fail at once when that device is not usable, naming why (cuda_facts)."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.info("device auto: no usable CUDA device, running on the CPU (%s)", describe_cuda(cuda_facts()))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        require_cuda(f"config asks for device {name!r}", index=dev.index)
    return dev


def require_cuda(what: str, *, count: int = 1, index: int | None = None) -> None:
    """Raise CudaUnavailableError unless `count` CUDA devices (and device `index`) are usable.

    A GPU job that lands on a node without a usable GPU (no driver, CUDA_VISIBLE_DEVICES empty,
    a CPU-only torch build, a driver older than the build) must stop here, not train on the CPU
    for hours: the message has what a SLURM job's log needs to tell which of these it is.
    """
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    need = max(count, 0 if index is None else index + 1)
    if visible >= need and visible > 0:
        return
    facts = cuda_facts()
    if visible:
        problem = f"{visible} CUDA device(s) visible, {need} needed"
    else:
        problem = "no CUDA device is usable"
    raise CudaUnavailableError(f"{what} but {problem}: {describe_cuda(facts)}")


def cuda_facts() -> dict:
    """What decides whether this process can use CUDA, as plain values.

    host, CUDA_VISIBLE_DEVICES, the torch build's CUDA version ("CPU-only build" without one), the
    CUDA version the installed driver supports (libcuda, if it loads), the device count, and
    when no device is usable torch.cuda's own reason (torch.cuda.is_available() only says False;
    torch.cuda.init() raises with the cause).
    """
    import torch

    facts = {
        "host": os.uname().nodename,
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        "torch": torch.__version__,
        "torch.version.cuda": torch.version.cuda or "CPU-only build",
        "driver_cuda": _driver_cuda_version(),
        "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    if not torch.cuda.is_available():
        try:
            torch.cuda.init()
            facts["reason"] = "torch.cuda.init() succeeded although torch.cuda.is_available() is False"
        except Exception as e:  # the reason is the message, whatever its type
            facts["reason"] = " ".join(f"{type(e).__name__}: {e}".split())
    return facts


def describe_cuda(facts: dict) -> str:
    return ", ".join(f"{k}={v if v is not None else '-'}" for k, v in facts.items())


def _driver_cuda_version() -> str | None:
    """The newest CUDA the installed driver supports ("12.8"), None without a loadable libcuda."""
    import ctypes

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int(0)
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def nvidia_driver_version() -> str | None:
    """The NVIDIA kernel driver's version ("550.54.15"), None if it cannot be had.

    torch has no API for it: ask NVML through ctypes (the library torch's own NVML device count
    loads, so no extra package), and nvidia-smi only if NVML does not answer and it is installed.
    """
    import ctypes

    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() == 0:
            try:
                buf = ctypes.create_string_buffer(96)
                if nvml.nvmlSystemGetDriverVersion(buf, ctypes.c_uint(96)) == 0:
                    return buf.value.decode()
            finally:
                nvml.nvmlShutdown()
    except (OSError, AttributeError):
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    versions = sorted(set(out.stdout.split()))
    return ",".join(versions) if out.returncode == 0 and versions else None


def gpu_summary() -> dict:
    """GPU model(s), count, driver and CUDA versions; on CPU "no CUDA device" with the reason."""
    import torch

    if not torch.cuda.is_available():
        facts = cuda_facts()
        return {"gpus": "no CUDA device", "count": 0, "torch.version.cuda": facts["torch.version.cuda"],
                "driver_cuda": facts["driver_cuda"], "CUDA_VISIBLE_DEVICES": facts["CUDA_VISIBLE_DEVICES"],
                "reason": facts["reason"]}
    n = torch.cuda.device_count()
    models = []
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        models.append(f"{p.name} ({p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor})")
    return {"gpus": models, "count": n, "driver": nvidia_driver_version(), "driver_cuda": _driver_cuda_version(),
            "torch.version.cuda": torch.version.cuda,
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")}


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


_CODE_VERSION: str | None = None


def code_version() -> str:
    """`git describe --always --dirty --tags` of the checkout this package runs from, or the
    package version when it is not a git checkout (an installed wheel). Recorded by the score
    stage in every metrics row and stated by the report, so a table says which code made it."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        from ranke import __version__

        repo = Path(__file__).resolve().parents[1]
        version = f"ranke {__version__}"
        if (repo / ".git").exists() and shutil.which("git"):
            try:
                out = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--tags"],
                                     capture_output=True, text=True, timeout=10)
                if out.returncode == 0 and out.stdout.strip():
                    version = f"{version} (git {out.stdout.strip()})"
            except (OSError, subprocess.SubprocessError):
                pass
        _CODE_VERSION = version
    return _CODE_VERSION


def log_environment(extra: dict | None = None) -> None:
    """One block a failed SLURM job's log needs: host, job id, GPUs (models, count, driver), versions."""
    import torch

    info = {
        "host": os.uname().nodename,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "torch": torch.__version__,
        "cuda": gpu_summary(),
        "threads": torch.get_num_threads(),
        "code": code_version(),
    }
    if extra:
        info.update(extra)
    log.info("environment: %s", json.dumps(info, default=str))


def parse_config_json(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--config-json is not valid JSON: {e}") from e


def add_config_arguments(parser, what: str = "the stage's config sections") -> None:
    """A stage's config: a JSON file (what the workflow passes: .ranke/stage-config/<stage>-<hash>.json,
    written by workflow/rules/common.smk) or the same JSON inline (scripts and tests)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", metavar="FILE", help=f"{what}, as a JSON file")
    group.add_argument("--config-json", metavar="JSON", help=f"{what}, as inline JSON")


def config_from_args(args) -> dict:
    if args.config_json is not None:
        return parse_config_json(args.config_json)
    try:
        text = Path(args.config).read_text()
    except OSError as e:
        raise SystemExit(f"--config {args.config}: cannot read it ({e.strerror})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--config {args.config} is not valid JSON: {e}") from e
