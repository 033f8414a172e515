"""LlamaGen t2i GPT: upstream key/shape compatibility, golden teacher-forced logits, masks, inputs."""

import json

import pytest
import torch

from conftest import seeded_state_dict
from ranke.models.gpt import GPT, GPTConfig, build_attention_mask


def golden_model(golden) -> GPT:
    c = golden["config"]
    cfg = GPTConfig(
        dim=c["dim"], n_layer=c["n_layer"], n_head=c["n_head"], multiple_of=c["multiple_of"],
        vocab_size=c["vocab_size"], block_size=c["block_size"], cls_token_num=c["cls_token_num"],
        caption_dim=c["caption_dim"], norm_eps=c["norm_eps"], rope_base=c["rope_base"],
    )
    model = GPT(cfg).eval()
    model.load_state_dict(seeded_state_dict(model))
    return model


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return torch.load(fixtures_dir / "llamagen" / "golden_gpt_t2i.pt")


@pytest.mark.parametrize("preset", ["GPT-B", "GPT-L", "GPT-XL"])
def test_presets_match_upstream_manifest(fixtures_dir, preset):
    manifest = json.loads((fixtures_dir / "llamagen" / "state_dict_manifest.json").read_text())
    (entry,) = [v for k, v in manifest.items() if k.startswith(preset + " ")]
    with torch.device("meta"):
        model = GPT(GPTConfig.preset(preset))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == entry["state_dict"]
    assert model.num_params() == entry["parameters"]


@pytest.mark.parametrize("kind,key", [("ranke", "teacher_forced_image_logits"),
                                      ("generation", "teacher_forced_image_logits_generation_mask")])
def test_golden_teacher_forced_logits(golden, kind, key):
    model = golden_model(golden)
    inp = golden["inputs"]
    with torch.no_grad():
        logits = model(inp["caption_embeddings"], inp["caption_mask"].bool(), inp["tokens"], mask=kind)
    torch.testing.assert_close(logits, golden["expected"][key], atol=1e-4, rtol=0)


