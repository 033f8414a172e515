"""LlamaGen backbone: building from the config's assets, the Cond container, decode / soft decode."""

import pytest
import torch

from ranke.models.backbone import Cond, LlamaGenBackbone, build_gpt, gpt_config
from ranke.models.checkpoints import save_checkpoint
from ranke.models.text import make_tiny_t5
from ranke.models.vq import VQConfig, VQModel

VQ_ARCH = dict(codebook_size=32, codebook_embed_dim=4, codebook_l2_norm=True, ch=32, ch_mult=[1, 2],
               z_channels=32, num_res_blocks=1)
GPT_ARCH = dict(preset=None, dim=32, n_layer=1, n_head=2, caption_dim=16, multiple_of=16)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    vq = VQModel(VQConfig.from_dict(VQ_ARCH))
    save_checkpoint(vq, root / "vq.pt", {"arch": VQ_ARCH})
    gpt = build_gpt(GPT_ARCH, codebook_size=32, grid_tokens=16, cls_token_num=6)
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    save_checkpoint(gpt, root / "gpt.pt", {"arch": GPT_ARCH})
    make_tiny_t5(root / "t5", ["a red circle", "a blue square on the left"], d_model=16, num_layers=1,
                 num_heads=2, d_ff=32, seed=0)
    return {
        "vq": {"checkpoint": str(root / "vq.pt"), "arch": VQ_ARCH},
        "gpt": {"checkpoint": str(root / "gpt.pt"), "arch": GPT_ARCH},
        "text_encoder": {"path": str(root / "t5"), "max_length": 6, "padding": "right"},
    }


def test_cond_container():
    c = Cond(torch.arange(6.0).view(3, 2, 1), torch.tensor([[1, 0], [1, 1], [0, 1]], dtype=torch.bool))
    assert len(c) == 3
    r = c.repeat_interleave(2)
    assert len(r) == 6 and r.emb[:, 0, 0].tolist() == [0, 0, 2, 2, 4, 4]
    i = c.index(torch.tensor([2, 0]))
    assert i.emb[:, 0, 0].tolist() == [4, 0] and torch.equal(i.mask[0], c.mask[2])
    assert Cond.cat([c, i]).emb.shape == (5, 2, 1) and c.to("cpu").mask.dtype == torch.bool


def test_gpt_config_from_arch():
    cfg = gpt_config({"preset": "GPT-B", "caption_dim": 2048}, 16384, 256, 120)
    assert (cfg.dim, cfg.n_layer, cfg.vocab_size, cfg.block_size) == (768, 12, 16384, 256)
    with pytest.raises(ValueError, match="must follow"):
        gpt_config({**GPT_ARCH, "vocab_size": 7}, 32, 16, 6)


