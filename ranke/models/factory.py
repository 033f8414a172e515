"""One entry point from a study config to its backbone (LlamaGen or Janus-Pro).

Stages call `build_backbone(cfg, device)` with the (sub-)config that holds `backbone`, `assets`
and `image_size`; everything downstream uses only the backbone interface
(docs/architecture.md, "backbone.py"), so the DAG does not change shape between backbones.
"""

from __future__ import annotations

import torch

BACKBONES = ("llamagen", "janus")


def build_backbone(cfg: dict, device, *, load_text: bool = True, load_policy: bool = True):
    """cfg["backbone"] in {"llamagen", "janus"}; reads cfg["assets"] and cfg["image_size"]."""
    kind = cfg.get("backbone", "llamagen")
    for key in ("assets", "image_size"):
        if key not in cfg:
            raise KeyError(f"build_backbone needs config key '{key}'")
    device = torch.device(device)
    # Imported lazily: a LlamaGen study never imports the Janus code (and vice versa).
    if kind == "llamagen":
        from ranke.models.backbone import LlamaGenBackbone
        from ranke.runtime import autocast_dtype

        # the sampler's weight dtype and the T5 dtype follow the study's `precision` (fp32 | bf16 |
        # auto = bf16 on GPU), like the autocast of every stage
        amp = autocast_dtype(cfg.get("precision", "auto"), device)
        return LlamaGenBackbone.from_config(cfg["assets"], int(cfg["image_size"]), device, load_text=load_text,
                                            load_policy=load_policy, amp_dtype=amp)
    if kind == "janus":
        from ranke.models.janus import JanusBackbone

        return JanusBackbone.from_config(cfg["assets"], int(cfg["image_size"]), device, load_text=load_text)
    raise ValueError(f"config key 'backbone' must be one of {BACKBONES}, got {kind!r}")
