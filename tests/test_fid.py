"""FID: torch-fidelity plumbing, reference cache, weights errors and the network guard (all offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from PIL import Image
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ranke import fid_reference as fr
from ranke.config import reference_cache_key
from ranke.metrics import fid

torch.set_num_threads(1)
TINY = "ranke-test-tiny-conv"


class TinyConv(FeatureExtractorBase):
    """A fixed random conv net: uint8 -> 24 pooled features. Deterministic, offline, fast."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        g = torch.Generator().manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 12, 3, stride=2)
        self.conv2 = torch.nn.Conv2d(12, 12, 3, stride=2)
        for m in (self.conv1, self.conv2):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * 0.3
            m.bias.data.zero_()

    def forward(self, x):
        assert x.dtype == torch.uint8
        h = torch.relu(self.conv1(x.float() / 127.5 - 1))
        h = torch.relu(self.conv2(h))
        return (torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1),)

    @staticmethod
    def get_provided_features_list():
        return ("tiny",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "tiny"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 16, 16, dtype=torch.uint8)


if TINY not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(TINY, TinyConv)


def _images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth random images (low-frequency colour fields), uint8."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return (torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear") * 255).to(torch.uint8)


def _noisy(images: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images.float() + sigma * torch.randn(images.shape, generator=g)).clamp(0, 255).to(torch.uint8)


def test_fid_self_zero_and_increasing_with_noise():
    ex = fid.load_fid_extractor({"extractor": TINY, "weights": None}, "cpu")
    assert ex.label == f"FID ({TINY} features)"
    real = _images(256)
    ref = fid.fid_statistics(fid.extract_features(ex, real.split(64)))
    assert abs(fid.fid_from_uint8(ex, real.split(100), ref)) < 1e-6  # batching does not matter
    values = [fid.fid_from_uint8(ex, [_noisy(real, s)], ref) for s in (8, 32, 96)]
    assert 0 < values[0] < values[1] < values[2], values


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    # diagonal covariances commute: FID = |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    s1 = {"mu": np.array([0.0, 1.0, 2.0]), "sigma": np.diag([1.0, 4.0, 9.0])}
    s2 = {"mu": np.array([1.0, 1.0, 0.0]), "sigma": np.diag([4.0, 1.0, 1.0])}
    expected = (1 + 0 + 4) + (1 + 1 + 4)
    assert fid.frechet_distance(s1, s2) == pytest.approx(expected, rel=1e-9)
    assert fid.frechet_distance(s1, s1) == pytest.approx(0.0, abs=1e-9)


def test_labels():
    assert fid.fid_label("inception-v3-compat") == "FID (Inception)"
    assert fid.fid_label("clip-image") == "FID (demo CLIP features)"
    assert "clip-image" in FEATURE_EXTRACTORS_REGISTRY


# ----------------------------------------------------------------------------------------------
# Missing weights / no network


def test_missing_weights_errors_name_the_key_and_path(tmp_path):
    missing = tmp_path / "inception.pth"
    for name in ("inception-v3-compat", "clip-image"):
        with pytest.raises(FileNotFoundError, match=r"assets\.fid\.weights.*inception\.pth"):
            fid.load_fid_extractor({"extractor": name, "weights": str(missing)}, "cpu",
                                   clip_cfg={"model": "x", "weights": str(missing)})
        with pytest.raises(FileNotFoundError, match=r"assets\.fid\.weights is null"):
            fid.load_fid_extractor({"extractor": name, "weights": None}, "cpu")
    with pytest.raises(ValueError, match="not a registered"):
        fid.load_fid_extractor({"extractor": "no-such-net", "weights": None}, "cpu")


def test_download_function_is_guarded():
    with pytest.raises(fid.DownloadBlockedError, match="never downloads"):
        tf_inception.load_state_dict_from_url("https://example.invalid/w.pth")


def test_inception_from_local_weights_never_downloads(tmp_path, monkeypatch):
    weights = tmp_path / "inception-random.pth"
    fid.write_random_inception_weights(weights, seed=0)
    calls = []

    def blocked(*a, **k):
        calls.append(a)
        raise RuntimeError("network is blocked in this test")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", blocked)
    ex = fid.load_fid_extractor({"extractor": "inception-v3-compat", "weights": str(weights)}, "cpu")
    assert ex.label == "FID (Inception)" and ex.layer == "2048"
    feats = ex.features(_images(2, size=16))
    assert feats.shape == (2, 2048) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert ex.weights_sha256 and len(ex.weights_sha256) == 64
    assert calls == []


# ----------------------------------------------------------------------------------------------
# Reference statistics cache


def _coco(root, n=12, size=24):
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    imgs, anns = [], []
    for i, arr in enumerate(_images(n, size=size, seed=3).permute(0, 2, 3, 1).numpy()):
        name = f"COCO_val2014_{i:012d}.png"
        Image.fromarray(arr).save(root / "val2014" / name)
        imgs.append({"id": i, "file_name": name, "width": size, "height": size})
        anns.append({"id": 100 + i, "image_id": i, "caption": f"image {i}"})
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": imgs, "annotations": anns}))
    return root


