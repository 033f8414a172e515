"""PatchGAN discriminator and its hinge loss, alone."""

import torch

from ranke.train.discriminator import PatchDiscriminator, discriminator_loss, generator_hinge_loss, hinge_d_loss



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
