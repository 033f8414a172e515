"""FID: torch-fidelity plumbing, reference cache, weights errors and the network guard (all offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ranke.data.coco import ImageReadError
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


@pytest.mark.parametrize("n_1, n_2, dim", [(400, 300, 64), (8, 12, 64), (5, 300, 64)])
def test_frechet_distance_equals_torch_fidelitys(n_1, n_2, dim):
    """Our symmetric trace term gives torch-fidelity's value (general eigen-solve of Sigma_1 Sigma_2),
    for full-rank and for rank-deficient covariances (few samples, as in a small study), with the
    reference's square root computed here or cached. (Rank-deficient products have many eigenvalues
    that are zero up to rounding; their square roots differ between the two solvers at 1e-9.)"""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    rng = np.random.default_rng(n_1 + n_2)
    mix = rng.standard_normal((dim, dim))
    a = torch.from_numpy(rng.standard_normal((n_1, dim)) @ mix)
    b = torch.from_numpy(rng.standard_normal((n_2, dim)) @ mix.T + 0.3)
    s1, s2 = fid.fid_statistics(a), fid.fid_statistics(b)
    expected = fid_statistics_to_metric(s1, s2, False)[KEY_METRIC_FID]
    assert fid.frechet_distance(s1, s2) == pytest.approx(expected, rel=1e-8)
    cached = dict(s2, sigma_sqrt=fid.covariance_sqrt(s2["sigma"]))
    assert fid.frechet_distance(s1, cached) == pytest.approx(expected, rel=1e-8)


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


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception-random.pth"
    fid.write_random_inception_weights(path, seed=0)
    return path


def test_download_function_is_guarded():
    with pytest.raises(fid.DownloadBlockedError, match="never downloads"):
        tf_inception.load_state_dict_from_url("https://example.invalid/w.pth")


def test_inception_from_local_weights_never_downloads(inception_weights, monkeypatch):
    weights = inception_weights
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


def test_reference_follows_the_one_bad_image_policy(tmp_path):
    """The same `bad_images` policy as tokenize: fail names the file; skip leaves it out, logs it
    and records it (tokenize used to skip a bad val image that the FID reference then failed on)."""
    root = _coco(tmp_path / "coco", n=5)
    victim = root / "val2014" / "COCO_val2014_000000000002.png"
    victim.write_bytes(b"not a png")
    cfg = _ref_cfg(root)
    with pytest.raises(ImageReadError, match=victim.name):
        fr.compute_reference(cfg, "cpu", workers=0)
    ref = fr.compute_reference(dict(cfg, bad_images="skip"), "cpu", workers=0)
    assert ref["meta"]["n_images"] == 4 and ref["meta"]["skipped_images"] == [str(victim)]
    from ranke.data.coco import EVAL, load_image

    ex = fid.load_fid_extractor(cfg["assets"]["fid"], "cpu")
    good = torch.stack([load_image(root / "val2014" / f"COCO_val2014_{i:012d}.png", 16, EVAL) for i in (0, 1, 3, 4)])
    assert fid.frechet_distance(fid.fid_statistics(ex.features(good)), ref) == pytest.approx(0.0, abs=1e-6)


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


# ----------------------------------------------------------------------------------------------
# FID protocol "clean": PIL-bicubic resize to 299 in float, torch-fidelity's Inception on float input


def _pil_float_bicubic(images: torch.Tensor, size) -> np.ndarray:
    """clean-fid's "clean" resize, per channel with PIL itself: (B, C, H, W) -> (B, C, h, w) float32."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    return np.stack([np.stack([np.asarray(Image.fromarray(ch.numpy().astype(np.float32), mode="F")
                                          .resize((out_w, out_h), Image.BICUBIC)) for ch in img]) for img in images])


