"""PatchGAN discriminator and its hinge loss, alone; its init; BatchNorm statistics across 2 gloo ranks."""

import copy
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ranke.train.discriminator import (
    PatchDiscriminator,
    SyncedBatchNorm2d,
    build_discriminator,
    discriminator_loss,
    generator_hinge_loss,
    hinge_d_loss,
)
from ranke.train.round import Dist


def test_patchgan_shapes_and_init():
    torch.manual_seed(0)
    d = PatchDiscriminator(ndf=8, n_layers=3)
    out = d(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and abs(float(convs[1].weight.detach().std()) - 0.02) < 0.004
    bns = [m for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 3 and abs(float(bns[0].weight.detach().mean()) - 1.0) < 0.01
    assert "main.0.weight" in d.state_dict()


def test_hinge_values():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x): 0, 0.5, 2 -> mean 0.8333
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + x): 0, 1, 2 -> mean 1
    assert torch.allclose(hinge_d_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 1.0)))
    assert torch.allclose(generator_hinge_loss(fake), torch.tensor(1 / 3))


def test_discriminator_loss_off_before_start_and_fake_detached():
    torch.manual_seed(0)
    d = PatchDiscriminator(ndf=4, n_layers=2)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    fake = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    assert discriminator_loss(d, real, fake, step=9, start_step=10) is None
    loss = discriminator_loss(d, real, fake, step=10, start_step=10, weight=0.5)
    ref = 0.5 * hinge_d_loss(d(real), d(fake.detach()))
    assert torch.allclose(loss, ref, atol=1e-6)
    loss.backward()
    assert fake.grad is None
    assert all(p.grad is not None for p in d.parameters())


def official_layout(ndf: int, n_layers: int) -> nn.Sequential:
    """The official NLayerDiscriminator (discriminator_patchgan.py:8-63) rebuilt from plain layers:
    conv weights N(0, 0.02), BatchNorm N(1, 0.02) / 0, conv biases left at nn.Conv2d's default."""
    layers = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, n_layers):
        prev, mult = mult, min(2**n, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                   nn.LeakyReLU(0.2, True)]
    prev, mult = mult, min(2**n_layers, 8)
    layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * mult),
               nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
    seq = nn.Sequential(*layers)
    for m in seq.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.constant_(m.bias, 0)
    return seq


def test_init_is_the_official_one_conv_biases_keep_the_default_init():
    torch.manual_seed(3)
    d = PatchDiscriminator(ndf=8, n_layers=3)
    torch.manual_seed(3)
    ref = official_layout(8, 3)
    ours = d.main.state_dict()
    assert ours.keys() == ref.state_dict().keys()
    assert all(torch.equal(ours[k], v) for k, v in ref.state_dict().items())
    first, last = d.main[0], d.main[-1]
    for conv in (first, last):  # default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not zero
        bound = 1 / (conv.in_channels * 16) ** 0.5
        assert conv.bias.abs().max() <= bound and conv.bias.abs().min() > 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bn_rank(rank: int, port: int, out, reals, fakes) -> None:
    """One gloo rank: the discriminator gradient of each BatchNorm mode on this rank's own batch,
    averaged across ranks as the round does, and the BatchNorm running statistics."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        res = {}
        for mode in ("local", "sync"):
            torch.manual_seed(0)
            d = build_discriminator(4, 2, batchnorm=mode)
            discriminator_loss(d, reals[rank], fakes[rank], step=0, start_step=0).backward()
            Dist(rank, 2).average_grads(list(d.parameters()))
            res[mode] = {n: p.grad.clone() for n, p in d.named_parameters()}
            res[mode + "_state"] = copy.deepcopy(d.state_dict())
            res[mode + "_norm"] = type(d.main[3]).__name__
        try:  # why `sync` has its own CPU BatchNorm: torch's refuses CPU tensors under a process group
            nn.SyncBatchNorm(4).train()(torch.randn(2, 4, 3, 3))
            res["torch_sync_error"] = None
        except ValueError as e:
            res["torch_sync_error"] = str(e)
        torch.save(res, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _one_process(reals, fakes) -> tuple[dict, dict]:
    """Plain nn.BatchNorm2d discriminator in one process: the gradient of each (real, fake) batch
    (BatchNorm statistics of that batch alone), averaged over the batches; and the state after
    the last batch's forwards."""
    torch.manual_seed(0)
    d = PatchDiscriminator(3, 4, 2)
    grads = []
    for real, fake in zip(reals, fakes):
        d.zero_grad()
        discriminator_loss(d, real, fake, step=0, start_step=0).backward()
        grads.append({n: p.grad.clone() for n, p in d.named_parameters()})
    return {n: sum(g[n] for g in grads) / len(grads) for n in grads[0]}, d.state_dict()


