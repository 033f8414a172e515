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


# ----------------------------------------------------------------------------------------------
# OpenAI's file format (the real assets.clip.weights is OpenAI's TorchScript ViT-B-32.pt)

STUDY_CLIP = {"model": "ViT-B-32-quickgelu", "config": None, "quick_gelu": True, "prompt_prefix": "A photo depicts "}


@pytest.fixture(scope="module")
def openai_standin(tmp_path_factory):
    from ranke.models.clip import write_openai_clip_standin

    return write_openai_clip_standin(tmp_path_factory.mktemp("openai") / "ViT-B-32.pt", seed=0)


def _archive_state_dict(path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").state_dict()


def test_standin_is_an_openai_torchscript_archive(openai_standin):
    from ranke.models.clip import is_openai_format, is_torchscript_archive

    assert is_torchscript_archive(openai_standin) and is_openai_format(openai_standin)
    assert openai_standin.stat().st_size < 10e6  # a few MB
    sd = _archive_state_dict(openai_standin)
    for k in ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
              "visual.transformer.resblocks.0.attn.in_proj_weight", "visual.ln_post.weight", "token_embedding.weight",
              "positional_embedding", "transformer.resblocks.0.mlp.c_fc.weight", "ln_final.weight", "text_projection",
              "logit_scale"):
        assert k in sd, k
    # the top-level entries of OpenAI's archives, with ViT-B/32's values; patch 32 at 224 px -> 7x7 + 1 tokens
    assert {k: int(sd[k]) for k in ("input_resolution", "context_length", "vocab_size")} == \
        {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}
    assert sd["visual.conv1.weight"].shape[-1] == 32 and sd["visual.positional_embedding"].shape[0] == 50
    assert sd["token_embedding.weight"].shape[0] == 49408 and sd["positional_embedding"].shape[0] == 77
    assert sd["visual.conv1.weight"].dtype == torch.float16 and "attn_mask" not in sd


def test_openai_file_loads_through_load_clip_with_the_study_block(openai_standin):
    """Before: the built-in ViT-B-32 architecture was instantiated and the stand-in's weights did not fit."""
    import open_clip

    from ranke.metrics.clip_score import clip_convention

    cfg = {**STUDY_CLIP, "weights": str(openai_standin)}
    clip = load_clip(cfg)
    assert clip.image_size == 224 and clip.embed_dim == 64  # the architecture comes from the file
    acts = [m for m in clip.model.modules() if isinstance(m, (open_clip.transformer.QuickGELU, torch.nn.GELU))]
    assert acts and all(isinstance(m, open_clip.transformer.QuickGELU) for m in acts)  # QuickGELU active
    assert clip_convention(cfg) == "100 x mean cosine, OpenAI ViT-B/32 (QuickGELU), prefix 'A photo depicts '"
    sd = _archive_state_dict(openai_standin)
    for k, v in clip.model.state_dict().items():
        assert torch.equal(v, sd[k].float()), k
    assert clip.mean.flatten().tolist() == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    tokens = clip.tokenize(["a cat"])
    assert tokens.shape == (1, 77) and torch.equal(tokens, clip.tokenizer(["A photo depicts a cat"]))
    images = torch.rand(2, 3, 224, 224) * 2 - 1
    assert torch.isfinite(clip.score(images, ["a cat", "a dog"])).all()


def test_openai_state_dict_file_and_fp16_load_too(openai_standin, tmp_path, tiny_clip_files):
    from ranke.models.clip import is_openai_format, is_torchscript_archive

    # an open_clip state dict (no OpenAI entries) keeps the architecture named by the config
    assert not is_openai_format(tiny_clip_files[1]["weights"])

    plain = tmp_path / "openai-state-dict.pt"
    torch.save(dict(_archive_state_dict(openai_standin)), plain)  # the archive's state dict as a plain file
    assert is_openai_format(plain) and not is_torchscript_archive(plain)
    a, b = load_clip({**STUDY_CLIP, "weights": str(openai_standin)}), load_clip({**STUDY_CLIP, "weights": str(plain)})
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())

    half = load_clip({**STUDY_CLIP, "weights": str(openai_standin)}, precision="fp16")
    assert half.model.visual.conv1.weight.dtype == torch.float16  # as OpenAI's clip.load on cuda
    assert half.model.ln_final.weight.dtype == torch.float32
    images = torch.rand(2, 3, 224, 224) * 2 - 1
    torch.testing.assert_close(half.embed_images(images), a.embed_images(images), rtol=0, atol=2e-2)


def test_openai_file_with_gelu_config_is_refused(openai_standin):
    with pytest.raises(ValueError, match="QuickGELU"):
        load_clip({**STUDY_CLIP, "model": "ViT-B-32", "quick_gelu": False, "weights": str(openai_standin)})