def test_masks_differ_only_inside_the_caption_block():
    cap = torch.tensor([[False, True, True]])
    gen = build_attention_mask(cap, 5, "generation")[0, 0]
    rk = build_attention_mask(cap, 5, "ranke")[0, 0]
    expected_gen = torch.tensor([
        [1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(gen, expected_gen)
    assert torch.equal(rk[3:], gen[3:])
    assert torch.equal(rk[1:3, :3], torch.tensor([[0, 1, 1], [0, 1, 1]], dtype=torch.bool))
    assert rk[0].tolist() == [False, True, True, False, False]  # the padded query does not see itself
    with pytest.raises(ValueError, match="generation"):
        build_attention_mask(cap, 5, "causal")


def small_cfg(**kw):
    base = dict(dim=32, n_layer=2, n_head=2, multiple_of=16, vocab_size=50, block_size=9, cls_token_num=6,
                caption_dim=12)
    return GPTConfig(**{**base, **kw})


def official_scoring_mask(caption_mask: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, S, S) the official log-prob mask as trainer.py:355-364 describes it: lower-triangular,
    the caption block all True, then AND with a key mask that is False at padded caption keys."""
    b, t = caption_mask.shape
    m = torch.tril(torch.ones(seq_len, seq_len, dtype=torch.bool))
    m[:t, :t] = True
    keys = torch.cat([caption_mask.bool(), torch.ones(b, seq_len - t, dtype=torch.bool)], dim=1)
    return m.unsqueeze(0) & keys.unsqueeze(1)


def test_ranke_mask_is_the_official_scoring_mask_on_right_padded_captions():
    """No forced diagonal: on right-padded captions position T-1 (which predicts image token 0) is a
    padded query, and seeing itself changed token 0's logits; all later tokens are unaffected."""
    torch.manual_seed(0)
    model = GPT(small_cfg()).eval()
    torch.nn.init.normal_(model.output.weight, std=0.5)
    cap = torch.arange(6)[None, :] < torch.tensor([[6], [2], [4]])  # right padding
    emb = torch.randn(3, 6, 12) * cap[..., None]
    codes = torch.randint(0, 50, (3, 9))
    seq = 6 + 8
    official = official_scoring_mask(cap, seq)
    assert torch.equal(build_attention_mask(cap, seq, "ranke")[:, 0], official)

    def logits_under(mask):  # GPT.forward with an explicit (B, S, S) mask
        x = torch.cat([model.embed_caption(emb), model.tok_embeddings(codes[:, :-1])], dim=1)
        return model.head(model.run_layers(x, 0, mask[:, None])[:, 5:])

    with torch.no_grad():
        ours = model(emb, cap, codes, mask="ranke")
        want = logits_under(official)
        forced_diagonal = logits_under(official | torch.eye(seq, dtype=torch.bool))
    torch.testing.assert_close(ours, want, atol=1e-6, rtol=0)
    assert float((forced_diagonal[1:, 0] - ours[1:, 0]).abs().max()) > 1e-2  # padded captions: token 0 moved
    torch.testing.assert_close(forced_diagonal[:, 1:], ours[:, 1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(forced_diagonal[0], ours[0], atol=1e-6, rtol=0)  # unpadded caption: same


def test_ranke_mask_keeps_a_caption_without_real_tokens_finite():
    model = GPT(small_cfg()).eval()
    cap = torch.zeros(1, 6, dtype=torch.bool)
    m = build_attention_mask(cap, 14, "ranke")[0, 0]
    assert m.any(dim=-1).all() and torch.equal(m[:6, :6], torch.eye(6, dtype=torch.bool))
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 6, 12), cap, torch.zeros(1, 9, dtype=torch.long), mask="ranke")).all()


def test_uncond_embedding_has_120_rows_and_first_rows_are_used():
    model = GPT(small_cfg())
    assert model.cls_embedding.uncond_embedding.shape == (120, 12)
    u = model.uncond_caption(3)
    assert u.shape == (3, 6, 12)
    assert torch.equal(u[1], model.cls_embedding.uncond_embedding[:6])


def test_caption_dropout_uses_the_uncond_caption():
    torch.manual_seed(0)
    model = GPT(small_cfg())
    torch.nn.init.normal_(model.output.weight, std=0.5)
    emb, mask = torch.randn(2, 6, 12), torch.ones(2, 6, dtype=torch.bool)
    codes = torch.randint(0, 50, (2, 9))
    drop = torch.tensor([True, False])
    with torch.no_grad():
        dropped = model(emb, mask, codes, drop_caption=drop)
        uncond = model(model.uncond_caption(2), mask, codes)
        plain = model(emb, mask, codes)
    torch.testing.assert_close(dropped[0], uncond[0])
    torch.testing.assert_close(dropped[1], plain[1])
    rate = model.sample_caption_drop(4000, generator=torch.Generator().manual_seed(0)).float().mean()
    assert abs(rate.item() - 0.1) < 0.02


def test_dropout_off_by_default_train_equals_eval():
    torch.manual_seed(0)
    model = GPT(small_cfg())
    torch.nn.init.normal_(model.output.weight, std=0.5)
    emb, mask, codes = torch.randn(2, 6, 12), torch.ones(2, 6, dtype=torch.bool), torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        a = model.train()(emb, mask, codes)
        b = model.eval()(emb, mask, codes)
    torch.testing.assert_close(a, b)


def test_bad_inputs_raise_clear_errors():
    model = GPT(small_cfg())
    emb, mask, codes = torch.randn(2, 6, 12), torch.ones(2, 6, dtype=torch.bool), torch.zeros(2, 9, dtype=torch.long)
    with pytest.raises(ValueError, match=r"caption embeddings must be \(B, 6, 12\)"):
        model(torch.randn(2, 5, 12), mask, codes)
    with pytest.raises(ValueError, match="caption mask"):
        model(emb, mask[:, :4], codes)
    with pytest.raises(ValueError, match="out of range"):
        model(emb, mask, codes + 50)
    with pytest.raises(ValueError, match="1 <= L <= 9"):
        model(emb, mask, torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="square"):
        small_cfg(block_size=10)
    with pytest.raises(ValueError, match="unknown GPT preset"):
        GPTConfig.preset("GPT-Z")


def test_preset_overrides_and_rope_stays_float32():
    cfg = GPTConfig.preset("GPT-B", vocab_size=256, block_size=64, cls_token_num=16, caption_dim=64)
    assert (cfg.dim, cfg.n_layer, cfg.n_head, cfg.ffn_hidden) == (768, 12, 12, 2048)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    model = GPT(small_cfg()).to(torch.bfloat16)
    assert model.rope.dtype == torch.float32
    assert model.rope[:6].abs().sum() == 0  # caption rows: zero rotation table (upstream)
    assert "rope" not in model.state_dict()


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = GPT(small_cfg())
    torch.nn.init.normal_(model.output.weight, std=0.5)
    emb, mask, codes = torch.randn(2, 6, 12), torch.ones(2, 6, dtype=torch.bool), torch.randint(0, 50, (2, 9))
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        model(emb, mask, codes).logsumexp(-1).sum().backward()
        grads.append(model.layers[0].attention.wqkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