def _ref_cfg(root, image_size=16, n=0):
    return {"device": "cpu", "image_size": image_size,
            "assets": {"coco_root": str(root), "fid": {"extractor": TINY, "weights": None}},
            "score": {"batch_size": 5, "fid_reference": {"split": "val", "n": n, "seed": 0, "workers": 0}}}


def test_cache_key_encodes_dataset_subset_resolution_extractor():
    base = reference_cache_key("data/coco", "val", 0, 0, 256, "inception-v3-compat")
    assert base.endswith("_val_all_256px_inception-v3-compat") and base.startswith("coco-")
    variants = [
        reference_cache_key("other/coco", "val", 0, 0, 256, "inception-v3-compat"),
        reference_cache_key("data/coco", "train", 0, 0, 256, "inception-v3-compat"),
        reference_cache_key("data/coco", "val", 30000, 0, 256, "inception-v3-compat"),
        reference_cache_key("data/coco", "val", 30000, 1, 256, "inception-v3-compat"),
        reference_cache_key("data/coco", "val", 0, 0, 384, "inception-v3-compat"),
        reference_cache_key("data/coco", "val", 0, 0, 256, "clip-image"),
    ]
    assert len({base, *variants}) == 7
    assert reference_cache_key("data/coco/", "val", 0, 5, 256, "inception-v3-compat") == base  # seed unused for "all"


def test_reference_cached_reused_invalidated_and_mismatch_refused(tmp_path, monkeypatch):
    root = _coco(tmp_path / "coco")
    cfg = _ref_cfg(root)
    out = tmp_path / "fid" / f"{fr.reference_key_from_config(cfg)}.pt"

    calls = []
    real_compute = fr.compute_reference
    monkeypatch.setattr(fr, "compute_reference", lambda *a, **k: calls.append(1) or real_compute(*a, **k))

    ref = fr.ensure_reference(cfg, out)
    assert len(calls) == 1 and out.is_file()
    assert ref["meta"]["n_images"] == 12 and ref["meta"]["resolution"] == 16
    assert ref["mu"].shape == (24,) and ref["sigma"].shape == (24, 24)
    mtime = out.stat().st_mtime_ns

    again = fr.ensure_reference(cfg, out)  # reused: no recomputation, file untouched
    assert len(calls) == 1 and out.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again["mu"], ref["mu"])

    # the statistics equal the features of the LANCZOS-resized images computed directly
    from ranke.data.coco import EVAL, load_image

    ex = fid.load_fid_extractor(cfg["assets"]["fid"], "cpu")
    direct = torch.stack([load_image(root / "val2014" / f"COCO_val2014_{i:012d}.png", 16, EVAL) for i in range(12)])
    assert fid.frechet_distance(fid.fid_statistics(ex.features(direct)), ref) == pytest.approx(0.0, abs=1e-6)

    # a change of resolution or subset -> a different key, and the stale file is refused / recomputed
    for changed in (_ref_cfg(root, image_size=8), _ref_cfg(root, n=6)):
        assert fr.reference_key_from_config(changed) != fr.reference_key_from_config(cfg)
        with pytest.raises(fr.ReferenceMismatchError, match="other settings"):
            fr.load_reference(out, fr.expected_metadata(changed))
    subset = fr.ensure_reference(_ref_cfg(root, n=6), tmp_path / "fid" / "subset.pt")
    assert len(calls) == 2 and subset["meta"]["n_images"] == 6 and subset["meta"]["subset_seed"] == 0

    # same path, other settings: ensure_reference recomputes instead of reusing
    fr.ensure_reference(_ref_cfg(root, n=6), out)
    assert len(calls) == 3 and fr.load_reference(out)["meta"]["subset_n"] == 6


def test_reference_cli(tmp_path):
    root = _coco(tmp_path / "coco", n=4)
    cfg = _ref_cfg(root)
    out = tmp_path / "ref.pt"
    assert fr.main(["--config-json", json.dumps(cfg), "--out", str(out)]) == 0
    assert fr.load_reference(out, fr.expected_metadata(cfg))["meta"]["n_images"] == 4


def test_matches_torch_fidelity_calculate_metrics():
    """Our in-memory path gives the library's own FID for the same images and extractor."""

    class Images(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    a, b = _images(64, seed=5), _noisy(_images(64, seed=6), 20)
    lib = torch_fidelity.calculate_metrics(input1=Images(a), input2=Images(b), fid=True, feature_extractor=TINY,
                                           cuda=False, cache=False, verbose=False, batch_size=16,
                                           save_cpu_ram=True)["frechet_inception_distance"]
    ex = fid.load_fid_extractor({"extractor": TINY, "weights": None}, "cpu")
    ours = fid.fid_from_uint8(ex, [a], fid.fid_statistics(ex.features(b)))
    assert ours == pytest.approx(lib, rel=1e-4)
