"""Decoder terms alone, on hand-made tensors: rank weights, tau schedule, each loss, perceptual."""

import math

import pytest
import torch
from torch import nn

from ranke.perceptual import LPIPSVGG, build_perceptual
from ranke.train.decoder import (
    adaptive_gan_weight,
    consistency_loss,
    lasc_loss,
    rank_gan_loss,
    rank_weights,
    reconstruction_loss,
    reward_loss,
    tau_schedule,
    topk_soft_codes,
)



def test_tau_schedule_cosine_4_to_1_over_first_20_percent():
    assert tau_schedule(0, 4680) == 4.0
    assert abs(tau_schedule(468, 4680) - 2.5) < 1e-9  # half-way through the 936 anneal steps
    assert tau_schedule(936, 4680) == 1.0 and tau_schedule(4000, 4680) == 1.0
    p = 0.25
    assert abs(tau_schedule(234, 4680) - (1 + 3 * 0.5 * (1 + math.cos(math.pi * p)))) < 1e-9
    vals = [tau_schedule(t, 45) for t in range(12)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_tau_schedule_anneals_over_an_integer_span_and_is_floored():
    """Official (trainer.py:774-781): anneal_steps = int(total * ratio), tau = max(tau, 1e-4).
    With 777 nominal steps the span is int(155.4) = 155, not 155.4."""
    def official(step, total, start=4.0, end=1.0, ratio=0.2):
        anneal = int(total * ratio)
        p = min(1.0, step / anneal) if anneal > 0 else 1.0
        return max(end + (start - end) * 0.5 * (1 + math.cos(math.pi * p)), 1e-4)

    for t in range(0, 200):
        assert tau_schedule(t, 777) == official(t, 777), t
    assert tau_schedule(155, 777) == 1.0  # a float span of 155.4 gives 1.00005 here
    assert tau_schedule(100, 777) == pytest.approx(1 + 3 * 0.5 * (1 + math.cos(math.pi * 100 / 155)), abs=1e-12)
    assert tau_schedule(0, 4) == 1.0  # int(0.8) = 0 anneal steps: tau is the end value from the start
    assert tau_schedule(30, 100, start=1.0, end=0.0) == 1e-4  # after the 20 anneal steps: floored


def test_rank_weights_top_k_softmax_mean_one():
    r = torch.tensor([1.0, 3.0, 2.0, 0.0, 5.0, 5.0, 4.0, 6.0])
    idx, w = rank_weights(r, group_size=4, k=2, tau=1.0)
    assert idx.tolist() == [1, 2, 7, 4]  # ties keep rollout order (4 before 5)
    e = torch.softmax(torch.tensor([3.0, 2.0]), 0) * 2
    assert torch.allclose(w[:2], e)
    assert torch.allclose(w.view(2, 2).sum(1), torch.tensor([2.0, 2.0]))
    # K = 1 (official): best-of-G with weight exactly 1, tau inert
    idx, w = rank_weights(r, 4, 1, tau=4.0)
    assert idx.tolist() == [1, 7] and torch.equal(w, torch.ones(2))
    # large tau flattens the weights toward 1
    _, w_hot = rank_weights(r, 4, 2, tau=100.0)
    assert torch.allclose(w_hot, torch.ones(4), atol=0.01)
    with pytest.raises(ValueError):
        rank_weights(r, 4, 5, 1.0)


class _ToyDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_out = nn.Conv2d(3, 3, 1)

    def forward(self, z):
        return self.conv_out(z)


class _ConstDisc(nn.Module):
    """D(x) = mean over channels of x, as a (B,1,H,W) map: hand-checkable."""

    def forward(self, x):
        return x.mean(dim=1, keepdim=True)


def _l1_perc(a, b):
    return (a - b).abs().mean(dim=(1, 2, 3))


def test_reconstruction_loss_terms_and_adaptive_weight():
    torch.manual_seed(0)
    dec = _ToyDecoder()
    z = torch.randn(2, 3, 4, 4)
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    x_rec = dec(z)
    out = reconstruction_loss(x, x_rec, _l1_perc, lambda_rec=2.0)
    l1 = (x - x_rec).abs().mean()
    assert torch.allclose(out["l1"], l1) and torch.allclose(out["perceptual"], l1)
    assert torch.allclose(out["loss"], 2.0 * 2 * l1) and "gan" not in out

    x_rec = dec(z)
    disc = _ConstDisc()
    out = reconstruction_loss(x, x_rec, _l1_perc, disc=disc, gan_on=True, last_layer=dec.conv_out.weight, disc_weight=0.5)
    g = -x_rec.mean()
    nll = 2 * (x - x_rec).abs().mean()
    gn = torch.autograd.grad(nll, dec.conv_out.weight, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, dec.conv_out.weight, retain_graph=True)[0].norm()
    aw = 0.5 * gn / (gg + 1e-4)
    assert torch.allclose(out["adaptive_weight"], aw) and torch.allclose(out["gan"], g)
    assert torch.allclose(out["loss"], nll + aw * g)
    assert not out["adaptive_weight"].requires_grad
    with pytest.raises(ValueError):
        reconstruction_loss(x, x_rec, _l1_perc, gan_on=True)


def test_adaptive_weight_is_clamped():
    w = nn.Parameter(torch.ones(3))
    nll = (w * 1e6).sum()
    g = (w * 0.0).sum() + 0 * w.sum()
    assert float(adaptive_gan_weight(nll, g, w)) == 1e4


def test_rank_gan_loss_weighted_mean():
    x_hat = torch.stack([torch.full((3, 2, 2), 0.5), torch.full((3, 2, 2), -1.0)]).requires_grad_(True)
    w = torch.tensor([1.5, 0.5])
    loss = rank_gan_loss(_ConstDisc(), x_hat, w, lambda_gan=1.0, disc_weight=0.5)
    assert torch.allclose(loss, torch.tensor(-0.5 * (1.5 * 0.5 + 0.5 * -1.0) / 2))
    loss.backward()
    # higher-weighted image is pushed harder
    assert float(x_hat.grad[0].abs().sum()) == pytest.approx(3 * float(x_hat.grad[1].abs().sum()))


def test_rank_gan_loss_scales_with_the_discriminator_weight():
    """Official: -mean(w * D(x_hat)) * lambda_g * disc_weight (trainer.py:662-678): at
    discriminator.weight 1.0 the term is twice the 0.5 that used to be hard-coded."""
    x_hat = torch.stack([torch.full((3, 2, 2), 0.5), torch.full((3, 2, 2), -1.0)])
    w = torch.tensor([1.5, 0.5])
    mean_wd = (1.5 * 0.5 + 0.5 * -1.0) / 2
    for lambda_gan, disc_weight in ((1.0, 1.0), (2.0, 1.0), (1.0, 0.25)):
        loss = rank_gan_loss(_ConstDisc(), x_hat, w, lambda_gan=lambda_gan, disc_weight=disc_weight)
        assert float(loss) == pytest.approx(-mean_wd * lambda_gan * disc_weight, abs=1e-7)


def test_consistency_loss_clamps_target_and_scales():
    x_hat = torch.zeros(2, 3, 4, 4, requires_grad=True)
    x_ema = torch.full((2, 3, 4, 4), 3.0)  # clamped to 1
    loss = consistency_loss(x_hat, x_ema, _l1_perc, lambda_c=10.0)
    assert torch.allclose(loss, torch.tensor(10.0))
    loss.backward()
    assert x_hat.grad is not None


def test_reward_loss_and_lasc():
    r = torch.tensor([30.0, 20.0], requires_grad=True)
    loss = reward_loss(r, torch.tensor([1.5, 0.5]), lambda_d=0.01)
    assert torch.allclose(loss, torch.tensor(-0.01 * (45 + 10) / 2))
    loss.backward()
    assert torch.allclose(r.grad, torch.tensor([-0.0075, -0.0025]))

    x_soft = torch.zeros(1, 3, 2, 2, requires_grad=True)
    x_hat = torch.ones(1, 3, 2, 2, requires_grad=True)
    l = lasc_loss(x_soft, x_hat, lambda_lasc=2.0)
    assert torch.allclose(l, torch.tensor(2.0))
    l.backward()
    assert x_hat.grad is None and x_soft.grad is not None  # stop-gradient on the hard decode

    logits = torch.tensor([[[0.0, 2.0, 1.0, -5.0]]])
    p, i = topk_soft_codes(logits, 2)
    assert i.tolist() == [[[1, 2]]] and torch.allclose(p.sum(-1), torch.ones(1, 1))


def test_demo_perceptual_distance():
    torch.manual_seed(0)
    d = build_perceptual({"kind": "demo"})
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert torch.equal(d(x, x), torch.zeros(3))
    y = x + 0.1 * torch.randn_like(x)
    dist = d(x, y)
    assert dist.shape == (3,) and bool((dist > 0).all())
    assert torch.allclose(d(x, y), d(y, x))
    # structure (noise) costs more than the same mean-absolute brightness shift
    shift = x + 0.1 * torch.randn_like(x).abs().mean()
    assert float(d(x, y).mean()) > float(d(x, shift).mean())
    y.requires_grad_(True)
    d(x, y).sum().backward()
    assert y.grad is not None


def test_lpips_missing_weights_names_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="assets.perceptual.weights"):
        build_perceptual({"kind": "lpips-vgg", "weights": str(tmp_path / "vgg.pth")})


