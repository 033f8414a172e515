"""LlamaGen VQ: upstream key/shape compatibility, golden equivalence, input checks."""

import json

import pytest
import torch

from conftest import seeded_state_dict
from ranke.models.vq import VQ_16, VQConfig, VQModel

TINY = VQConfig(codebook_size=64, codebook_embed_dim=8, ch=32, ch_mult=(1, 2), z_channels=32, num_res_blocks=1)


def test_vq16_matches_upstream_manifest(fixtures_dir):
    manifest = json.loads((fixtures_dir / "llamagen" / "state_dict_manifest.json").read_text())
    (entry,) = [v for k, v in manifest.items() if k.startswith("VQ-16")]
    with torch.device("meta"):
        model = VQModel(VQ_16)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == entry["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == entry["parameters"]
    assert model.downsample == 16


def test_golden_vq(fixtures_dir):
    golden = torch.load(fixtures_dir / "llamagen" / "golden_vq.pt")
    up = golden["config"]
    assert up["encoder_ch_mult"] == up["decoder_ch_mult"]
    cfg = VQConfig(
        codebook_size=up["codebook_size"],
        codebook_embed_dim=up["codebook_embed_dim"],
        codebook_l2_norm=up["codebook_l2_norm"],
        ch=golden["encoder_decoder_base_channels"],
        ch_mult=tuple(up["encoder_ch_mult"]),
        z_channels=up["z_channels"],
    )
    model = VQModel(cfg).eval()
    model.load_state_dict(seeded_state_dict(model))
    exp = golden["expected"]
    with torch.no_grad():
        idx = model.encode(golden["inputs"]["image"])
        assert torch.equal(idx, exp["indices"])
        z = model.codes_to_latents(idx)
        torch.testing.assert_close(z, exp["quantized"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model.decode_latents(z), exp["reconstruction"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model.decode_codes(golden["inputs"]["codes"]), exp["decoded_codes"], atol=1e-4, rtol=0)


def test_codes_layouts_and_range_errors():
    torch.manual_seed(0)
    model = VQModel(TINY).eval()
    codes = torch.randint(0, 64, (2, 4, 4))
    with torch.no_grad():
        a = model.decode_codes(codes)
        b = model.decode_codes(codes.flatten(1))
        c = model.decode_codes(codes.flatten(1).int(), grid=(4, 4))
    assert a.shape == (2, 3, 8, 8)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    z = model.codes_to_latents(codes)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="out of range"):
        model.codes_to_latents(torch.full((1, 4, 4), 64))
    with pytest.raises(ValueError, match="square"):
        model.codes_to_latents(torch.zeros(1, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of the VQ downsampling"):
        model.encode(torch.zeros(1, 3, 9, 9))


def test_encode_decode_roundtrip_codes_are_stable():
    torch.manual_seed(0)
    model = VQModel(TINY).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = model.encode(images)
    assert codes.shape == (2, 8, 8) and codes.dtype == torch.long
    # the lookup is the nearest (cosine) codebook row of the projected latent
    z = torch.nn.functional.normalize(model.encode_latents(images), dim=1)
    sims = torch.einsum("bchw,nc->bnhw", z, model.quantize.codebook())
    assert torch.equal(sims.argmax(1), codes)


def test_width_must_be_multiple_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        VQConfig(ch=48, ch_mult=(1, 2))


def test_config_roundtrip_and_codebook_used_buffer():
    d = TINY.to_dict()
    assert VQConfig.from_dict(d) == TINY
    with pytest.raises(ValueError, match="unknown VQ config keys"):
        VQConfig.from_dict({**d, "bogus": 1})
    model = VQModel(TINY)
    assert model.quantize.codebook_used.shape == (65536,)  # upstream quirk, whatever the codebook


def test_training_path_gradients_and_decoder_parameters():
    torch.manual_seed(0)
    model = VQModel(TINY)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    rec, codes, codebook_loss, commit_loss = model(images)
    assert rec.shape == images.shape and codes.shape == (2, 4, 4)
    (rec.pow(2).mean() + codebook_loss + commit_loss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # straight-through reaches the encoder
    assert model.quantize.embedding.weight.grad.abs().sum() > 0
    dec = {id(p) for p in model.decoder_parameters()}
    assert dec == {id(p) for p in list(model.decoder.parameters()) + list(model.post_quant_conv.parameters())}
