"""FID with torch-fidelity's feature extractors and statistics, fed from uint8 tensor batches (no files).

We use torch-fidelity's pieces directly instead of `calculate_metrics`, so that features come from
the decode loop in memory and the reference statistics live in our own cache file:

* extractors: `torch_fidelity.utils.create_feature_extractor` (any FeatureExtractorBase registered
  with `register_feature_extractor`);
* statistics: `torch_fidelity.metric_fid.fid_features_to_statistics` (torch-fidelity 0.4.0 API,
  pinned in pyproject);
* distance: our `frechet_distance`, the same formula as torch-fidelity's `fid_statistics_to_metric`
  with the trace term from a symmetric eigen-problem: torch-fidelity takes the eigenvalues of the
  non-symmetric 2048 x 2048 product Sigma_1 Sigma_2 (a general eigen-solve, 4.3 s on one CPU
  core), we those of S Sigma_1 S with S = Sigma_ref^(1/2), which has the same eigenvalues and is
  symmetric (1.0 s, and S is computed once, with the reference statistics). Every score job pays it
  on the CPU, GPU studies included. tests/test_fid.py checks the two agree to 1e-8 relative
  (they differ only in the rounding of eigenvalues that are zero).

Real studies: `inception-v3-compat` with `feature_extractor_weights_path` = config assets.fid.weights.
How images reach it is config score.fid_protocol (ranke.config.FID_PROTOCOLS), applied to the
reference images and the generated ones alike:

* `clean` (default): what the paper's FIDs used. The official evaluation calls clean-fid 0.1.35's
  `compute_fid(..., model_name="inception_v3")` in its default mode "clean" (RankE:evaluations/t2i/
  evaluation.py:457-481, 508-512): after the evaluation transform (centre crop + PIL LANCZOS to the
  eval resolution: ranke.data.coco.EVAL for the reference images, a no-op for generated images at
  that size) every image is resized to 299x299 with PIL's bicubic filter on float32 channels (mode
  'F', no re-quantisation to uint8), clipped to [0, 255], and fed to Inception as (x - 128) / 128.
  We do the resize with `resize_bicubic_like_pil` (a torch re-implementation of PIL's separable
  resampling, checked bit-exact against PIL in tests/test_fid.py) and run torch-fidelity's Inception
  network on the float input through `CleanInceptionV3`. Differences from clean-fid: the network is
  torch-fidelity's port of the same 2015-12-05 TF Inception graph (clean-fid uses NVIDIA's
  TorchScript port of it), and the statistics come from torch-fidelity, both in float32/float64
  like clean-fid's.
* `torch-fidelity`: uint8 straight into torch-fidelity's own forward, which resizes to 299 with its
  TF1-compatible bilinear interpolation inside the network (torch-fidelity's and the legacy
  TensorFlow FID's convention; clean-fid's "legacy_tensorflow" mode). FIDs of the two protocols are
  not comparable with each other; the protocol is part of the reference cache key and metadata.

The demo registers its own CLIP image tower as the extractor "clip-image" (no Inception weights
exist offline); it resizes bicubically to the CLIP resolution itself, score.fid_protocol does not
apply to it, and its numbers are labelled "FID (demo CLIP features)" so they are never mistaken
for Inception FID.

Nothing is ever downloaded: importing this module replaces torch-fidelity's download function with
one that raises, and a missing weights file raises FileNotFoundError naming assets.fid.weights.
"""

from __future__ import annotations

import functools
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
from torch_fidelity.metric_fid import fid_features_to_statistics
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from ranke.config import DEFAULT_FID_PROTOCOL, FID_PROTOCOL_EXTRACTOR, applied_fid_protocol
from ranke.io import sha256_file
from ranke.metrics import resize_batch, uint8_to_float

log = logging.getLogger("ranke.metrics.fid")

CLIP_IMAGE = "clip-image"
INCEPTION = FID_PROTOCOL_EXTRACTOR  # "inception-v3-compat"
INCEPTION_SIZE = 299

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
        # its own resize (antialiased bicubic to the CLIP resolution); score.fid_protocol does not apply
        images = resize_batch(uint8_to_float(x), self.clip.image_size, mode="bicubic", antialias=True)
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
# The "clean" protocol: PIL's bicubic resize in float, then torch-fidelity's Inception on float input
#
# Why not PIL itself: an evaluation resizes 30 000 generated images (and the reference set) per
# (method, round); PIL runs per image and per channel on the CPU, while the images are already
# batched on the GPU after decoding. PIL's resampling is separable and linear, so it is two matrix
# products with the coefficient matrices PIL computes, which run batched on any device.


