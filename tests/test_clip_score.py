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
