"""FID with torch-fidelity feature extractors, fed from uint8 tensor batches (no image files).

We use torch-fidelity's pieces directly instead of `calculate_metrics`, so that features come from
the decode loop in memory and the reference statistics live in our own cache file:

* extractors: `torch_fidelity.utils.create_feature_extractor` (any FeatureExtractorBase registered
  with `register_feature_extractor`);
* statistics / distance: `torch_fidelity.metric_fid.fid_features_to_statistics` and
  `fid_statistics_to_metric` (torch-fidelity 0.4.0 API, pinned in pyproject).

Real studies: `inception-v3-compat` with `feature_extractor_weights_path` = config assets.fid.weights.
The demo registers its own CLIP image tower as the extractor "clip-image" (no Inception weights
exist offline); its numbers are labelled "FID (demo CLIP features)" so they are never mistaken
for Inception FID.

Nothing is ever downloaded: importing this module replaces torch-fidelity's download function with
one that raises, and a missing weights file raises FileNotFoundError naming assets.fid.weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_clip as _tf_clip
import torch_fidelity.feature_extractor_inceptionv3 as _tf_inception
import torch_fidelity.sample_similarity_lpips as _tf_lpips
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from ranke.io import sha256_file
from ranke.metrics import resize_batch, uint8_to_float

log = logging.getLogger("ranke.metrics.fid")

CLIP_IMAGE = "clip-image"
INCEPTION = "inception-v3-compat"

# metric label for tables: which feature space an FID lives in
LABELS = {INCEPTION: "FID (Inception)", CLIP_IMAGE: "FID (demo CLIP features)"}


def fid_label(extractor: str) -> str:
    return LABELS.get(extractor, f"FID ({extractor} features)")


# ----------------------------------------------------------------------------------------------
# No network


class DownloadBlockedError(RuntimeError):
    """torch-fidelity tried to fetch weights from the internet."""


def _refuse_download(url, *args, **kwargs):
    raise DownloadBlockedError(
        f"torch-fidelity tried to download {url}; ranke never downloads weights: "
        "set assets.fid.weights to a local file"
    )


# torch-fidelity binds torch.hub.load_state_dict_from_url at import in each extractor module; we
# rebind those names (not torch.hub itself, which other libraries own) so that an extractor
# constructed without a weights path fails loudly instead of fetching.
_DOWNLOAD_MODULES = (_tf_inception, _tf_clip, _tf_lpips)
for _mod in _DOWNLOAD_MODULES:
    _mod.load_state_dict_from_url = _refuse_download


# ----------------------------------------------------------------------------------------------
# The demo CLIP image tower as a torch-fidelity extractor


class ClipImageFeatureExtractor(FeatureExtractorBase):
    """uint8 (B,3,H,W) -> l2-normalised CLIP image embeddings (feature name "clip").

    Extra kwargs (passed through create_feature_extractor): `clip_model` (a loaded
    ranke.models.clip.ClipModel, reused as is) or `clip_cfg` (an assets.clip-style dict loaded with
    load_clip), and `clip_device`.
    """

    def __init__(self, name, features_list, clip_model=None, clip_cfg=None, clip_device="cpu", **kwargs):
        super().__init__(name, features_list)
        if clip_model is None:
            if clip_cfg is None:
                raise ValueError(f"feature extractor '{name}' needs clip_model or clip_cfg")
            from ranke.models.clip import load_clip

            clip_model = load_clip(clip_cfg, torch.device(clip_device))
        self.clip = clip_model

    @torch.no_grad()
    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError(f"expected uint8 (B,3,H,W) images, got {getattr(x, 'dtype', type(x))} {tuple(x.shape)}")
        images = resize_batch(uint8_to_float(x), self.clip.image_size, mode="bicubic")
        return (self.clip.embed_images(images).float(),)

    @staticmethod
    def get_provided_features_list():
        return ("clip",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "clip"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)


if CLIP_IMAGE not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(CLIP_IMAGE, ClipImageFeatureExtractor)

# torch-fidelity's own extractors that would download their weights when given no path
_DOWNLOADING = {
    name
    for name, cls in FEATURE_EXTRACTORS_REGISTRY.items()
    if cls.__module__.startswith("torch_fidelity.")
}


# ----------------------------------------------------------------------------------------------
# Loading


@dataclass
class FidExtractor:
    """A created torch-fidelity extractor plus what the reference cache must agree on."""

    name: str
    layer: str
    module: FeatureExtractorBase
    device: torch.device
    weights: str | None
    weights_sha256: str | None

    @property
    def label(self) -> str:
        return fid_label(self.name)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B,3,H,W) -> (B, D) float32 on the CPU (statistics are taken in float64)."""
        if images.dtype != torch.uint8:
            raise ValueError(f"FID features need uint8 images, got {images.dtype}")
        out = self.module(images.to(self.device, non_blocking=True))
        return self.module.convert_features_tuple_to_dict(out)[self.layer].float().cpu()


