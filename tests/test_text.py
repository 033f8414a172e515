"""T5 text encoder over a local directory, the tiny random T5, and the two padding conventions."""

import pytest
import torch

from ranke.models.text import TextEncoder, left_pad, make_tiny_t5

TEXTS = ["a red circle on the left", "a small blue square at the top", "green triangle, bottom right!"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("t5") / "t5", TEXTS, d_model=32, num_layers=1, num_heads=2,
                        d_ff=64, seed=0)


def test_tiny_t5_roundtrip_right_padding(t5_dir):
    enc = TextEncoder(t5_dir, max_length=10, padding="right")
    emb, mask = enc.encode(["A red circle", "green triangle on the left, bottom right at the top"])
    assert emb.shape == (2, 10, 32) and emb.dtype == torch.float32 and mask.dtype == torch.bool
    # words + </s>; the second caption (12 tokens + </s>) is truncated to max_length
    assert mask.sum(1).tolist() == [4, 10]
    assert mask[0, :4].all() and not mask[0, 4:].any()
    assert emb[0, 4:].abs().sum() == 0 and (emb[0, :4].abs().sum(-1) > 0).all()
    ids = enc.tokenizer(["a red circle"])["input_ids"][0]
    assert ids[-1] == 1 and enc.tokenizer.pad_token_id == 0
    # unknown words map to <unk> rather than failing
    assert enc.tokenizer(["zebra"])["input_ids"][0][0] == 2
    # deterministic: the same seed writes the same weights
    again = TextEncoder(t5_dir, max_length=10)
    torch.testing.assert_close(again.encode(["a red circle"])[0], emb[:1])


def test_left_padding_matches_upstream_flip(t5_dir):
    right = TextEncoder(t5_dir, max_length=8, padding="right")
    left = TextEncoder(t5_dir, max_length=8, padding="left")
    caps = ["a red circle", "a small blue square at the top"]
    er, mr = right.encode(caps)
    el, ml = left.encode(caps)
    for i in range(2):
        n = int(mr[i].sum())
        # upstream: cat(emb[n:], emb[:n]) and a flipped mask
        torch.testing.assert_close(el[i], torch.cat([er[i, n:], er[i, :n]]))
        assert torch.equal(ml[i], mr[i].flip(0))
    assert not ml[0, :4].any() and ml[0, 4:].all()


def test_left_pad_function():
    emb = torch.arange(5.0)[None, :, None].repeat(2, 1, 1)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    e, m = left_pad(emb * mask[..., None], mask)
    assert e[0, :, 0].tolist() == [0, 0, 0, 0, 1] and m[0].tolist() == [False, False, False, True, True]
    assert torch.equal(e[1], emb[1]) and m[1].all()


def test_missing_directory_and_bad_padding(tmp_path, t5_dir):
    with pytest.raises(FileNotFoundError, match="no_such_t5"):
        TextEncoder(tmp_path / "no_such_t5")
    with pytest.raises(ValueError, match="padding"):
        TextEncoder(t5_dir, padding="middle")


def test_zero_padding_false_keeps_the_raw_t5_rows(t5_dir):
    """Official training rollouts use T5's raw outputs at padded positions (trainer.py:393-398);
    the evaluation sampler zeroes them (sample_t2i_ddp.py:185), which stays the default."""
    caps = ["a red circle", "a small blue square at the top"]
    right = TextEncoder(t5_dir, max_length=8, padding="right")
    zeroed, mask = right.encode(caps)
    raw, mask_raw = right.encode(caps, zero_padding=False)
    assert torch.equal(mask, mask_raw)
    tok = right.tokenizer(caps, max_length=8, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        t5 = right.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
    torch.testing.assert_close(raw, t5.float(), atol=0, rtol=0)
    assert (raw[0, 4:].abs().sum(-1) > 0).all() and zeroed[0, 4:].abs().sum() == 0
    torch.testing.assert_close(raw * mask[..., None], zeroed, atol=0, rtol=0)
    # left padding moves the raw padded rows in front of the real tokens, as it moves zero rows
    left_raw, left_mask = TextEncoder(t5_dir, max_length=8, padding="left").encode(caps, zero_padding=False)
    n = int(mask[0].sum())
    torch.testing.assert_close(left_raw[0], torch.cat([raw[0, n:], raw[0, :n]]), atol=0, rtol=0)
    assert torch.equal(left_mask[0], mask[0].flip(0))


def test_clean_captions_feeds_t5_the_officially_cleaned_caption(t5_dir):
    """clean_captions: T5 sees the caption after the official two-pass cleaning (and only T5)."""
    from ranke.models.caption_cleaning import t5_caption

    raw = ["A RED circle, see http://example.com/x.png &amp; more!!!", "green   triangle — bottom right"]
    cleaned = TextEncoder(t5_dir, max_length=12, clean_captions=True).encode(raw)
    plain = TextEncoder(t5_dir, max_length=12)
    by_hand = plain.encode([t5_caption(c) for c in raw])
    torch.testing.assert_close(cleaned[0], by_hand[0])
    assert torch.equal(cleaned[1], by_hand[1])
    assert not torch.equal(plain.encode(raw)[1], cleaned[1])  # the raw caption tokenises differently
