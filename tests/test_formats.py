"""Channels-last conversion of networks whose parameters are not all 4-D (CondConv's and dynamic convolution's
5-D expert banks, ECA's 1-D convolution)."""

import pytest
import torch

import visionattn
from visionattn.formats import to_channels_last


@pytest.mark.parametrize("name", ["eca_resnet20", "condconv_resnet20", "dynamic_conv_resnet20"])
def test_every_4d_tensor_is_converted_and_the_output_unchanged(name):
    torch.manual_seed(0)
    model = visionattn.create_model(name, num_classes=10, in_chans=1).eval()
    if name != "eca_resnet20":
        with pytest.raises(RuntimeError, match="rank 4"):  # why the helper exists: a 5-D expert bank
            model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        want = model(x)
        assert to_channels_last(model) is model
        got = model(x.contiguous(memory_format=torch.channels_last))
    tensors = [*model.parameters(), *model.buffers()]
    assert any(t.dim() != 4 for t in tensors)
    for t in tensors:
        if t.dim() == 4 and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1:
            assert t.is_contiguous(memory_format=torch.channels_last), t.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
