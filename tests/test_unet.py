import pytest
import torch

from course_lib.networks.unet import TextCond, UNet, UNetConfig, timestep_embedding


@pytest.mark.parametrize("B", [1, 3, 7])
def test_output_shape_equals_input_shape_for_any_t(B):
    torch.manual_seed(0)
    m = UNet(UNetConfig(channels=(16, 32), time_dim=32, attention=True))
    x = torch.randn(B, 1, 28, 28)
    for t in (torch.zeros(B, dtype=torch.long), torch.full((B,), 999), torch.randint(0, 1000, (B,))):
        assert m(x, t).shape == x.shape
    assert m(x, torch.tensor(5)).shape == x.shape                  # a scalar t is broadcast


def test_time_embedding_distinguishes_steps():
    e = timestep_embedding(torch.tensor([0, 1, 500]), 32)
    assert e.shape == (3, 32) and not torch.allclose(e[0], e[1]) and e.abs().max() <= 1


def test_class_and_text_conditioning_change_the_output():
    torch.manual_seed(0)
    m = UNet(UNetConfig(channels=(16, 32), time_dim=32, num_classes=10))
    torch.nn.init.normal_(m.out.weight, std=0.1)                  # the output layer starts at zero
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 10])
    a, b = m(x, t, torch.tensor([1, 1])), m(x, t, torch.tensor([7, 7]))
    assert not torch.allclose(a, b)
    assert torch.allclose(m(x, t, None), m(x, t, torch.tensor([-1, 10])))   # None = the "no class" entry
    mt = UNet(UNetConfig(channels=(16, 32), time_dim=32, context_dim=8))
    torch.nn.init.normal_(mt.out.weight, std=0.1)
    cond = TextCond(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool), torch.randn(2, 8))
    assert mt(x, t, cond).shape == x.shape and not torch.allclose(mt(x, t, cond), mt(x, t, None))


def test_bad_inputs_are_clear_errors():
    m = UNet(UNetConfig(channels=(16, 32), time_dim=32))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        m(torch.randn(2, 1, 32, 32), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="unconditional"):
        m(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="2 entries"):
        UNet(UNetConfig(channels=(8, 16, 32)))