def _pil_bicubic(x: float) -> float:
    """PIL's bicubic kernel: Keys' cubic convolution with a = -0.5, support 2."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


@functools.lru_cache(maxsize=32)
def pil_bicubic_weights(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) float64 matrix W with resized = W @ signal, as PIL computes it for
    `Image.resize(..., BICUBIC)` along one axis (libImaging/Resample.c, precompute_coeffs):

    * scale = in/out; when shrinking the kernel is stretched by the scale (support 2 * scale), so
      downscaling is antialiased; when enlarging it keeps support 2;
    * output pixel i is centred at (i + 0.5) * scale in input coordinates; the taps are the input
      pixels j in [trunc(centre - support + 0.5), trunc(centre + support + 0.5)), clamped to the
      image (so edge rows renormalise over fewer taps instead of padding);
    * tap weight kernel((j - centre + 0.5) / max(scale, 1)), normalised to sum 1 per output pixel.

    Cached per size pair (shared: do not modify the returned tensor).
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        # int() truncates toward zero like PIL's (int) cast; negatives are clamped to 0 anyway
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        taps = [_pil_bicubic((j - centre + 0.5) / stretch) for j in range(lo, hi)]
        total = sum(taps)
        for j, w in zip(range(lo, hi), taps):
            weights[i, j] = w / total if total != 0.0 else w
    return weights


def resize_bicubic_like_pil(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Float (B, C, H, W) -> float32 (B, C, h, w): per channel what PIL's mode-'F' bicubic resize
    gives (clean-fid "clean" resizes each channel as an 'F' image). PIL resamples horizontally
    first into a float32 image, then vertically, accumulating each in double precision; we do the
    same (float64 products, float32 between the passes), so the result matches PIL to float32
    rounding whatever the device's matmul precision settings (TF32 never applies to float64).
    Values are not clipped (bicubic overshoots); the protocol clips afterwards."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if images.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) images, got {tuple(images.shape)}")
    x = images.to(torch.float64)
    in_h, in_w = x.shape[-2:]
    if in_w != out_w:  # PIL skips a pass whose size does not change (it would be the identity)
        w_x = pil_bicubic_weights(in_w, out_w).to(x.device)
        x = (x @ w_x.T).to(torch.float32).to(torch.float64)
    if in_h != out_h:
        w_y = pil_bicubic_weights(in_h, out_h).to(x.device)
        x = w_y @ x
    return x.to(torch.float32)


def clean_inception_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 (B, 3, 299, 299) in [0, 255]: clean-fid's "clean" resize."""
    if images.dtype != torch.uint8:
        raise ValueError(f"the clean FID protocol takes uint8 images, got {images.dtype}")
    return resize_bicubic_like_pil(images, INCEPTION_SIZE).clamp_(0.0, 255.0)


