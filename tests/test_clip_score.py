"""CLIP score: plumbing, convention, matching > shuffled, files missing."""

from __future__ import annotations

import json

import pytest
import torch

from ranke.metrics import clip_score as cs
from ranke.metrics import to_uint8

torch.set_num_threads(1)

COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0), "white": (1.0, 1.0, 1.0)}


class ColourClip:
    """A constructed CLIP: the image embedding is the mean colour, the text embedding the named colour,
    so a caption matches exactly its own image (cosine 1) and a shuffled one is worse."""

    image_size = 8

    def __init__(self):
        self.seen_sizes = []

    def embed_images(self, images):
        self.seen_sizes.append(tuple(images.shape[-2:]))
        return torch.nn.functional.normalize(images.mean((2, 3)) + 0.01, dim=-1)

    def embed_texts(self, captions):
        return torch.nn.functional.normalize(torch.tensor([COLOURS[c.split()[-1]] for c in captions]) + 0.01, dim=-1)


def _solid(colours, size=16):
    return to_uint8(torch.stack([torch.tensor(COLOURS[c]).view(3, 1, 1).expand(3, size, size) for c in colours]))


def test_matching_captions_beat_shuffled():
    clip = ColourClip()
    colours = ["red", "green", "blue", "white"] * 3
    captions = [f"a photo of {c}" for c in colours]
    images = _solid(colours)
    match = cs.clip_score(clip, images.split(5), captions)
    shuffled = cs.clip_score(clip, images.split(5), captions[1:] + captions[:1])
    assert match == pytest.approx(100.0, abs=0.1)
    assert shuffled < match - 10
    assert set(clip.seen_sizes) == {(8, 8)}  # resized on the tensor path to the CLIP resolution
    with pytest.raises(ValueError, match="captions"):
        cs.clip_score(clip, [images], captions[:-1])


def test_pair_scores_are_100_cosine():
    a, b = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    assert cs.pair_scores(a, b).tolist() == pytest.approx([100.0, 0.0])


def test_convention_strings():
    real = cs.clip_convention({"model": "ViT-B-32-quickgelu", "prompt_prefix": "A photo depicts "})
    assert real == "100 x mean cosine, OpenAI ViT-B/32 (QuickGELU), prefix 'A photo depicts '"
    assert "demo CLIP" in cs.clip_convention({"model": "ranke-demo-clip", "prompt_prefix": ""})


def _tiny_open_clip(tmp_path):
    from ranke.models.clip import create_clip

    name = "ranke-test-clip-score"
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    torch.manual_seed(0)
    model = create_clip(name, config=config)
    weights = tmp_path / "clip.pt"
    torch.save(model.state_dict(), weights)
    return {"model": name, "config": str(config), "weights": str(weights), "quick_gelu": False, "prompt_prefix": "A photo depicts "}


def test_open_clip_model_scores_agree_with_clipmodel_score(tmp_path):
    cfg = _tiny_open_clip(tmp_path)
    clip = cs.load_clip_model(cfg, "cpu")
    images = to_uint8(torch.rand(6, 3, 16, 16) * 2 - 1)
    captions = [f"a {c} thing" for c in ["red", "green", "blue", "red", "green", "blue"]]
    ours = cs.clip_score(clip, images.split(4), captions)
    with torch.no_grad():
        reference = clip.score(images.float() / 127.5 - 1, captions).mean().item()
    assert ours == pytest.approx(reference, abs=1e-3)


def test_missing_clip_files_are_named(tmp_path):
    cfg = _tiny_open_clip(tmp_path)
    for field in ("weights", "config"):
        broken = {**cfg, field: str(tmp_path / f"missing-{field}")}
        with pytest.raises(FileNotFoundError, match=rf"assets\.clip\.{field}: .*missing-{field}"):
            cs.load_clip_model(broken, "cpu")
    with pytest.raises(FileNotFoundError, match=r"assets\.clip\.weights is null"):
        cs.load_clip_model({**cfg, "weights": None}, "cpu")


class RecordingClip:
    """Records what reaches embed_images (the resized [-1, 1] images)."""

    image_size = 8

    def __init__(self):
        self.seen = []

    def embed_images(self, images):
        self.seen.append(images.clone())
        return torch.nn.functional.normalize(images.flatten(1)[:, :4] + 2.0, dim=-1)


def test_image_resize_is_official_bicubic_without_antialias():
    """Official (evaluation.py:423): F.interpolate(x, 224, mode="bicubic", align_corners=False), no antialias."""
    images = to_uint8(torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    clip = RecordingClip()
    cs.image_embeddings(clip, images)
    x = images.float() / 127.5 - 1
    official = torch.nn.functional.interpolate(x, size=(8, 8), mode="bicubic", align_corners=False)
    antialiased = torch.nn.functional.interpolate(x, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
    assert (official - antialiased).abs().mean() > 0.05  # the test can tell the two apart
    torch.testing.assert_close(clip.seen[0], official, rtol=0, atol=1e-6)


def test_image_embeddings_equal_the_official_formula_on_open_clip(tmp_path):
    """[-1, 1] -> (x + 1) / 2 -> bicubic (no antialias) -> CLIP mean/std -> encode_image, written out."""
    clip = cs.load_clip_model(_tiny_open_clip(tmp_path), "cpu")
    images = to_uint8(torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    x = (images.float() / 255 - 0.5) / 0.5  # ToTensor + Normalize(0.5, 0.5) of the official dataset
    x = torch.nn.functional.interpolate((x + 1) / 2, size=(16, 16), mode="bicubic", align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        official = torch.nn.functional.normalize(clip.model.encode_image((x - mean) / std), dim=-1)
    torch.testing.assert_close(cs.image_embeddings(clip, images), official, rtol=0, atol=1e-5)


def test_clip_precision_switch(tmp_path):
    assert cs.resolve_clip_precision("auto", "cpu") == "fp32"
    assert cs.resolve_clip_precision("auto", "cuda") == "fp16"  # as the official clip.load(..., device="cuda")
    assert cs.resolve_clip_precision("fp16", "cpu") == "fp16" and cs.resolve_clip_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ValueError, match="score.clip_precision"):
        cs.resolve_clip_precision("bf16", "cpu")

    cfg = _tiny_open_clip(tmp_path)
    fp32, fp16 = cs.load_clip_model(cfg, "cpu"), cs.load_clip_model(cfg, "cpu", precision="fp16")
    # OpenAI's mixed fp16: linear / conv / attention weights in fp16, LayerNorm in fp32
    assert fp16.model.visual.conv1.weight.dtype == torch.float16 and fp16.input_dtype == torch.float16
    assert fp16.model.visual.ln_pre.weight.dtype == torch.float32
    assert fp32.model.visual.conv1.weight.dtype == torch.float32
    images = to_uint8(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    captions = ["a red thing", "a green thing", "a blue thing", "a white thing"]
    s32, s16 = cs.clip_score(fp32, [images], captions), cs.clip_score(fp16, [images], captions)
    assert s16 != s32 and s16 == pytest.approx(s32, abs=0.5)  # fp16 rounding only
