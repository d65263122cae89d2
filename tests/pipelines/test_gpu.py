"""On CUDA the pipelines give the samples the CPU gives for a seed (noise is drawn on the CPU)."""
import pytest
import torch


@pytest.mark.gpu
def test_image_pipeline_on_cuda_matches_cpu(image_pipe):
    kw = dict(seed=3, guidance=2.0, output_type="latent", progress=False, num_images_per_prompt=2)
    cpu = image_pipe(["1", "8"], **kw).images
    image_pipe.to("cuda")
    gpu = image_pipe(["1", "8"], **kw).images
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
def test_video_pipeline_on_cuda_matches_cpu(video_pipe):
    first = torch.linspace(-1, 1, 64).reshape(1, 8, 8)
    kw = dict(seed=3, output_type="pt", progress=False)
    cpu_t2v = video_pipe(["2"], num_frames=9, **kw).frames           # past the trained length: sliding window
    cpu_i2v = video_pipe(["2"], image=first, **kw).frames
    video_pipe.to("cuda")
    torch.testing.assert_close(video_pipe(["2"], num_frames=9, **kw).frames, cpu_t2v, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(video_pipe(["2"], image=first.cuda(), **kw).frames, cpu_i2v, atol=1e-3, rtol=1e-3)