def test_batchnorm_local_is_per_rank_and_sync_is_global_across_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(0)
    # the ranks' batches differ (rank 1's is brighter and wider): per-rank statistics differ too
    reals = [torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.rand(2, 3, 16, 16, generator=g) * 3 - 0.5]
    fakes = [torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.rand(2, 3, 16, 16, generator=g) * 1.5 - 1]
    mp.start_processes(_bn_rank, args=(_free_port(), tmp_path, reals, fakes), nprocs=2, join=True,
                       start_method="fork")
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["local_norm"] == "BatchNorm2d" and r0["sync_norm"] == "SyncedBatchNorm2d"
    assert "GPU" in r0["torch_sync_error"]
    local, _ = _one_process(reals, fakes)  # per-rank plain BatchNorm, gradients averaged
    glob, glob_state = _one_process([torch.cat(reals)], [torch.cat(fakes)])  # one process, whole batch
    for mode, want in (("local", local), ("sync", glob)):
        assert r0[mode + "_state"].keys() == r1[mode + "_state"].keys() == glob_state.keys()
        for n in want:
            assert torch.equal(r0[mode][n], r1[mode][n]), (mode, n)  # the discriminator stays synchronised
            torch.testing.assert_close(r0[mode][n], want[n], atol=1e-6, rtol=1e-5)
    assert max(float((r0["local"][n] - r0["sync"][n]).abs().max()) for n in local) > 1e-3
    # running statistics: each rank's own batch (local) vs the global batch (sync)
    for rank, res in ((0, r0), (1, r1)):
        _, alone = _one_process([reals[rank]], [fakes[rank]])
        for key in ("main.3.running_mean", "main.3.running_var"):
            torch.testing.assert_close(res["local_state"][key], alone[key], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(res["sync_state"][key], glob_state[key], atol=1e-6, rtol=1e-5)


def test_build_discriminator_modes():
    with pytest.raises(ValueError, match="batchnorm"):
        build_discriminator(4, 2, batchnorm="group")
    torch.manual_seed(0)
    a = build_discriminator(4, 2, batchnorm="local")
    torch.manual_seed(0)
    b = build_discriminator(4, 2, batchnorm="sync")
    assert not any(isinstance(m, SyncedBatchNorm2d) for m in a.modules())
    assert sum(isinstance(m, SyncedBatchNorm2d) for m in b.modules()) == 2
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())  # one process: same


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's SyncBatchNorm path is the CUDA one")
def test_sync_batchnorm_on_cuda_is_torchs_with_the_same_keys():
    torch.manual_seed(0)
    local = build_discriminator(4, 2, batchnorm="local", device="cuda")
    torch.manual_seed(0)
    sync = build_discriminator(4, 2, batchnorm="sync", device="cuda")
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in sync.modules()) == 2
    assert local.state_dict().keys() == sync.state_dict().keys()
    x = torch.rand(2, 3, 16, 16, device="cuda") * 2 - 1
    torch.testing.assert_close(local(x), sync(x))  # no process group: plain batch statistics