@pytest.mark.parametrize("in_hw, out_hw", [
    ((256, 256), (299, 299)),   # the LlamaGen evaluation: 256 px images to Inception's 299
    ((384, 384), (299, 299)),   # Janus' 384 px: downscale (PIL stretches the kernel: antialiased)
    ((200, 310), (299, 299)),   # non-square, up in one axis and down in the other
    ((16, 24), (299, 299)),     # strong upscale (the test images of this file)
    ((299, 299), (299, 299)),   # identity
    ((64, 48), (37, 101)),      # other output sizes, both ways
])
def test_resize_matches_pil_float_bicubic(in_hw, out_hw):
    """Tolerance 1e-4 (pixel values 0..255): PIL accumulates in double and stores float32 between
    the passes, as we do; only the summation order may differ. Measured: 0 (bit-exact)."""
    g = torch.Generator().manual_seed(sum(in_hw))
    images = torch.randint(0, 256, (2, 3, *in_hw), generator=g, dtype=torch.uint8)  # sharp: overshoots
    ours = fid.resize_bicubic_like_pil(images.float(), out_hw)
    assert ours.dtype == torch.float32 and ours.shape == (2, 3, *out_hw)
    np.testing.assert_allclose(ours.numpy(), _pil_float_bicubic(images, out_hw), rtol=0, atol=1e-4)


def test_clean_input_is_clipped_pil_resize_and_weights_are_pils():
    images = torch.randint(0, 256, (1, 3, 20, 30), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    x = fid.clean_inception_input(images)
    expected = np.clip(_pil_float_bicubic(images, 299), 0, 255)
    assert x.shape == (1, 3, 299, 299) and 0 <= x.min() and x.max() <= 255
    assert (_pil_float_bicubic(images, 299) > 255).any()  # the clip is exercised
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-4)
    # rows are normalised; an identity resize is the identity matrix
    w = fid.pil_bicubic_weights(256, 299)
    assert torch.allclose(w.sum(1), torch.ones(299, dtype=torch.float64), atol=1e-12)
    assert torch.equal(fid.pil_bicubic_weights(7, 7), torch.eye(7, dtype=torch.float64))
    with pytest.raises(ValueError, match="uint8"):
        fid.clean_inception_input(images.float())


def test_clean_network_equals_torch_fidelity_forward_at_299(inception_weights):
    """For uint8 images already at 299x299 torch-fidelity's TF1 resize is the identity, so its own
    forward and our float path must give the same 2048-d features."""
    tf_net = tf_inception.FeatureExtractorInceptionV3(fid.INCEPTION, ["2048"],
                                                      feature_extractor_weights_path=str(inception_weights))
    clean_net = fid.CleanInceptionV3(fid.INCEPTION, ["2048"], feature_extractor_weights_path=str(inception_weights))
    images = _noisy(_images(2, size=299, seed=4), 30)
    with torch.no_grad():
        (theirs,), (ours,) = tf_net(images), clean_net(images.float())
    assert theirs.shape == (2, 2048) and theirs.abs().sum() > 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    with pytest.raises(ValueError, match="299"):
        clean_net(images[..., :298].float())
    with pytest.raises(ValueError, match="2048"):
        fid.CleanInceptionV3(fid.INCEPTION, ["768"], feature_extractor_weights_path=str(inception_weights))


