"""ranke.models.clip: local-only loading, custom config registration, embedding conventions."""

from __future__ import annotations

import json

import pytest
import torch

from ranke.models.clip import ClipModel, create_clip, load_clip

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "mlp_ratio": 2.0},
}


@pytest.fixture(scope="module")
def tiny_clip_files(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("clip")
    cfg_path = d / "ranke-test-clip.json"
    cfg_path.write_text(json.dumps(TINY_CFG))
    model = create_clip("ranke-test-clip", config=cfg_path)
    torch.save(model.state_dict(), d / "weights.pt")
    cfg = {"model": "ranke-test-clip", "config": str(cfg_path), "weights": str(d / "weights.pt"),
           "quick_gelu": False, "prompt_prefix": ""}
    return model, cfg


def test_load_roundtrip_and_frozen(tiny_clip_files):
    model, cfg = tiny_clip_files
    clip = load_clip(cfg, "cpu")
    assert isinstance(clip, ClipModel) and clip.image_size == 16 and clip.embed_dim == 16
    assert not clip.model.training and not any(p.requires_grad for p in clip.model.parameters())
    sd_a, sd_b = model.state_dict(), clip.model.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_embeddings_are_normalised_and_score_is_100_cos(tiny_clip_files):
    _, cfg = tiny_clip_files
    clip = load_clip(cfg)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    caps = ["a red circle", "a blue square", "a green cross"]
    ie, te = clip.embed_images(images), clip.embed_texts(caps)
    assert ie.shape == te.shape == (3, 16)
    assert torch.allclose(ie.norm(dim=-1), torch.ones(3), atol=1e-5)
    s = clip.score(images, caps)
    assert torch.allclose(s, 100 * (ie * te).sum(-1), atol=1e-4)
    with pytest.raises(ValueError):
        clip.score(images, caps[:2])


def test_images_of_another_size_are_resized_differentiably(tiny_clip_files):
    _, cfg = tiny_clip_files
    clip = load_clip(cfg)
    x = (torch.rand(2, 3, 40, 40) * 2 - 1).requires_grad_(True)
    clip.score(x, ["a", "b"]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # a constant image maps to ((c + 1) / 2 - mean) / std everywhere
    pre = clip.preprocess(torch.zeros(1, 3, 40, 40))
    assert pre.shape == (1, 3, 16, 16)
    assert torch.allclose(pre, ((0.5 - clip.mean) / clip.std).expand(1, 3, 16, 16), atol=1e-5)


def test_prompt_prefix_is_applied(tiny_clip_files):
    _, cfg = tiny_clip_files
    plain, prefixed = load_clip(cfg), load_clip({**cfg, "prompt_prefix": "A photo depicts "})
    assert not torch.equal(plain.tokenize(["a cat"]), prefixed.tokenize(["a cat"]))
    assert torch.equal(prefixed.tokenize(["a cat"]), plain.tokenize(["A photo depicts a cat"]))
    assert plain.tokenize(["a cat"]).shape == (1, 16)  # context length of the custom config


def test_missing_weights_name_the_key_and_path(tiny_clip_files, tmp_path):
    _, cfg = tiny_clip_files
    with pytest.raises(FileNotFoundError, match=r"assets\.reward\.weights.*nope\.pt"):
        load_clip({**cfg, "weights": str(tmp_path / "nope.pt")}, key="assets.reward")
    with pytest.raises(FileNotFoundError, match=r"assets\.clip\.config"):
        load_clip({**cfg, "config": str(tmp_path / "ranke-test-clip.json")})


def test_config_stem_must_match_model_name(tiny_clip_files, tmp_path):
    _, cfg = tiny_clip_files
    other = tmp_path / "other-name.json"
    other.write_text(json.dumps(TINY_CFG))
    with pytest.raises(ValueError, match="stem"):
        load_clip({**cfg, "config": str(other)})


def test_weights_for_another_architecture_fail_loudly(tiny_clip_files, tmp_path):
    _, cfg = tiny_clip_files
    cfg2 = json.loads(json.dumps(TINY_CFG))
    cfg2["embed_dim"] = 8
    p = tmp_path / "ranke-test-clip-8.json"
    p.write_text(json.dumps(cfg2))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_clip({**cfg, "model": "ranke-test-clip-8", "config": str(p)})
