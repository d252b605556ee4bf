"""Tests of vidq_jax.sampling: DPM-Solver++ vs diffusers, time-uniform DPM-Solver, IDDPM/DDIM and
rectified-flow schedules and loops against independent numpy computations, CFG plumbing, tracing."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax import sampling as S

B, H, W, C = 2, 4, 6, 4
L, D = 3, 5

_rng = np.random.default_rng(1234)
NOISE = _rng.standard_normal((B, H, W, C)).astype(np.float32)
Y_COND = _rng.standard_normal((B, L, D)).astype(np.float32)
Y_NULL = _rng.standard_normal((B, L, D)).astype(np.float32)
W_X = (0.5 * _rng.standard_normal((C, 2 * C))).astype(np.float32)
W_Y = (0.5 * _rng.standard_normal((D, 2 * C))).astype(np.float32)


def toy_out(x, t, y, xp):
    """A fixed nonlinear 'model' of (x, t, y) with 2C output channels, written for numpy / torch / jnp."""
    if xp.__name__ == "torch":
        import torch

        tt = t.to(torch.float32)[:, None, None, None] / 1000.0
        ym = (y.mean(1) @ torch.from_numpy(W_Y))[:, None, None, :]
        return torch.tanh(x @ torch.from_numpy(W_X) + ym * torch.cos(3.0 * tt)) + 0.1 * torch.sin(5.0 * tt)
    tt = xp.asarray(t).astype(x.dtype)[:, None, None, None] / 1000.0
    ym = (y.mean(1) @ W_Y.astype(x.dtype))[:, None, None, :]
    return xp.tanh(x @ W_X.astype(x.dtype) + ym * xp.cos(3.0 * tt)) + 0.1 * xp.sin(5.0 * tt)


def toy_apply(params, x, timestep, y, mask=None, **extra):
    del params, mask, extra
    return toy_out(x, timestep, y, jnp)


def guided_np(x, t, gs, cfg, channels=None):
    """Reference guidance (numpy float64): all prediction channels, or only the first `channels`."""
    tt = np.full((B,), t, dtype=np.float64)
    c = toy_out(x, tt, Y_COND.astype(np.float64), np)
    if not cfg:
        return c
    u = toy_out(x, tt, Y_NULL.astype(np.float64), np)
    k = C if channels is None else channels
    out = c.copy()
    out[..., :k] = u[..., :k] + gs * (c[..., :k] - u[..., :k])
    return out


def assert_traj_close(got, ref, rtol):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    for i in range(ref.shape[0]):
        scale = max(np.abs(ref[i]).max(), 1e-6)
        err = np.abs(got[i] - ref[i]).max() / scale
        assert err < rtol, f"step {i}: relative error {err:.3g} >= {rtol}"


# ----------------------------------------------------------------------------- DPM-Solver++ (diffusers)


def test_diffusers_tables_bit_exact():
    from diffusers import DPMSolverMultistepScheduler

    sch = DPMSolverMultistepScheduler()
    np.testing.assert_array_equal(S.diffusers_alphas_cumprod(), sch.alphas_cumprod.numpy())
    for steps in (1, 5, 7, 20, 25, 50, 100):
        sch.set_timesteps(steps)
        np.testing.assert_array_equal(S.diffusers_dpm_timesteps(steps), sch.timesteps.numpy())
        sched = S.dpm_solver_schedule(steps, "diffusers")
        np.testing.assert_array_equal(sched.model_timesteps, sch.timesteps.numpy())
        sig = sch.sigmas.numpy().astype(np.float64)  # sigma = sigma_t / alpha_t
        with np.errstate(divide="ignore", invalid="ignore"):
            np.testing.assert_allclose(sched.sigma / sched.alpha, sig, rtol=3e-7)  # float32 table, 1 ulp
        expected_orders = [1] + [2] * (steps - 2) + [1] if steps > 1 else [1]
        assert list(sched.orders) == expected_orders


def _run_diffusers(steps, gs, cfg):
    import torch
    from diffusers import DPMSolverMultistepScheduler

    sch = DPMSolverMultistepScheduler()  # library defaults: dpmsolver++, order 2, linspace, zero final sigma
    sch.set_timesteps(steps)
    x = torch.from_numpy(NOISE)
    y = torch.from_numpy(np.concatenate([Y_COND, Y_NULL]) if cfg else Y_COND)
    traj = []
    for t in sch.timesteps:
        x_in = torch.cat([x, x]) if cfg else x
        out = toy_out(x_in, t.expand(x_in.shape[0]), y, torch)[..., :C]
        if cfg:
            c, u = out.chunk(2)
            out = u + gs * (c - u)
        x = sch.step(out, t, x).prev_sample
        traj.append(x.numpy())
    return np.stack(traj)


@pytest.mark.parametrize("steps,gs,cfg", [(20, 4.5, True), (8, 1.0, True), (13, 2.0, True), (6, 4.5, False)])
def test_dpm_solver_matches_diffusers(steps, gs, cfg):
    ref = _run_diffusers(steps, gs, cfg and gs != 1.0)
    cond = {"y": Y_COND, "mask": np.ones((B, L), np.int32), "scale": 2, "unused": None}
    uncond = {"y": Y_NULL, "unused": None} if cfg else None
    final, traj = S.sample_dpm_solver(toy_apply, {}, jnp.asarray(NOISE), cond, uncond, steps=steps,
                                      guidance_scale=gs, return_trajectory=True)
    assert traj.shape == (steps, B, H, W, C)
    np.testing.assert_array_equal(np.asarray(final), np.asarray(traj[-1]))
    assert_traj_close(traj, ref, 1e-5)


# ----------------------------------------------------------------------------- DPM-Solver++ (time uniform)


def _time_uniform_reference(steps, gs):
    """Original DPM-Solver multistep (order 2, time_uniform, discrete VP), written in float64."""
    n = 1000
    log_alpha_tab = 0.5 * np.cumsum(np.log(1.0 - np.linspace(1e-4, 0.02, n)))
    t_tab = np.arange(1, n + 1) / n

    def log_alpha(t):
        return np.interp(t, t_tab, log_alpha_tab)

    def alpha(t):
        return math.exp(log_alpha(t))

    def sigma(t):
        return math.sqrt(1.0 - math.exp(2.0 * log_alpha(t)))

    def lam(t):
        return log_alpha(t) - math.log(sigma(t))

    def data_pred(x, t):
        eps = guided_np(x, (t - 1.0 / n) * 1000.0, gs, True)[..., :C]
        return (x - sigma(t) * eps) / alpha(t)

    ts = np.linspace(1.0, 1.0 / n, steps + 1)
    x = NOISE.astype(np.float64)
    preds = [data_pred(x, ts[0])]
    traj = []
    for i in range(1, steps + 1):
        s, t = ts[i - 1], ts[i]
        h = lam(t) - lam(s)
        order = 1 if i == 1 else (min(2, steps + 1 - i) if steps < 10 else 2)
        x = sigma(t) / sigma(s) * x - alpha(t) * np.expm1(-h) * preds[-1]
        if order == 2:
            r0 = (lam(s) - lam(ts[i - 2])) / h
            x = x - 0.5 * alpha(t) * np.expm1(-h) * (preds[-1] - preds[-2]) / r0
        traj.append(x)
        if i < steps:
            preds.append(data_pred(x, t))
    return np.stack(traj)


@pytest.mark.parametrize("steps", [20, 6])
def test_dpm_solver_time_uniform(steps):
    t_cont, t_model = S.time_uniform_timesteps(steps)
    np.testing.assert_allclose(t_cont, np.linspace(1.0, 1e-3, steps + 1), rtol=1e-6)
    np.testing.assert_allclose(t_model, (np.linspace(1.0, 1e-3, steps + 1)[:-1] - 1e-3) * 1000, atol=1e-4)
    assert t_model[0] == 999.0
    ref = _time_uniform_reference(steps, 4.5)
    _, traj = S.sample_dpm_solver(toy_apply, None, jnp.asarray(NOISE), {"y": Y_COND}, {"y": Y_NULL}, steps=steps,
                                  guidance_scale=4.5, discretization="time_uniform", return_trajectory=True)
    assert_traj_close(traj, ref, 2e-5)


# ----------------------------------------------------------------------------- IDDPM / DDIM schedules


def test_space_timesteps():
    for n in (100, 20, 50):
        expected = [int(round(i * 999 / (n - 1))) for i in range(n)]
        assert S.space_timesteps(1000, str(n)) == expected
    assert S.space_timesteps(1000, 1000) == list(range(1000))
    assert S.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert S.space_timesteps(100, "5,5") == [0, 12, 24, 37, 49, 50, 62, 74, 87, 99]  # Python round: 24.5 -> 24


@pytest.mark.parametrize("steps", [100, 20])
def test_iddpm_schedule_against_formulas(steps):
    sched = S.iddpm_schedule(steps)
    kept = np.array(S.space_timesteps(1000, str(steps)))
    np.testing.assert_array_equal(sched.timestep_map, kept)
    base_abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    abar = base_abar[kept]  # respacing keeps the marginals at the kept steps
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta = 1.0 - abar / abar_prev
    np.testing.assert_allclose(sched.betas, beta, rtol=1e-10)
    np.testing.assert_allclose(sched.alphas_cumprod, abar, rtol=1e-10)
    np.testing.assert_allclose(sched.alphas_cumprod_prev, abar_prev, rtol=1e-10)
    post_var = beta * (1.0 - abar_prev) / (1.0 - abar)
    np.testing.assert_allclose(sched.posterior_variance, post_var, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(sched.posterior_log_variance_clipped[1:], np.log(post_var[1:]), rtol=1e-10)
    assert sched.posterior_log_variance_clipped[0] == pytest.approx(np.log(post_var[1]))
    np.testing.assert_allclose(sched.posterior_mean_coef1, np.sqrt(abar_prev) * beta / (1.0 - abar), rtol=1e-10)
    np.testing.assert_allclose(sched.posterior_mean_coef2, np.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar),
                               rtol=1e-10)
    np.testing.assert_allclose(sched.sqrt_recip_alphas_cumprod, 1.0 / np.sqrt(abar), rtol=1e-10)
    np.testing.assert_allclose(sched.sqrt_recipm1_alphas_cumprod, np.sqrt((1.0 - abar) / abar), rtol=1e-10)
    # the full schedule equals the un-respaced linear schedule
    full = S.iddpm_schedule(1000)
    np.testing.assert_allclose(full.betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-9)


# ----------------------------------------------------------------------------- IDDPM / DDIM sampling


def _iddpm_reference(steps, gs, key, channels=3):
    sched_kept = np.array(S.space_timesteps(1000, str(steps)))
    base_abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    abar = base_abar[sched_kept]
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta = 1.0 - abar / abar_prev
    post_var = beta * (1.0 - abar_prev) / (1.0 - abar)
    min_log_tab = np.log(np.concatenate([[post_var[1]], post_var[1:]]))
    x = NOISE.astype(np.float64)
    traj = []
    for k, i in enumerate(range(steps - 1, -1, -1)):
        out = guided_np(x, sched_kept[i], gs, True, channels)
        eps, v = out[..., :C], out[..., C:]
        x0 = (x - np.sqrt(1.0 - abar[i]) * eps) / np.sqrt(abar[i])
        mean = (np.sqrt(abar_prev[i]) * beta[i] * x0 + np.sqrt(1 - beta[i]) * (1 - abar_prev[i]) * x) / (1 - abar[i])
        frac = (v + 1.0) / 2.0
        log_var = frac * np.log(beta[i]) + (1 - frac) * min_log_tab[i]
        z = np.asarray(S.step_noise(key, k, x.shape), np.float64)
        x = mean + (i > 0) * np.exp(0.5 * log_var) * z
        traj.append(x)
    return np.stack(traj)


def test_iddpm_matches_reference_and_is_deterministic():
    steps, gs = 20, 7.0
    key = jax.random.PRNGKey(0)
    args = (toy_apply, {}, jnp.asarray(NOISE), {"y": Y_COND}, {"y": Y_NULL})
    kw = dict(steps=steps, guidance_scale=gs, return_trajectory=True)
    final, traj = S.sample_iddpm(*args, key=key, **kw)
    assert_traj_close(traj, _iddpm_reference(steps, gs, key), 2e-5)
    again, _ = S.sample_iddpm(*args, key=key, **kw)
    np.testing.assert_array_equal(np.asarray(final), np.asarray(again))
    other, _ = S.sample_iddpm(*args, key=jax.random.PRNGKey(1), **kw)
    assert np.abs(np.asarray(other) - np.asarray(final)).max() > 1e-3


def test_ddim_matches_reference():
    steps, gs = 20, 4.0
    kept = np.array(S.space_timesteps(1000, str(steps)))
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[kept]
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    x = NOISE.astype(np.float64)
    traj = []
    for i in range(steps - 1, -1, -1):
        eps = guided_np(x, kept[i], gs, True, 3)[..., :C]
        x0 = (x - np.sqrt(1.0 - abar[i]) * eps) / np.sqrt(abar[i])
        x = np.sqrt(abar_prev[i]) * x0 + np.sqrt(1.0 - abar_prev[i]) * eps
        traj.append(x)
    _, got = S.sample_ddim(toy_apply, {}, jnp.asarray(NOISE), {"y": Y_COND}, {"y": Y_NULL}, steps=steps,
                           guidance_scale=gs, return_trajectory=True)
    assert_traj_close(got, np.stack(traj), 2e-5)
    # eta > 0 is stochastic and keyed
    a = S.sample_ddim(toy_apply, {}, jnp.asarray(NOISE), {"y": Y_COND}, None, steps=5, eta=1.0,
                      key=jax.random.PRNGKey(3))
    b = S.sample_ddim(toy_apply, {}, jnp.asarray(NOISE), {"y": Y_COND}, None, steps=5, eta=1.0,
                      key=jax.random.PRNGKey(4))
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def _const_apply(params, x, timestep, y, mask=None):
    """Output = per-sample constant taken from y[:, 0, :2C] (so cond / uncond rows differ)."""
    del params, timestep, mask
    return jnp.broadcast_to(y[:, 0, None, None, : 2 * C], x.shape[:-1] + (2 * C,))


@pytest.mark.parametrize("sampler", ["iddpm", "ddim"])
@pytest.mark.parametrize("channels", [3, None])
def test_iddpm_cfg_channel_quirk(sampler, channels):
    """One respaced step (t = 0, no noise) gives x0 = sqrt(1/abar) x - sqrt(1/abar - 1) eps exactly."""
    rng = np.random.default_rng(7)
    yc = rng.uniform(-1, 1, (B, 1, 2 * C)).astype(np.float32)
    yu = rng.uniform(-1, 1, (B, 1, 2 * C)).astype(np.float32)
    gs = 3.0
    fn = S.sample_iddpm if sampler == "iddpm" else S.sample_ddim
    kw = {"key": jax.random.PRNGKey(0)} if sampler == "iddpm" else {}
    got = fn(_const_apply, {}, jnp.asarray(NOISE), {"y": yc}, {"y": yu}, steps=1, guidance_scale=gs,
             cfg_channels=channels, **kw)
    k = C if channels is None else channels
    eps = yc[:, 0, :C].copy()
    eps[:, :k] = yu[:, 0, :k] + gs * (yc[:, 0, :k] - yu[:, 0, :k])
    abar = 1.0 - 1e-4
    expected = NOISE / np.sqrt(abar) - np.sqrt(1.0 / abar - 1.0) * eps[:, None, None, :]
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    if channels == 3:  # channel 3 is the conditional epsilon, unguided
        assert not np.allclose(eps[:, 3], yu[:, 0, 3] + gs * (yc[:, 0, 3] - yu[:, 0, 3]))


# ----------------------------------------------------------------------------- rectified flow


def test_rflow_schedule_against_formulas():
    assert S.num_frames_equivalent(1) == 1
    assert S.num_frames_equivalent(51) == 15
    assert S.num_frames_equivalent(102) == 30
    assert S.rflow_size_from_latent((1, 15, 30, 53, 4)) == (240, 424, 51)
    assert S.rflow_size_from_latent((1, 64, 64, 4)) == (512, 512, 1)
    with pytest.raises(ValueError):
        S.rflow_size_from_latent((1, 4, 8, 8, 4))
    for (h, w, f) in [(240, 426, 51), (512, 512, 1), (720, 1280, 102)]:
        ratio = S.rflow_time_ratio(h, w, f)
        nf = 1 if f == 1 else f // 17 * 5
        assert ratio == pytest.approx(math.sqrt(h * w / 512**2) * math.sqrt(nf), rel=1e-12)
        t = np.array([(1 - i / 30) * 1000 for i in range(30)]) / 1000
        expected = ratio * t / (1 + (ratio - 1) * t) * 1000
        np.testing.assert_allclose(S.rflow_timesteps(30, ratio), expected, rtol=1e-12)
        sched = S.rflow_schedule(30, ratio)
        np.testing.assert_allclose(sched.timesteps, expected, rtol=1e-6)
        dt = np.append(expected[:-1] - expected[1:], expected[-1]) / 1000
        np.testing.assert_allclose(sched.dt, dt, rtol=1e-5, atol=1e-7)
        assert sched.timesteps[0] == pytest.approx(1000.0)
    np.testing.assert_allclose(S.rflow_timesteps(4), [1000, 750, 500, 250])


def test_rflow_sampling_matches_reference():
    steps, gs = 7, 7.0
    x5 = np.repeat(NOISE[:, None], 5, axis=1)  # (B, T=5, H, W, C): 5 latent frames <-> 17 pixel frames

    def apply5(params, x, timestep, y, mask=None, fps=None, height=None, width=None):
        assert fps is not None and fps.shape == (x.shape[0],)
        out = toy_out(x.reshape(x.shape[0], -1, W, C), timestep, y, jnp)
        return out.reshape(x.shape[:-1] + (2 * C,))

    ratio = math.sqrt(H * 8 * W * 8 / 512**2) * math.sqrt(5)
    t = np.array([(1 - i / steps) for i in range(steps)])
    t = ratio * t / (1 + (ratio - 1) * t) * 1000
    x = x5.astype(np.float64)
    traj = []
    for i in range(steps):
        v = guided_np(x.reshape(B, -1, W, C), t[i], gs, True).reshape(x.shape[:-1] + (2 * C,))[..., :C]
        dt = (t[i] - (t[i + 1] if i + 1 < steps else 0.0)) / 1000
        x = x + v * dt
        traj.append(x)
    cond = {"y": Y_COND, "fps": np.full((B,), 24.0, np.float32), "height": np.full((B,), 32.0, np.float32),
            "width": np.full((B,), 48.0, np.float32)}
    _, got = S.sample_rflow(apply5, {}, jnp.asarray(x5), cond, {"y": Y_NULL}, steps=steps, guidance_scale=gs,
                            return_trajectory=True)
    assert_traj_close(got, np.stack(traj), 2e-5)


def test_rflow_step_kwarg_and_no_transform():
    def apply_step(params, x, timestep, y, step):
        return jnp.broadcast_to(step.astype(x.dtype), x.shape)

    steps = 6
    got = S.sample_rflow(apply_step, {}, jnp.asarray(NOISE), {"y": Y_COND}, None, steps=steps,
                         use_timestep_transform=False, step_kwarg="step")
    dt = S.rflow_schedule(steps).dt.astype(np.float64)
    np.testing.assert_allclose(np.asarray(got), NOISE + np.sum(np.arange(steps) * dt), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dt, np.full(steps, 1 / steps), rtol=1e-6)


# ----------------------------------------------------------------------------- plumbing


def test_combine_cfg_inputs():
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    merged = S.combine_cfg_inputs({"y": Y_COND, "mask": mask, "n": 3, "none": None, "d": {"a": np.ones((B, 2))}},
                                  {"y": Y_NULL, "none": None, "d": {"a": np.zeros((B, 2))}})
    np.testing.assert_array_equal(merged["y"], np.concatenate([Y_COND, Y_NULL]))
    np.testing.assert_array_equal(merged["mask"], np.concatenate([mask, mask]))
    assert merged["n"] == 3 and merged["none"] is None
    np.testing.assert_array_equal(merged["d"]["a"], np.concatenate([np.ones((B, 2)), np.zeros((B, 2))]))
    with pytest.raises(ValueError):
        S.combine_cfg_inputs({"y": Y_COND}, {"y": Y_NULL, "extra": 1})
    with pytest.raises(ValueError):
        S.combine_cfg_inputs({"y": Y_COND, "mask": mask}, {"y": Y_NULL, "mask": None})
    with pytest.raises(ValueError):
        S.combine_cfg_inputs({"n": 1}, {"n": 2})


@pytest.mark.parametrize("name", ["dpm", "dpm_uniform", "iddpm", "ddim", "rflow"])
def test_loop_traces_model_once(name):
    counts = []
    for steps in (2, 5, 11):
        calls = [0]

        def counted(params, x, timestep, y, mask=None):
            calls[0] += 1
            return toy_apply(params, x, timestep, y)

        kw = dict(steps=steps, guidance_scale=2.0)
        args = (counted, {}, jnp.asarray(NOISE), {"y": Y_COND}, {"y": Y_NULL})
        if name == "dpm":
            S.sample_dpm_solver(*args, **kw)
        elif name == "dpm_uniform":
            S.sample_dpm_solver(*args, discretization="time_uniform", **kw)
        elif name == "iddpm":
            S.sample_iddpm(*args, key=jax.random.PRNGKey(0), **kw)
        elif name == "ddim":
            S.sample_ddim(*args, **kw)
        else:
            S.sample_rflow(*args, ratio=1.5, **kw)
        counts.append(calls[0])
        # a second call with the same apply_fn (other guidance scale, other y) hits the compile cache
        if name == "dpm":
            S.sample_dpm_solver(counted, {}, jnp.asarray(NOISE), {"y": Y_NULL}, {"y": Y_COND}, steps=steps,
                                guidance_scale=3.0)
            assert calls[0] == counts[-1]
    assert counts == [1, 1, 1]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass
class FakeQuantRecord:
    """A stand-in quantized weight record: array children + static metadata."""

    q: jax.Array
    scale: jax.Array
    bits: int

    def tree_flatten(self):
        return (self.q, self.scale), self.bits

    @classmethod
    def tree_unflatten(cls, bits, children):
        return cls(*children, bits)

    def dequant(self):
        return self.q.astype(jnp.float32) * self.scale


class Tag:
    """A plain (unregistered) non-array leaf, hashable by identity."""

    mode = "fake"


def test_params_pytree_with_custom_leaves_passes_through():
    scale = np.float32(0.01)
    q = np.round(W_X / scale).astype(np.int8)
    tag = Tag()
    params = {"rec": FakeQuantRecord(jnp.asarray(q), jnp.asarray(scale), 8), "tag": tag, "name": "w", "skip": None}

    def apply_q(p, x, timestep, y):
        assert isinstance(p["rec"], FakeQuantRecord) and p["rec"].bits == 8
        assert p["tag"] is tag and p["name"] == "w" and p["skip"] is None
        w = p["rec"].dequant()
        tt = timestep.astype(x.dtype)[:, None, None, None] / 1000.0
        return jnp.tanh(x @ w + tt) + y.mean((1, 2))[:, None, None, None]

    def apply_f(p, x, timestep, y):
        w = jnp.asarray(q.astype(np.float32) * scale)
        tt = timestep.astype(x.dtype)[:, None, None, None] / 1000.0
        return jnp.tanh(x @ w + tt) + y.mean((1, 2))[:, None, None, None]

    got = S.sample_rflow(apply_q, params, jnp.asarray(NOISE), {"y": Y_COND}, {"y": Y_NULL}, steps=4, ratio=2.0)
    ref = S.sample_rflow(apply_f, {}, jnp.asarray(NOISE), {"y": Y_COND}, {"y": Y_NULL}, steps=4, ratio=2.0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_video_latent_and_no_cfg_paths():
    x = jnp.asarray(np.repeat(NOISE[:, None], 2, axis=1))  # (B, T, H, W, C)

    def apply_v(params, x, timestep, y):
        return jnp.concatenate([0.1 * x, jnp.zeros_like(x)], axis=-1)

    # guidance_scale 1 == no CFG == uncond None
    a = S.sample_dpm_solver(apply_v, {}, x, {"y": Y_COND}, {"y": Y_NULL}, steps=4, guidance_scale=1.0)
    b = S.sample_dpm_solver(apply_v, {}, x, {"y": Y_COND}, None, steps=4)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.shape == x.shape and a.dtype == jnp.float32
    c = S.sample_dpm_solver(apply_v, {}, x.astype(jnp.bfloat16), {"y": Y_COND}, None, steps=4)
    assert c.dtype == jnp.float32
    with pytest.raises(ValueError):
        S.sample_rflow(apply_v, {}, x, {"y": Y_COND}, None, steps=2)  # 2 latent frames: pass num_frames
    out = S.sample_rflow(apply_v, {}, x, {"y": Y_COND}, None, steps=2, num_frames=17)
    assert out.shape == x.shape
