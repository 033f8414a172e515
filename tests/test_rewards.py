"""Training reward models: the official CLIP normalisation constants and batch-independent text
embeddings (what makes a resumed round equal an uninterrupted one)."""

import torch

from ranke.rewards import CLIP_MEAN, CLIP_STD, build_reward


def test_clip_normalisation_is_the_official_truncated_one():
    # RankE autoregressive/models/vqrl_models.py:145,149: OpenAI's constants cut after 4 decimals
    assert CLIP_MEAN == (0.4814, 0.4578, 0.4082)
    assert CLIP_STD == (0.2686, 0.2613, 0.2757)
    openai_mean, openai_std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    assert all(abs(a - b) < 1e-4 and a <= b for a, b in zip(CLIP_MEAN + CLIP_STD, openai_mean + openai_std))


def test_a_caption_embedding_does_not_depend_on_the_other_captions(tmp_path):
    """The cache is filled in whatever batches the steps happen to bring; a batched text forward
    differs in the last bits from a lone one, so each new caption is embedded alone."""
    from conftest import tiny_open_clip_reward

    cfg = tiny_open_clip_reward(tmp_path)
    caps = [f"a {c} {s} on a {b} background" for c in ("red", "blue") for s in ("circle", "square")
            for b in ("dark", "white")]
    one_by_one = build_reward(cfg)
    alone = torch.stack([one_by_one.embed_texts([c])[0] for c in caps])
    for n in (2, 3, len(caps)):  # (batches of 2 and 3 differ from lone captions on this CPU)
        assert torch.equal(build_reward(cfg).embed_texts(caps[:n]), alone[:n]), n
    reward = build_reward(cfg)
    reward.embed_texts(caps[:5])
    assert torch.equal(reward.embed_texts(caps[3:8] + caps[:2]), torch.cat([alone[3:8], alone[:2]]))
    small = build_reward(cfg)
    small._cache_size = 4  # overflow: the cache is cleared and the call still answers every caption
    assert torch.equal(small.embed_texts(caps[:3]), alone[:3])
    assert torch.equal(small.embed_texts(caps[2:6]), alone[2:6])
