"""CUDA runs: every quantizer family gives the CPU's results on a GPU up to float tolerance, a run trains with
``--device cuda`` (also under ``--amp bf16``), and a CUDA-trained model exports. Skipped without a CUDA GPU; run them
on one with ``pytest -m cuda``.

Seeded noise (stochastic rounding, stochastic binarization) is drawn by each device's own generator, so it differs
between devices: the comparisons below use deterministic configurations only.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lowbit.cli import main
from lowbit.export import export_onnx, load_packed, save_packed
from lowbit.quantizers import build_quantizer
from lowbit.train import TrainConfig, Trainer
from test_quantizer_conformance import CONFIGS

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")


def _deterministic_cases():
    for kind, cases in CONFIGS.items():
        for i, case in enumerate(cases):
            if build_quantizer({"type": kind, **case.spec}, role=case.role).noise is not None:
                continue  # stochastic rounding (also a role's default): seeded noise differs by device
            yield pytest.param(kind, case, id=f"{kind}-{i}-{case.role}")


@pytest.mark.parametrize("kind, case", list(_deterministic_cases()))
def test_quantizer_forward_and_backward_on_cuda_match_the_cpu(kind, case):
    torch.manual_seed(0)
    shape = (16, 8, 3, 3) if case.role == "weight" else (16, 8, 5, 5)
    x = torch.randn(shape)
    if case.positive:
        x = x.relu()
    grad_out = torch.randn(shape)
    cpu = build_quantizer({"type": kind, **case.spec}, role=case.role, seed=1).train()
    gpu = copy.deepcopy(cpu).to(CUDA)
    results = {}
    for name, device, quantizer in (("cpu", torch.device("cpu"), cpu), ("cuda", CUDA, gpu)):
        xi = x.to(device).requires_grad_(True)
        out = quantizer(xi)
        out.backward(grad_out.to(device))
        grads = {name: p.grad.detach().cpu() for name, p in quantizer.named_parameters() if p.grad is not None}
        results[name] = (out.detach().cpu(), xi.grad.detach().cpu(), grads, quantizer.state_dict())
    (out_c, gx_c, grads_c, state_c), (out_g, gx_g, grads_g, state_g) = results["cpu"], results["cuda"]
    for key, value in state_c.items():  # lazily initialised statistics (LSQ step, ranges, d / q_max)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(state_g[key].cpu(), value, rtol=1e-5, atol=1e-7, msg=key)
    # reductions may sum in another order on the GPU: a statistic one ulp apart moves the rare value that lies at a
    # rounding boundary by one level, so a few elements (at most 1 in 1000) may differ; the rest agree to float
    # precision
    assert (~torch.isclose(out_g, out_c, rtol=1e-5, atol=1e-6)).float().mean() <= 1e-3
    assert (~torch.isclose(gx_g, gx_c, rtol=1e-4, atol=1e-5)).float().mean() <= 1e-3
    assert grads_g.keys() == grads_c.keys()
    for name, grad in grads_c.items():
        torch.testing.assert_close(grads_g[name], grad, rtol=1e-2, atol=1e-4, msg=name)


def test_stochastic_noise_on_cuda_resumes_exactly():
    quantizer = build_quantizer({"type": "uniform", "bits": 4, "rounding": "stochastic"}, role="weight", seed=3)
    quantizer = quantizer.to(CUDA).train()
    x = torch.randn(64, 64, device=CUDA)
    quantizer(x)
    saved = copy.deepcopy(quantizer.state_dict())
    expected = quantizer(x)
    fresh = build_quantizer({"type": "uniform", "bits": 4, "rounding": "stochastic"}, role="weight", seed=9)
    fresh = fresh.to(CUDA).train()
    fresh.load_state_dict(saved)
    assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_a_short_run_trains_on_cuda_and_exports(amp, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--recipe", "lsq-w4a4", "--device", "cuda", "--amp", amp, "--epochs", "1"]
    assert main([*args, "--train-subset", "256", "--test-subset", "64", "--out", str(out), "--no-progress"]) == 0
    assert main(["export", str(out), "--format", "onnx", "--out", str(tmp_path / "model.onnx")]) == 0
    assert (tmp_path / "model.onnx").stat().st_size > 0


@pytest.mark.parametrize("recipe", ["lsq-w4a4", "banner-w8a8g8", "mp-u2", "bc-det", "sr-adam"])
def test_a_cuda_trained_model_exports_and_loads_back_on_the_cpu(recipe, tmp_path):
    config = TrainConfig(
        recipe=recipe, data="digits", epochs=1, train_subset=256, test_subset=64, pretrain_epochs=0, device="cuda"
    )
    config.quiet = True
    trainer = Trainer(config)
    result = trainer.fit()
    model = result.model
    assert next(model.parameters()).device.type == "cuda"
    assert math.isfinite(result["test_accuracy"])
    x = trainer.example_batch(16)
    with torch.no_grad():
        expected = model.eval()(x).cpu()
    export_onnx(model, tmp_path / "model.onnx", example=x)
    save_packed(model, tmp_path / "model.lowbit", recipe=trainer.recipe, seed=config.seed, model_spec=None)
    assert next(model.parameters()).device.type == "cuda"  # exporting leaves the user's model where it is
    loaded = load_packed(tmp_path / "model.lowbit", model=_float_model(trainer))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x.cpu()), expected, rtol=1e-4, atol=1e-4)


def _float_model(trainer: Trainer) -> torch.nn.Module:
    from lowbit.models import build_model

    spec = trainer.model_spec
    return build_model(spec.name, spec.input_shape, spec.num_classes, **spec.options)