def test_lpips_loads_heads_and_trunk_from_local_files(tmp_path):
    torch.manual_seed(0)
    ref = LPIPSVGG()
    heads = {f"lin{i}.model.1.weight": ref.lins[i].model[1].weight.detach().abs() for i in range(5)}
    torch.save(heads, tmp_path / "vgg.pth")
    torch.save({f"features.{k}": v for k, v in ref.features.state_dict().items()}, tmp_path / "vgg16.pth")
    with pytest.raises(FileNotFoundError, match="assets.perceptual.vgg16"):
        build_perceptual({"kind": "lpips-vgg", "weights": str(tmp_path / "vgg.pth")})
    m = build_perceptual({"kind": "lpips-vgg", "weights": str(tmp_path / "vgg.pth"), "vgg16": str(tmp_path / "vgg16.pth")})
    assert torch.equal(m.features[0].weight, ref.features[0].weight)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(m(x, x), torch.zeros(2))
    assert bool((m(x, torch.flip(x, dims=[3])) > 0).all())
    # a full LPIPS state dict (net.sliceK.N keys) carries its own trunk
    full = dict(heads)
    for k, v in ref.features.state_dict().items():
        idx = int(k.split(".")[0])
        s = 1 + sum(idx >= t for t in (4, 9, 16, 23))
        full[f"net.slice{s}.{k}"] = v
    torch.save(full, tmp_path / "lpips_full.pth")
    m2 = build_perceptual({"kind": "lpips-vgg", "weights": str(tmp_path / "lpips_full.pth")})
    assert torch.allclose(m2(x, x.flip(3)), m(x, x.flip(3)))


