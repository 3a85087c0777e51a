"""Size metrics: counts, serialized bytes (dense and CSR), FLOPs, CPU latency, the per-epoch probe."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from trainables.metric_names import METRICS
from trainables.models import build_model
from trainables.size import (
    SizeProbe,
    count_flops,
    count_nonzero_params,
    count_params,
    cpu_latency_ms,
    size_metrics,
    sparse_state_dict_bytes,
    state_dict_bytes,
)


def _tiny_vgg() -> nn.Module:
    return build_model("vgg11_bn", num_classes=4, image_size=32, width_divisor=16)


def test_counts_params_and_nonzero_params() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(5, 2))
    assert count_params(model) == 3 * 4 * 9 + 4 + 5 * 2 + 2
    with torch.no_grad():
        model[0].weight[:2] = 0.0
        model[1].bias.zero_()
    assert count_nonzero_params(model) == count_params(model) - 2 * 27 - 2


def test_flops_of_a_convolution_and_a_linear_layer_are_twice_their_multiply_adds() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, 16) == 2 * 8 * 3 * 9 * 16 * 16
    head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    assert count_flops(head, 4) == 2 * 48 * 5


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_sparse_bytes_shrink_with_zeros_and_restore_the_weights() -> None:
    model = _tiny_vgg()
    dense = state_dict_bytes(model)
    assert dense > 4 * count_params(model)  # parameters plus BN buffers
    # Without zeros CSR never pays, so the sparse form is the dense one.
    assert sparse_state_dict_bytes(model) == pytest.approx(dense, rel=0.01)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.mul_(torch.rand_like(module.weight) < 0.1)
    assert sparse_state_dict_bytes(model) < 0.5 * dense
    # The stored CSR matrices give the weights back.
    from trainables.size import _sparse_if_smaller

    buffer = io.BytesIO()
    torch.save({k: _sparse_if_smaller(v) for k, v in model.state_dict().items()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    for name, value in model.state_dict().items():
        stored = loaded[name]
        if stored.layout == torch.sparse_csr:
            assert stored.crow_indices().dtype == torch.int32
            stored = stored.to_dense().reshape(value.shape)
        assert torch.equal(stored, value)


def test_latency_is_measured_on_a_copy_and_leaves_the_model_as_it_was() -> None:
    model = _tiny_vgg().train()
    latency = cpu_latency_ms(model, 32, repeats=2)
    assert math.isfinite(latency)
    assert latency > 0
    assert model.training
    with pytest.raises(ValueError, match="repeats: must be >= 1"):
        cpu_latency_ms(model, 32, repeats=0)


def test_size_metrics_are_canonical_names() -> None:
    model = _tiny_vgg()
    metrics = size_metrics(
        model,
        32,
        reference_params=2 * count_params(model),
        sparse=True,
        large_batch=32,
        latency_repeats=2,
    )
    assert set(metrics) == {
        "params",
        "nonzero_params",
        "model_bytes",
        "flops",
        "latency_ms",
        "param_fraction",
        "model_bytes_sparse",
        "latency_ms_b32",
    }
    assert set(metrics) <= set(METRICS)
    assert metrics["param_fraction"] == count_nonzero_params(model) / (2 * count_params(model))
    assert metrics["params"] == count_params(model)


def test_probe_times_batch_32_only_at_the_final_epoch() -> None:
    model = _tiny_vgg()
    probe = SizeProbe(32, final_epoch=2, next_epoch=1, extra={"prune_rate": 0.5})
    first = probe(model)
    assert "latency_ms_b32" not in first
    assert first["prune_rate"] == 0.5
    assert "latency_ms_b32" in probe(model)