def test_protocols_feed_inception_as_they_say(inception_weights, monkeypatch):
    """clean: features of the clipped PIL-bicubic (float) image; torch-fidelity: the library's own forward
    (TF1 bilinear inside). Reference for clean: torch-fidelity's own forward with its resize step
    replaced by PIL's float resize + clip, i.e. clean-fid's definition run through the library's code."""
    images = _noisy(_images(2, size=24, seed=8), 40)
    cfg = {"extractor": fid.INCEPTION, "weights": str(inception_weights)}
    clean = fid.load_fid_extractor(cfg, "cpu")  # the default protocol
    legacy = fid.load_fid_extractor(cfg, "cpu", protocol="torch-fidelity")
    assert (clean.protocol, legacy.protocol) == ("clean", "torch-fidelity")
    assert type(legacy.module) is tf_inception.FeatureExtractorInceptionV3  # the library's own forward
    assert "PIL-bicubic" in clean.preprocessing and "TF1-style bilinear" in legacy.preprocessing
    ours_clean, ours_legacy = clean.features(images), legacy.features(images)

    pil = torch.from_numpy(np.clip(_pil_float_bicubic(images, 299), 0, 255))
    monkeypatch.setattr(tf_inception, "interpolate_bilinear_2d_like_tensorflow1x", lambda x, **k: pil.clone())
    with torch.no_grad():
        clean_fid_definition = legacy.module(images)[0]
    scale = clean_fid_definition.abs().mean()
    assert scale > 0.1  # the stand-in's features are of order 1 (write_random_inception_weights)
    torch.testing.assert_close(ours_clean, clean_fid_definition, rtol=1e-4, atol=1e-4 * scale)
    assert (ours_clean - ours_legacy).abs().mean() > 1e-2 * scale  # the protocols really differ

    with pytest.raises(ValueError, match="protocol"):
        fid.load_fid_extractor(cfg, "cpu", protocol="legacy")
    tiny = fid.load_fid_extractor({"extractor": TINY, "weights": None}, "cpu", protocol="clean")
    assert tiny.protocol is None and "does not apply" in tiny.preprocessing  # Inception only


def test_protocol_enters_cache_key_and_metadata(tmp_path, inception_weights):
    root = _coco(tmp_path / "coco", n=2)

    def cfg(extractor, protocol=None, weights=None):
        c = _ref_cfg(root)
        c["assets"]["fid"] = {"extractor": extractor, "weights": weights}
        if protocol is not None:
            c["score"]["fid_protocol"] = protocol
        return c

    inc = str(inception_weights)
    keys = {p: fr.reference_key_from_config(cfg(fid.INCEPTION, p, inc)) for p in (None, "clean", "torch-fidelity")}
    assert keys[None] == keys["clean"] and keys["clean"].endswith("_16px_inception-v3-compat_clean")
    assert keys["torch-fidelity"].endswith("_16px_inception-v3-compat_torch-fidelity")
    # the protocol does not apply to other extractors: same key, no protocol in the settings
    assert fr.reference_key_from_config(cfg(TINY, "clean")) == fr.reference_key_from_config(cfg(TINY, "torch-fidelity"))
    assert fr.reference_settings(cfg(TINY, "clean"))["fid_protocol"] is None
    with pytest.raises(ValueError, match="score.fid_protocol"):
        fr.reference_key_from_config(cfg(TINY, "bilinear"))

    clean_cfg, legacy_cfg = cfg(fid.INCEPTION, "clean", inc), cfg(fid.INCEPTION, "torch-fidelity", inc)
    out = tmp_path / f"{keys['clean']}.pt"
    ref = fr.ensure_reference(clean_cfg, out)
    assert ref["meta"]["fid_protocol"] == "clean" and "PIL-bicubic" in ref["meta"]["preprocessing"]
    assert "fid_protocol" in fr.MATCH_FIELDS
    with pytest.raises(fr.ReferenceMismatchError, match="fid_protocol: file has 'clean', asked 'torch-fidelity'"):
        fr.load_reference(out, fr.expected_metadata(legacy_cfg))
    # the statistics are those of the clean features of the LANCZOS-resized images
    from ranke.data.coco import EVAL, load_image

    direct = torch.stack([load_image(root / "val2014" / f"COCO_val2014_{i:012d}.png", 16, EVAL) for i in range(2)])
    ex = fid.load_fid_extractor(clean_cfg["assets"]["fid"], "cpu", protocol="clean")
    stats = fid.fid_statistics(ex.features(direct))
    np.testing.assert_allclose(stats["mu"], ref["mu"], rtol=1e-5, atol=1e-6)