# ---------------------------------------------------------------------------------------------
# reward models (the reward back-propagation term needs image gradients, and frozen rewards)


def _tiny_hf_clip(path):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    words = ["<pad>", "<unk>", "</s>", "a", "red", "blue", "circle", "square"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=2, pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=8,
    )
    model = CLIPModel(cfg)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return model


def test_hf_clip_reward_is_100_cos_differentiable_and_frozen(tmp_path):
    import torch.nn.functional as F

    from ranke.rewards import CLIP_MEAN, CLIP_STD, build_reward

    with pytest.raises(FileNotFoundError, match="assets.reward.weights"):
        build_reward({"kind": "hf_clip", "model": "tiny", "weights": str(tmp_path / "nope")})
    model = _tiny_hf_clip(tmp_path / "clip").eval()
    reward = build_reward({"kind": "hf_clip", "model": "tiny", "weights": str(tmp_path / "clip")})
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    caps = ["a red circle", "a blue square"]
    r = reward(x, caps)
    # reference: [0,1] -> CLIP mean/std -> bilinear 16 (official order), 100 * cosine
    px = ((x.detach() + 1) / 2 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    px = F.interpolate(px, size=(16, 16), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ie = F.normalize(model.visual_projection(model.vision_model(pixel_values=px).pooler_output), dim=-1)
        tok = reward.tokenizer(caps, padding=True, return_tensors="pt")
        te = F.normalize(model.text_projection(model.text_model(**tok).pooler_output), dim=-1)
    assert torch.allclose(r.detach(), 100 * (ie * te).sum(-1), atol=1e-4)
    r.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in reward.model.parameters())
    with pytest.raises(ValueError):
        reward(x, caps[:1])


def test_open_clip_reward_matches_clip_score(tmp_path):
    from conftest import tiny_open_clip_reward
    from ranke.models.clip import load_clip
    from ranke.rewards import build_reward

    cfg = tiny_open_clip_reward(tmp_path)
    reward = build_reward(cfg)
    x = (torch.rand(3, 3, 8, 8) * 2 - 1).requires_grad_(True)
    caps = ["a red circle", "a blue square", "a red circle"]
    r = reward(x, caps)
    assert torch.allclose(r.detach(), load_clip(cfg).score(x.detach(), caps), atol=1e-4)
    r.sum().backward()
    assert float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in reward.clip.model.parameters())
    with pytest.raises(ValueError, match="assets.reward.kind"):
        build_reward({"kind": "hpsv2"})
