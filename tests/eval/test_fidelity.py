"""vidq_jax.eval.fidelity: error metrics, SSIM/PSNR properties, incoherence before/after balancing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.fixture_models import fixture_model

from vidq_jax.eval.fidelity import (
    denoiser_sqnr_by_step,
    fidelity_report,
    incoherence_by_timestep,
    latent_psnr_ssim,
    latent_range,
    relative_error,
    sqnr_db,
    step_summary,
    trajectory_errors,
)


def _img(seed=0, shape=(2, 16, 16, 3)):
    rng = np.random.default_rng(seed)
    base = np.cumsum(np.cumsum(rng.standard_normal(shape), axis=1), axis=2)  # smooth-ish structure
    return jnp.asarray(base / np.abs(base).max(), jnp.float32)


def test_error_metrics():
    a = _img()
    assert relative_error(a, a) == 0.0 and sqnr_db(a, a) == float("inf")
    b = a * 1.1
    assert relative_error(a, b) == pytest.approx(0.1, rel=1e-5)
    assert sqnr_db(a, b) == pytest.approx(20.0, abs=1e-3)  # 10 log10(1 / 0.01)
    traj = jnp.stack([a, a, b])
    errs = trajectory_errors(traj, jnp.stack([a, b, b]))
    assert errs["rel_error"][0] == 0 and errs["rel_error"][1] == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(ValueError, match="shapes"):
        trajectory_errors(traj, traj[:2])


def test_latent_psnr_ssim_uses_the_reference_range():
    from vidq_jax.eval.quality import psnr, ssim

    a = _img() * 3.0 + 1.0  # latents are not in [-1, 1]
    noise = jnp.asarray(np.random.default_rng(1).standard_normal(a.shape), jnp.float32)
    p0, s0 = latent_psnr_ssim(a, a)
    assert s0 == pytest.approx(1.0, abs=1e-6) and p0 >= 99.0
    lo, hi = latent_range(a)
    ps = [latent_psnr_ssim(a, a + sigma * noise) for sigma in (0.01, 0.1, 0.5)]
    assert ps[0][0] > ps[1][0] > ps[2][0] and 1.0 > ps[0][1] > ps[1][1] > ps[2][1]
    b = a + 0.1 * noise
    assert ps[1] == (psnr(a, b, data_range=hi - lo), ssim(a, b, value_range=(lo, hi)))
    assert latent_range(jnp.zeros((2, 3))) == (0.0, 1.0)


@pytest.fixture(scope="module")
def stdit():
    return fixture_model("opensora_v1_0_stdit")


def test_fidelity_report_and_incoherence(stdit):
    from vidq_jax.calibration import collect
    from vidq_jax.quant import QuantConfig, quantize_params

    model, params, cond, shape = stdit
    calib = list(collect(model, params, cond, steps=4, every_k_steps=2, latent_shape=shape[1:]))
    q = quantize_params(params, calib, model=model, config=QuantConfig.preset("viditq-w4a8", backend="xla"))
    noise = jax.random.normal(jax.random.PRNGKey(0), shape)
    rep = fidelity_report(model, params, q, noise, cond, calib_batches=calib, steps=4, key=jax.random.PRNGKey(1))
    assert rep["finite"] and 0 < rep["final_rel_error"] < 0.5 and rep["ssim"] < 1.0
    assert len(rep["steps"]["rel_error"]) == 4 and rep["bytes"] < rep["float_bytes"] / 2
    inc = rep["incoherence"]
    assert inc["timesteps"] == sorted(inc["timesteps"], reverse=True) and len(inc["timesteps"]) == 2
    summ = inc["summary"]
    # balancing (smoothing + rotation) flattens the worst layer's channels at every timestep
    assert all(a < b for a, b in zip(summ["worst_max_after"], summ["worst_max_before"]))
    assert all(a < b for a, b in zip(summ["mean_after"], summ["mean_before"]))
    # no balanced record (e.g. the float params themselves): nothing to report
    assert incoherence_by_timestep(model, params, params, calib)["layers"] == {}


def test_denoiser_sqnr_by_step():
    """Per-step SQNR of variants' outputs vs the float one (prediction channels only, batches of one step
    pooled), against another variant with ``versus``, and its summary."""
    from vidq_jax.calibration import CalibBatch

    class Scale:  # "denoiser": x times a per-channel scale; the second half of the channels is ignored
        def apply(self, variables, x, timestep):
            return x * variables["params"]["w"] + timestep[:, None, None, None] * 0

    x = _img(shape=(2, 4, 4, 4))
    batches = [CalibBatch(f"b{i}", {"x": x * (i + 1), "timestep": jnp.full((2,), 900.0 - 100 * s)}, s, 900.0 - 100 * s, 0)
               for i, s in enumerate([0, 0, 1, 2])]
    fp = {"w": jnp.ones(4)}
    noisy = {"w": jnp.asarray([1.1, 1.1, 5.0, 5.0])}  # 10 % error in the compared channels: 20 dB
    out = denoiser_sqnr_by_step(Scale(), fp, {"fp": fp, "q": noisy}, batches, channels=2, versus="fp", jitter=1e-3)
    assert out["floor"] == pytest.approx([60.0] * 3, abs=1e-2)  # a linear "model": the jitter itself
    assert out["steps"] == [0, 1, 2] and out["timesteps"] == [900.0, 800.0, 700.0]
    assert out["sqnr_db"]["fp"] == [float("inf")] * 3 and out["max_abs"]["fp"] == [0.0] * 3
    assert out["sqnr_db"]["q"] == pytest.approx([20.0] * 3, abs=1e-4) and out["sqnr_vs"]["q"] == out["sqnr_db"]["q"]
    assert out["max_abs"]["q"][1] == pytest.approx(float(jnp.max(jnp.abs(x[..., :2]))) * 0.3, rel=1e-5)
    s = step_summary([30.0, 12.0, 25.0], out["steps"], out["timesteps"])
    assert s == {"mean": pytest.approx(67 / 3), "min": 12.0, "worst_step": 1, "worst_timestep": 800.0}
    with pytest.raises(ValueError, match="versus"):
        denoiser_sqnr_by_step(Scale(), fp, {"q": noisy}, batches, versus="simulate")
    # outputs=: one variant per call, the float / reference / jittered outputs computed once and reused
    memo: dict = {}
    kw = dict(channels=2, versus="fp", jitter=1e-3, outputs=memo)
    first = denoiser_sqnr_by_step(Scale(), fp, {"fp": fp}, batches, **kw)
    assert first["floor"] == out["floor"] and "q" not in first["sqnr_db"]
    assert denoiser_sqnr_by_step(Scale(), fp, {"fp": fp, "q": noisy}, batches, **kw) == out
    assert len(memo) == 4 and all(len(v) == len(batches) for v in memo.values())
    memo["q"] = {j: jnp.zeros_like(v) for j, v in memo["q"].items()}  # reused, not recomputed
    assert denoiser_sqnr_by_step(Scale(), fp, {"fp": fp, "q": noisy}, batches, **kw)["sqnr_db"]["q"] == [0.0] * 3
