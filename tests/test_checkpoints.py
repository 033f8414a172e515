"""Checkpoint loading: upstream layouts, strict key/shape checks, clear errors, atomic save."""

import argparse

import pytest
import torch

from ranke.models.checkpoints import CheckpointError, load_config, load_into, load_state_dict, save_checkpoint
from ranke.models.gpt import GPT, GPTConfig
from ranke.models.vq import VQConfig, VQModel


def tiny_gpt(dim=32):
    return GPT(GPTConfig(dim=dim, n_layer=1, n_head=2, multiple_of=16, vocab_size=20, block_size=4,
                         cls_token_num=3, caption_dim=8))


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    src = tiny_gpt()
    path = tmp_path / "sub" / "gpt.pt"
    save_checkpoint(src, path, {"kind": "gpt", "arch": src.config.to_dict()})
    assert load_config(path)["arch"] == src.config.to_dict()
    assert not list(path.parent.glob(".tmp*"))  # atomic write left no temporary behind
    torch.manual_seed(1)
    dst = load_into(tiny_gpt(), path)
    assert same_weights(src, dst)


@pytest.mark.parametrize("layout", ["model", "module", "state_dict", "raw"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod."])
def test_upstream_layouts_and_prefixes(tmp_path, layout, prefix):
    torch.manual_seed(0)
    src = tiny_gpt()
    sd = {prefix + k: v for k, v in src.state_dict().items()}
    obj = sd if layout == "raw" else {layout: sd, "steps": 10}
    torch.save(obj, tmp_path / "ck.pt")
    assert same_weights(src, load_into(tiny_gpt(), tmp_path / "ck.pt"))
    assert same_weights(src, load_into(tiny_gpt(), obj))


def test_pickled_args_fall_back_to_full_unpickling(tmp_path):
    src = tiny_gpt()
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(lr=1.0)}, tmp_path / "ck.pt")
    assert load_state_dict(tmp_path / "ck.pt").keys() == src.state_dict().keys()


def test_wrong_model_file_gives_one_clear_error(tmp_path):
    vq = VQModel(VQConfig(codebook_size=16, ch=32, ch_mult=(1,), z_channels=8, num_res_blocks=1))
    save_checkpoint(vq, tmp_path / "vq.pt")
    with pytest.raises(CheckpointError) as e:
        load_into(tiny_gpt(), tmp_path / "vq.pt")
    msg = str(e.value)
    assert "vq.pt" in msg and "missing" in msg and "unexpected" in msg
    assert "tok_embeddings.weight [20, 32]" in msg and "encoder.conv_in.weight" in msg


def test_shape_mismatch_lists_both_shapes(tmp_path):
    save_checkpoint(tiny_gpt(dim=32), tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches .*tok_embeddings.weight \[20, 32\] vs \[20, 64\]"):
        load_into(tiny_gpt(dim=64), tmp_path / "a.pt")


def test_not_a_checkpoint_and_missing_file(tmp_path):
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_state_dict(tmp_path / "junk.pt")
    torch.save({"steps": 3}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="no tensors"):
        load_state_dict(tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_state_dict(tmp_path / "nope.pt")
