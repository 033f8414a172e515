"""LlamaGen-compatible checkpoint loading and saving with strict key/shape checks.

Upstream files keep the state dict under "model" (DDP), "module" (DeepSpeed) or "state_dict";
compiled / DDP-wrapped models add "_orig_mod." / "module." prefixes. A wrong file (another
model size, a VQ file given as GPT, ...) raises one CheckpointError naming the file and the first
mismatching keys and shapes, instead of PyTorch's wall of text or a silent strict=False load.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from ranke.io import save_torch

log = logging.getLogger("ranke.models.checkpoints")

STATE_KEYS = ("model", "module", "state_dict")
PREFIXES = ("module.", "_orig_mod.")
MAX_LISTED = 8


class CheckpointError(RuntimeError):
    """A checkpoint does not fit the model it is loaded into (or is not a checkpoint at all)."""


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # upstream training scripts pickle their argparse Namespace next to the weights
        log.warning("%s holds non-tensor objects; loading it with weights_only=False (trusted local file)", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def extract_state_dict(obj, source: str = "<object>") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint object ("model" | "module" | "state_dict" | raw)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict-like checkpoint, got {type(obj).__name__}")
    for k in STATE_KEYS:
        if k in obj and isinstance(obj[k], Mapping):
            obj = obj[k]
            break
    sd = {_strip(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(
            f"{source}: no tensors found (top-level keys: {sorted(map(str, obj))[:MAX_LISTED]}); "
            f"expected a state dict, possibly under one of {STATE_KEYS}"
        )
    return sd


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = _torch_load(path)
    except Exception as e:  # torch raises many types for a corrupt / foreign file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    return extract_state_dict(obj, str(path))


def load_config(path: str | os.PathLike) -> dict | None:
    """The "config" entry of a checkpoint written by save_checkpoint (None if absent)."""
    obj = _torch_load(Path(path))
    cfg = obj.get("config") if isinstance(obj, Mapping) else None
    return dict(cfg) if isinstance(cfg, Mapping) else None


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str = "<state dict>") -> None:
    """Raise one CheckpointError if keys or shapes differ from the model's state dict."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if not (missing or unexpected or wrong):
        return

    def fmt(keys, describe):
        shown = ", ".join(describe(k) for k in keys[:MAX_LISTED])
        more = f" ... (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
        return shown + more

    lines = [f"{source} does not match {type(model).__name__}:"]
    if missing:
        lines.append(f"  missing {len(missing)} keys: " + fmt(missing, lambda k: f"{k} {list(own[k].shape)}"))
    if unexpected:
        lines.append(f"  unexpected {len(unexpected)} keys: " + fmt(unexpected, lambda k: f"{k} {list(sd[k].shape)}"))
    if wrong:
        lines.append(
            f"  {len(wrong)} shape mismatches (checkpoint vs model): "
            + fmt(wrong, lambda k: f"{k} {list(sd[k].shape)} vs {list(own[k].shape)}")
        )
    raise CheckpointError("\n".join(lines))


def load_into(model: nn.Module, path_or_sd: str | os.PathLike | Mapping[str, torch.Tensor]) -> nn.Module:
    """Strictly load a checkpoint (path or state dict) into `model`; returns the model."""
    if isinstance(path_or_sd, Mapping):
        source = "<state dict>"
        sd = extract_state_dict(path_or_sd, source)
    else:
        source = str(path_or_sd)
        sd = load_state_dict(path_or_sd)
    check_state_dict(model, sd, source)
    model.load_state_dict(sd, strict=True)
    return model


def save_checkpoint(model: nn.Module, path: str | os.PathLike, config: dict | None = None) -> None:
    """Atomically write {"model": state_dict (CPU), "config": config}."""
    sd = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
    save_torch({"model": sd, "config": config}, path)


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