def test_from_config_end_to_end(assets, tmp_path):
    bb = LlamaGenBackbone.from_config(assets, image_size=8, device="cpu")
    assert bb.grid == (4, 4) and bb.codebook_size == 32 and bb.policy.config.cls_token_num == 6
    cond = bb.encode_prompts(["a red circle", "a blue square"])
    assert cond.emb.shape == (2, 6, 16)
    codes, lp = bb.sample(bb.policy, cond.repeat_interleave(2), seeds=[0, 1, 2, 3], cfg_scale=2.0,
                          return_logprobs=True)
    assert codes.shape == (4, 16) and lp.shape == (4, 16)
    tf = bb.logprobs(bb.policy, cond, codes[::2])
    assert tf.shape == (2, 16) and tf.requires_grad
    images = bb.decode(bb.vq, codes)
    assert images.shape == (4, 3, 8, 8) and images.abs().max() <= 1
    assert bb.tokenize(bb.vq, images).shape == (4, 16)
    # soft decode with all mass on one code is the hard decode
    idx = torch.stack([codes, (codes + 1) % 32], -1)
    probs = torch.tensor([1.0, 0.0]).expand(4, 16, 2)
    torch.testing.assert_close(bb.decode_soft(bb.vq, probs, idx), images, atol=1e-5, rtol=0)
    mix = bb.decode_soft(bb.vq, torch.full((4, 16, 2), 0.3), idx)  # unnormalised: renormalised inside
    assert mix.shape == images.shape and not torch.allclose(mix, images)
    assert len(bb.decoder_parameters(bb.vq)) == len(list(bb.vq.decoder_parameters()))
    # save / load round trip
    bb.save_policy(bb.policy, tmp_path / "p.pt")
    bb.save_vq(bb.vq, tmp_path / "v.pt")
    p2, v2 = bb.load_policy(tmp_path / "p.pt"), bb.load_vq(tmp_path / "v.pt")
    assert all(torch.equal(a, b) for a, b in zip(p2.state_dict().values(), bb.policy.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(v2.state_dict().values(), bb.vq.state_dict().values()))


def test_missing_assets_name_the_config_key(assets, tmp_path):
    bad = {**assets, "gpt": {**assets["gpt"], "checkpoint": str(tmp_path / "none.pt")}}
    with pytest.raises(FileNotFoundError, match=r"assets\.gpt\.checkpoint.*none\.pt"):
        LlamaGenBackbone.from_config(bad, image_size=8)
    bad = {**assets, "text_encoder": {**assets["text_encoder"], "path": str(tmp_path / "t5x")}}
    with pytest.raises(FileNotFoundError, match=r"assets\.text_encoder\.path"):
        LlamaGenBackbone.from_config(bad, image_size=8)
    bb = LlamaGenBackbone.from_config(bad, image_size=8, load_text=False)
    assert bb.text is None


def test_precision_reaches_the_sampler_and_text_encoder(assets):
    """`precision` of the study config decides the sampler's weight dtype (not a fixed "auto")."""
    from ranke.models.factory import build_backbone

    cfg = {"backbone": "llamagen", "assets": assets, "image_size": 8}
    fp32 = build_backbone({**cfg, "precision": "fp32"}, "cpu")
    assert fp32.amp_dtype is None and next(fp32.text.model.parameters()).dtype == torch.float32
    bf16 = build_backbone({**cfg, "precision": "bf16"}, "cpu")
    assert bf16.amp_dtype == torch.bfloat16 and next(bf16.text.model.parameters()).dtype == torch.bfloat16
    assert build_backbone({**cfg, "precision": "auto"}, "cpu").amp_dtype is None  # CPU: fp32
    cond = fp32.encode_prompts(["a red circle"])
    codes32 = fp32.sample(fp32.policy, cond, seeds=[3], cfg_scale=1.0)
    codes16 = bf16.sample(bf16.policy, bf16.encode_prompts(["a red circle"]), seeds=[3], cfg_scale=1.0)
    assert codes32.shape == codes16.shape == (1, 16)
    with pytest.raises(ValueError, match="precision"):
        build_backbone({**cfg, "precision": "fp16"}, "cpu")


def test_raw_padded_caption_rows_change_only_the_first_token(assets):
    """zero_padding=False (official training rollouts) vs True (evaluation): on right-padded
    captions only the first image token's log-prob differs (position T-1 is a padded row, whose own
    residual stream carries it); every later token is identical. Under both scoring masks."""
    bb = LlamaGenBackbone.from_config(assets, image_size=8, device="cpu")
    caps = ["a red circle", "a blue square on the left"]  # 4 and 7 tokens, max_length 6: one padded
    zeroed, raw = bb.encode_prompts(caps), bb.encode_prompts(caps, zero_padding=False)
    assert torch.equal(zeroed.mask, raw.mask) and not zeroed.mask[0].all() and zeroed.mask[1].all()
    codes = bb.sample(bb.policy, zeroed, seeds=[0, 1], cfg_scale=1.0)
    for mask in ("generation", "ranke"):
        with torch.no_grad():
            lz, lr = bb.logprobs(bb.policy, zeroed, codes, mask=mask), bb.logprobs(bb.policy, raw, codes, mask=mask)
        assert float((lz[0, 0] - lr[0, 0]).abs()) > 1e-4, mask
        torch.testing.assert_close(lz[:, 1:], lr[:, 1:], atol=1e-6, rtol=0)
        torch.testing.assert_close(lz[1], lr[1], atol=0, rtol=0)  # an unpadded caption: no padded row


def test_decode_soft_codebook_rows_normalized_or_raw(assets):
    """normalize_rows=True mixes the l2-normalised rows hard decoding uses; False mixes the raw
    embedding.weight rows, as the official LASC (trainer.py:719-720)."""
    bb = LlamaGenBackbone.from_config(assets, image_size=8, device="cpu")
    vq = bb.vq
    with torch.no_grad():  # trained codebooks are not unit-norm; the fresh one is
        vq.quantize.embedding.weight.mul_(torch.linspace(0.5, 3.0, 32)[:, None])
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 32, (2, 16, 3), generator=g)
    probs = torch.softmax(torch.randn(2, 16, 3, generator=g), -1)

    def mixed(rows):
        z = (probs.unsqueeze(-1) * rows[idx]).sum(2)
        return vq.decode_latents(z.transpose(1, 2).reshape(2, -1, 4, 4)).clamp(-1, 1)

    with torch.no_grad():
        raw = bb.decode_soft(vq, probs, idx, normalize_rows=False)
        normed = bb.decode_soft(vq, probs, idx)
        torch.testing.assert_close(raw, mixed(vq.quantize.embedding.weight), atol=1e-5, rtol=0)
        torch.testing.assert_close(normed, mixed(torch.nn.functional.normalize(vq.quantize.embedding.weight, dim=-1)),
                                   atol=1e-5, rtol=0)
    assert float((raw - normed).abs().max()) > 1e-3