def load_fid_extractor(fid_cfg: dict, device, *, clip_cfg: dict | None = None, clip_model=None) -> FidExtractor:
    """Create the extractor named by config assets.fid (`extractor`, `weights`).

    `clip_cfg` (config assets.clip) is required for "clip-image": its `weights` are replaced by
    assets.fid.weights. `clip_model` reuses an already loaded ClipModel (same weights file).
    """
    device = torch.device(device)
    name = fid_cfg["extractor"]
    weights = fid_cfg.get("weights")
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(
            f"assets.fid.extractor '{name}' is not a registered torch-fidelity feature extractor "
            f"(known: {sorted(FEATURE_EXTRACTORS_REGISTRY)})"
        )
    if name.startswith("dinov2"):
        raise ValueError(f"assets.fid.extractor '{name}': torch-fidelity 0.4.0 cannot load DINOv2 offline")
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(
            f"assets.fid.weights: {weights} not found (weights of the FID feature extractor '{name}'; "
            "nothing is downloaded)"
        )
    if weights is None and (name in _DOWNLOADING or name == CLIP_IMAGE):
        raise FileNotFoundError(
            f"assets.fid.weights is null: the FID feature extractor '{name}' needs a local weights file "
            "(torch-fidelity would otherwise download it, which ranke never does)"
        )

    kwargs: dict = {"verbose": False}
    if name == CLIP_IMAGE:
        if clip_model is None:
            if clip_cfg is None:
                raise ValueError("FID extractor 'clip-image' needs the assets.clip config (clip_cfg)")
            kwargs["clip_cfg"] = {**clip_cfg, "weights": weights}
            kwargs["clip_device"] = str(device)
        else:
            kwargs["clip_model"] = clip_model
    elif weights is not None:
        kwargs["feature_extractor_weights_path"] = str(weights)

    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    layer = cls.get_default_feature_layer_for_metric("fid")
    module = create_feature_extractor(name, [layer], cuda=False, **kwargs)
    module = module.to(device)
    sha = sha256_file(weights) if weights is not None else None
    log.info("FID extractor %s (layer %s) on %s, weights %s sha256 %s", name, layer, device, weights, sha)
    return FidExtractor(name=name, layer=layer, module=module, device=device, weights=weights, weights_sha256=sha)


# ----------------------------------------------------------------------------------------------
# Statistics and distance


def extract_features(extractor: FidExtractor, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Concatenate the features of uint8 batches -> (N, D) float32."""
    feats = [extractor.features(b) for b in batches]
    if not feats:
        raise ValueError("no images to extract FID features from")
    return torch.cat(feats)


def fid_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """{"mu": (D,), "sigma": (D, D)} float64 (torch-fidelity's fid_features_to_statistics)."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"FID statistics need (N >= 2, D) features, got {tuple(features.shape)}")
    return fid_features_to_statistics(features.detach().double().cpu())


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    """FID between two {"mu", "sigma"} (numpy or torch) via torch-fidelity's fid_statistics_to_metric."""

    def as_np(s):
        return {k: np.asarray(torch.as_tensor(s[k]).double().cpu().numpy(), dtype=np.float64) for k in ("mu", "sigma")}

    s1, s2 = as_np(stats_1), as_np(stats_2)
    if s1["mu"].shape != s2["mu"].shape:
        raise ValueError(f"FID statistics have different dimensions: {s1['mu'].shape} vs {s2['mu'].shape}")
    return float(fid_statistics_to_metric(s1, s2, False)[KEY_METRIC_FID])


def fid_from_uint8(extractor: FidExtractor, images: Iterable[torch.Tensor], reference: dict) -> float:
    """FID of uint8 image batches against reference statistics."""
    return frechet_distance(fid_statistics(extract_features(extractor, images)), reference)


def write_random_inception_weights(path, seed: int = 0) -> None:
    """A randomly initialised `inception-v3-compat` state dict (for benchmarks and tests only:
    same architecture and cost as the real extractor, no download)."""
    from ranke.io import save_torch

    cls = _tf_inception.FeatureExtractorInceptionV3
    original_load, original_fetch = cls.load_state_dict, _tf_inception.load_state_dict_from_url
    torch.manual_seed(seed)
    # keep the random init: no state dict is fetched (nothing touches the network) or loaded
    cls.load_state_dict = lambda self, *a, **k: None
    _tf_inception.load_state_dict_from_url = lambda *a, **k: {}
    try:
        module = cls(INCEPTION, ["2048"])
    finally:
        cls.load_state_dict, _tf_inception.load_state_dict_from_url = original_load, original_fetch
    save_torch(module.state_dict(), path)
