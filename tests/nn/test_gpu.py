"""GPU checks: bf16 autocast, SDPA fused kernels, samplers on CUDA. Skipped without CUDA."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

pytestmark = pytest.mark.gpu


def _model(make_model):
    return make_model(dtype=torch.float32, channels=128, head_dim=64, txt_size=8, txt_dim=32,
                      layers_per_block=[2, 2, 4], img_size=8, channel_size=4).cuda()


def test_bf16_autocast_forward_close_to_fp32(make_model):
    model = _model(make_model)
    x, y = torch.randn(4, 4, 8, 8, device="cuda"), torch.randn(4, 8, 32, device="cuda")
    with torch.no_grad():
        ref = model(x, y)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(x, y)
    assert low.z.dtype == torch.float32
    assert (low.z - ref.z).abs().max() < 0.2 * ref.z.abs().max()
    assert torch.isfinite(low.z).all()


def test_flash_attention_kernel_serves_training_pass(make_model):
    model = _model(make_model)
    x, y = torch.randn(2, 4, 8, 8, device="cuda"), torch.randn(2, 8, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = model(x, y)   # raises if the causal path could not use the fused kernel
        loss = sum(ld.mean() for ld in out.logdets) + out.z.pow(2).mean()
    loss.backward()
    # every parameter of the flow blocks gets a finite, non-zero gradient through the fused kernel
    for name, p in model.named_parameters():
        if name.startswith("blocks."):
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
    assert sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None) > 0


def test_samplers_on_cuda_match_cpu(make_model):
    from starflow.sampling.sample import sample
    model = _model(make_model)
    z, y, yn = torch.randn(2, 4, 8, 8), torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    gpu = sample(model, z.cuda(), y.cuda(), yn.cuda(), method="jacobi", guidance=2.0).cpu()
    cpu = sample(model.cpu(), z, y, yn, method="jacobi", guidance=2.0)
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)
