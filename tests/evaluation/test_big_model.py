"""benchmarks/big_model.py: the floors its 3B figure is compared with."""
from .fake_official import load_script


def test_floors_use_the_gemm_rate_of_the_products_the_sample_ran():
    big = load_script("big_model")
    probe = {"read_bandwidth_gb_s": 10.0, "gemm_fp32_gflop_s": 50.0, "gemm_bf16_gflop_s": 100.0}
    blocks = {"block0": {"calls": 4, "bytes": 10 ** 9, "params": 5 * 10 ** 8, "row_tokens": 100}}
    run = {"per_block": blocks, "image_s": 8.0}
    fp32 = big.floors({**run, "compute": "float32 (layers_compute_in)"}, probe)
    bf16 = big.floors({**run, "compute": "bf16 products"}, probe)
    assert fp32["bandwidth_floor_s"] == bf16["bandwidth_floor_s"] == 0.4       # 4 GB at 10 GB/s
    assert fp32["tflop"] == 0.1 and fp32["arithmetic_floor_s"] == 2.0 and bf16["arithmetic_floor_s"] == 1.0
    assert bf16["image_over_arithmetic_floor"] == 8.0
