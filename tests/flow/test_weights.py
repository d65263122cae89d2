"""Weights read tensor by tensor into a model built on the meta device (flow.weights): dtypes, chunks, errors."""
import pytest
import torch
from safetensors.torch import save_file

from starflow import StarFlow, load_official
from starflow.flow import weights as W
from starflow.flow.io import CheckpointError, load_state_dict_strict
from starflow.nn.rope import RotaryEmbedding


def _files(model, tmp_path):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(tmp_path / "m.safetensors"))
    torch.save({**sd, "var": torch.ones(2), "blocks.0.attn_mask": torch.ones(3, 3)}, tmp_path / "m.pth")
    torch.save({"model": sd, "step": 7}, tmp_path / "ckpt.pt")            # a training checkpoint
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)   # cannot be memory-mapped
    return ["m.safetensors", "m.pth", "ckpt.pt", "legacy.pth"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_file_format_loads_in_the_asked_dtype(make_model, tmp_path, dtype):
    src = make_model(dtype=torch.float32, learnable_self_denoiser=True, temporal_causal=1, shallow_block_local=True)
    x, y = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 5)
    for name in _files(src, tmp_path):
        model = load_official(src.config, tmp_path / name, torch_dtype=dtype)
        assert not model.training
        assert {p.dtype for p in model.parameters()} == {dtype}, name
        for k, v in src.state_dict().items():
            assert torch.equal(model.state_dict()[k], v.to(dtype)), (name, k)
        # positions are constants: float32 even in a bf16 model, equal to a freshly built model's
        assert model.rope.freqs.dtype == torch.float32 and torch.equal(model.rope.freqs, src.rope.freqs.float())
        if dtype == torch.float32:
            torch.testing.assert_close(model(x, y).z, src(x, y).z, atol=0, rtol=0)
        else:
            assert model(x.to(dtype), y.to(dtype)).z.dtype == dtype


def test_files_are_read_a_chunk_at_a_time(make_model, tmp_path, monkeypatch):
    """The file is re-opened per chunk, so at most one chunk of a memory-mapped file is resident at once."""
    src = make_model(dtype=torch.float32)
    _files(src, tmp_path)
    opens = []
    real = W.WeightsFile._open

    def counting(self):
        opens.append(1)
        return real(self)

    monkeypatch.setattr(W.WeightsFile, "_open", counting)
    n = len(src.state_dict())
    for name in ("m.safetensors", "m.pth"):
        opens.clear()
        model = W.empty_model(lambda: StarFlow(src.config))
        W.load_weights(model, tmp_path / name, chunk_bytes=1)      # every tensor its own chunk
        assert len(opens) == 1 + n, name                           # the index, then one per tensor
        opens.clear()
        W.load_weights(model, tmp_path / name)                     # a tiny model fits one chunk
        assert len(opens) == 2
        assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())


def test_a_model_materialised_from_meta_has_real_rope_frequencies():
    fresh = RotaryEmbedding(24, 4, 3)
    with torch.device("meta"):
        ghost = RotaryEmbedding(24, 4, 3)
    ghost.to_empty(device="cpu")
    assert torch.equal(ghost.freqs, fresh.freqs) and torch.equal(ghost.freqs2, fresh.freqs2)
    low = RotaryEmbedding(24, 4, 3).to(torch.bfloat16)
    assert low.freqs.dtype == torch.float32 and torch.equal(low.freqs, fresh.freqs)
    assert RotaryEmbedding(24, 4, 3).double().freqs.dtype == torch.float64


def test_meta_and_unreadable_entries_are_checkpoint_errors(make_model, tmp_path):
    src = make_model(dtype=torch.float32)
    sd = dict(src.state_dict())
    key = next(iter(sd))
    model = StarFlow(src.config)
    with pytest.raises(CheckpointError, match=f"{key} is on the meta device"):
        load_state_dict_strict(model, {**sd, key: torch.empty(sd[key].shape, device="meta")})
    torch.save({k: v.to("meta") for k, v in sd.items()}, tmp_path / "meta.pth")   # saved from an empty model
    with pytest.raises(CheckpointError, match="meta device"):
        load_official(src.config, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match=f"{key} is not a tensor"):
        load_state_dict_strict(model, {**sd, key: [1.0, 2.0]})
    bad = {**sd, key: sd[key].clone().fill_(float("nan"))}
    with pytest.raises(CheckpointError, match=f"{key} contains NaN or infinite values"):
        load_state_dict_strict(model, bad)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])          # an interrupted download
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*cut.safetensors"):
        load_official(src.config, tmp_path / "cut.safetensors")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*cut.pth"):
        load_official(src.config, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch: .*checkpoint \(1, 2\)"):
        load_state_dict_strict(model, {**sd, key: torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="torch_dtype must be a floating"):
        load_official(src.config, tmp_path / "m.safetensors", torch_dtype=torch.int8)


@pytest.mark.gpu
def test_weights_go_straight_to_the_gpu(make_model, tmp_path):
    src = make_model(dtype=torch.float32)
    _files(src, tmp_path)
    model = load_official(src.config, tmp_path / "m.safetensors", torch_dtype=torch.bfloat16, device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"} and model.rope.freqs.device.type == "cuda"
    assert all(torch.equal(model.state_dict()[k].cpu(), v.bfloat16()) for k, v in src.state_dict().items())