class CleanInceptionV3(_tf_inception.FeatureExtractorInceptionV3):
    """torch-fidelity's Inception (same submodules, same weights file) on float input that is
    already 299x299 in [0, 255].

    torch-fidelity's forward accepts only uint8 and always runs its TF1-style bilinear resize; the
    clean protocol needs the float PIL-bicubic image instead. So this forward runs the same
    submodules in the same order as torch-fidelity 0.4.0's forward after its resize step — the
    normalisation (x - 128) / 128 and the trunk up to the 2048-d pool — and nothing else.
    tests/test_fid.py checks that for uint8 images already at 299x299 (where the TF1 resize is the
    identity) it returns exactly torch-fidelity's own features. Only the FID layer "2048" is provided.
    """

    TRUNK = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1",
             "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
             "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")

    def __init__(self, name, features_list, **kwargs):
        if list(features_list) != ["2048"]:
            raise ValueError(f"CleanInceptionV3 provides only the FID layer '2048', asked {features_list}")
        super().__init__(name, features_list, **kwargs)

    def forward(self, x):
        if not (torch.is_tensor(x) and x.is_floating_point() and x.dim() == 4
                and tuple(x.shape[1:]) == (3, INCEPTION_SIZE, INCEPTION_SIZE)):
            raise ValueError(f"expected float (B, 3, {INCEPTION_SIZE}, {INCEPTION_SIZE}) images in [0, 255], "
                             f"got {getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
        x = (x.to(self.feature_extractor_internal_dtype) - 128) / 128
        for name in self.TRUNK:
            x = getattr(self, name)(x)
        return (torch.flatten(x, 1).to(torch.float32),)

    @staticmethod
    def get_provided_features_list():
        return ("2048",)

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.full((1, 3, INCEPTION_SIZE, INCEPTION_SIZE), 128.0)


# what reached the network, per protocol (the `details` of the fid metric and the reference metadata)
PREPROCESSING = {
    "clean": "PIL-bicubic resize to 299 in float (mode 'F' per channel), clip [0, 255], (x - 128) / 128 "
             "(clean-fid 'clean')",
    "torch-fidelity": "uint8 into torch-fidelity's forward: TF1-style bilinear resize to 299 inside the "
                      "network, (x - 128) / 128",
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
    protocol: str | None = None  # score.fid_protocol as applied; None: the extractor's own preprocessing

    @property
    def label(self) -> str:
        return fid_label(self.name)

    @property
    def preprocessing(self) -> str:
        """How images reach the network (for the metric's details)."""
        if self.protocol is not None:
            return PREPROCESSING[self.protocol]
        return f"the {self.name} extractor's own resize (score.fid_protocol does not apply)"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B,3,H,W) -> (B, D) float32 on the CPU (statistics are taken in float64)."""
        if images.dtype != torch.uint8:
            raise ValueError(f"FID features need uint8 images, got {images.dtype}")
        x = images.to(self.device, non_blocking=True)
        if self.protocol == "clean":
            x = clean_inception_input(x)
        out = self.module(x)
        return self.module.convert_features_tuple_to_dict(out)[self.layer].float().cpu()


def load_fid_extractor(fid_cfg: dict, device, *, protocol: str = DEFAULT_FID_PROTOCOL, clip_cfg: dict | None = None,
                       clip_model=None) -> FidExtractor:
    """Create the extractor named by config assets.fid (`extractor`, `weights`).

    `protocol` is config score.fid_protocol ("clean" or "torch-fidelity"); it chooses how images
    reach Inception and is ignored (recorded as None) for every other extractor.
    `clip_cfg` (config assets.clip) is required for "clip-image": its `weights` are replaced by
    assets.fid.weights. `clip_model` reuses an already loaded ClipModel (same weights file).
    """
    device = torch.device(device)
    name = fid_cfg["extractor"]
    weights = fid_cfg.get("weights")
    applied = applied_fid_protocol(name, protocol)  # validates protocol for every extractor
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
    if applied == "clean":
        # the same network and weights file as the registered extractor, fed float 299x299 input
        module = CleanInceptionV3(name, [layer], **kwargs).eval()
    else:
        module = create_feature_extractor(name, [layer], cuda=False, **kwargs)
    module = module.to(device)
    sha = sha256_file(weights) if weights is not None else None
    log.info("FID extractor %s (layer %s, protocol %s) on %s, weights %s sha256 %s", name, layer, applied, device,
             weights, sha)
    return FidExtractor(name=name, layer=layer, module=module, device=device, weights=weights, weights_sha256=sha,
                        protocol=applied)


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


def covariance_sqrt(sigma) -> np.ndarray:
    """The symmetric square root of a covariance matrix (float64); eigenvalues that rounding made
    slightly negative count as 0."""
    sigma = np.asarray(torch.as_tensor(sigma).double().cpu().numpy(), dtype=np.float64)
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    """FID between two {"mu", "sigma"} (numpy or torch): |mu_1 - mu_2|^2 + tr(Sigma_1) + tr(Sigma_2)
    - 2 tr sqrt(Sigma_1 Sigma_2), as torch-fidelity's fid_statistics_to_metric.

    The nonzero eigenvalues of Sigma_1 Sigma_2 = (Sigma_1 S) S are those of S Sigma_1 S with
    S = Sigma_2^(1/2), a symmetric PSD matrix, so the trace term is sum sqrt(eigvalsh(S Sigma_1 S))
    (negative rounding noise counts as 0, as the real part of torch-fidelity's complex square
    roots). `stats_2` may carry S as "sigma_sqrt" (reference files do; see ranke.fid_reference)."""

    def as_np(x):
        return np.asarray(torch.as_tensor(x).double().cpu().numpy(), dtype=np.float64)

    mu_1, mu_2, sigma_1, sigma_2 = (as_np(stats_1["mu"]), as_np(stats_2["mu"]), as_np(stats_1["sigma"]),
                                    as_np(stats_2["sigma"]))
    if mu_1.shape != mu_2.shape or sigma_1.shape != sigma_2.shape:
        raise ValueError(f"FID statistics have different dimensions: {mu_1.shape} vs {mu_2.shape}")
    root = stats_2.get("sigma_sqrt")
    root = covariance_sqrt(sigma_2) if root is None else as_np(root)
    inner = root @ sigma_1 @ root
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())
    diff = mu_1 - mu_2
    return float(diff @ diff + np.trace(sigma_1) + np.trace(sigma_2) - 2.0 * tr_covmean)


def fid_from_uint8(extractor: FidExtractor, images: Iterable[torch.Tensor], reference: dict) -> float:
    """FID of uint8 image batches against reference statistics."""
    return frechet_distance(fid_statistics(extract_features(extractor, images)), reference)


def write_random_inception_weights(path, seed: int = 0) -> None:
    """A randomly initialised `inception-v3-compat` state dict (for benchmarks, tests and stand-in
    runs only: same architecture and cost as the real extractor, no download)."""
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

    # With PyTorch's default init and BatchNorm's unit running variance the activations shrink by
    # orders of magnitude per block (2048-d features ~1e-8): every FID would be ~0 and differences
    # between image sets invisible. One forward in training mode over two random images, with
    # each BatchNorm keeping exactly that batch's statistics (momentum 1), renormalises every layer
    # in turn, so the features are of order 1 as with real weights.
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(2, 3, 8, 8, generator=g) * 255
    calibration = torch.nn.functional.interpolate(low, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bicubic",
                                                  align_corners=False)
    calibration = (calibration + 20 * torch.randn(calibration.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.momentum = 1.0
    module.train()
    with torch.no_grad():
        module(calibration)
    module.eval()
    save_torch(module.state_dict(), path)
