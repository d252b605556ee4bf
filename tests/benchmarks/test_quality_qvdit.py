"""benchmarks.quality_qvdit's time budget (--time-limit): the step arithmetic, and the whole run order on
a virtual clock with stand-ins for sampling, quantization and distillation (no model runs): both presets
get the planned steps, the run ends within the limit, the results are rewritten after every row and a
cut or skipped distillation shows in the table."""

from __future__ import annotations

import json
import types

import numpy as np

from benchmarks import quality_qvdit as qq
from models.families import FAMILIES


def test_plan_steps_and_reserve():
    assert qq.plan_steps(100.0, 20.0, 0.5, 2, 10_000) == 80  # (100 - 20) / (2 · 0.5)
    assert qq.plan_steps(100.0, 20.0, 0.5, 2, 50) == 50  # the cap
    assert qq.plan_steps(10.0, 20.0, 0.5, 2, 50) == 0  # nothing left
    t = {"setup": 8.0, "compile": 30.0, "step": 0.05}
    # first preset: finish (~setup) + row; second: setup + compile + finish + row; then the margin
    assert qq.reserve_s(t, 20.0, 1, 16.0) == 8 + 20 + (2 * 8 + 30 + 20) + 16
    b = qq.Budget(540.0, clock=lambda: 100.0, t0=0.0)
    assert b.elapsed() == 100.0 and b.left() == 440.0 and b.margin == max(10.0, 0.03 * 540)
    assert qq.Budget(None, clock=lambda: 5.0, t0=0.0).left() == float("inf")


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def fake_world(monkeypatch, clock: Clock, *, step_s: float, slow_second: float = 1.0):
    """Stand-ins advancing ``clock``: loading + calibration 40 s, quantizing 2 s, a row's sampling and
    metrics 20 s (12 s where the sampler is already compiled: a distilled row), a distillation's setup 8 s,
    compile 30 s, ``step_s`` per step (``× slow_second`` for the second preset), finish 6 s."""
    dm = types.SimpleNamespace(task="t2v", params={"w": np.zeros(3)}, model=FAMILIES["stdit3"], folder="fake",
                               name="stdit3-fake")
    setup = types.SimpleNamespace(dm=dm, calib=[types.SimpleNamespace(batch={"x": np.zeros((4, 8, 32, 32, 3))})],
                                  stats={})
    calls: dict[str, list] = {"distill": []}

    def prepare(spec, **kw):
        clock.t += 40.0
        return setup

    def evaluate(setup, q, ref):
        clock.t += 12.0 if q.get("distilled") else 20.0
        return np.zeros(1), {"psnr": 20.0, "ssim": 0.5, "fd": 1.0, "cond_acc": 0.5, "motion_acc": 0.5,
                             "temporal_consistency": 0.9, "finite": True, "sample_s": 1.0, "feature_dim": 8}

    def quantize_params(params, calib, **kw):
        clock.t += 2.0
        return dict(params)

    def distill(model, params, calib, *, config, steps, plan=None, time_limit=None, **kw):
        slow = slow_second if calls["distill"] else 1.0
        clock.t += 8.0
        timings = {"setup": 8.0, "compile": 30.0 + step_s, "step": step_s * slow}
        if plan is not None:
            clock.t += 30.0 + (1 + 3) * step_s  # compile + the probe's steps
            steps = min(max(plan(dict(timings)), 1), steps)
        t_train = clock.t
        done = 0
        for done in range(1, steps + 1):  # the first step compiles (without a plan)
            clock.t += step_s * slow + (30.0 if plan is None and done == 1 else 0.0)
            if time_limit is not None and clock.t - t_train > time_limit:
                break
        clock.t += 6.0
        calls["distill"].append({"config": config, "steps": steps, "done": done, "time_limit": time_limit})
        return types.SimpleNamespace(params={**params, "distilled": True}, steps=done, complete=done >= steps,
                                     settings={"steps": steps, "trainable_params": 10}, seconds_all=clock.t - t_train,
                                     timings=timings, before={"loss": 2.0}, after={"loss": 1.0})

    info = {"folder": "fake", "model": "STDiT3", "config": {"hidden_size": 192, "depth": 3},
            "sampler": {"sampler": "rflow", "steps": 30, "guidance_scale": 4.0}, "samples": 32,
            "eval_bank": "t2v_prompts", "eval_noise_seed": 0,
            "calibration": {"prompts": ["a", "b"], "every_k_steps": 6, "batches": 5}}
    for name, fn in (("prepare", prepare), ("evaluate", evaluate), ("quantize_params", quantize_params),
                     ("distill", distill), ("setup_info", lambda s: dict(info)), ("weight_bytes", lambda q: 1),
                     ("_bits_label", lambda cfg, params: "W4A6"), ("latent_frames", lambda model, shape: shape[1]),
                     ("distill_config", lambda model, params, cfg, frames: cfg),
                     ("dense_paths", lambda params: ["spatial_blocks_0/attn/qkv", "temporal_blocks_2/mlp/fc2"])):
        monkeypatch.setattr(qq, name, fn)
    return calls


def run_budget(monkeypatch, tmp_path, limit: float, **world):
    clock = Clock()
    calls = fake_world(monkeypatch, clock, **world)
    budget = qq.Budget(limit, clock=clock, t0=0.0)
    args = types.SimpleNamespace(lr=1e-5, scale_lr=None)
    env = {"date": "today", "jax_version": "0", "platform": "cpu", "gpu": "none", "cpu_count": 2, "backend": "xla"}
    written = []

    def write(rows, info):
        written.append([r["row"] for r in rows])
        (tmp_path / "q.md").write_text(qq.to_markdown(rows, info, env, args, budget.elapsed()))
        (tmp_path / "q.json").write_text(json.dumps({"rows": rows, "model": info}, default=float))

    run = qq.Run("t2v", 32, False, 10_000, 1e-5, None, "xla", progress=False)
    rows, info = qq.run(run, budget, write)
    return clock, calls, rows, info, written, (tmp_path / "q.md").read_text()


def test_time_limit_plans_equal_steps_and_finishes_in_time(monkeypatch, tmp_path):
    clock, calls, rows, info, written, md = run_budget(monkeypatch, tmp_path, 540.0, step_s=0.05)
    # fp + the calibration-only rows first (one write after each), then the two distillations
    assert written[0] == ["fp"] and len(written) == 8
    assert [c["config"] for c in calls["distill"]] == ["qvdit-w4a6", "qvdit-w3a6"]
    steps = [c["steps"] for c in calls["distill"]]
    assert steps[0] == steps[1] == info["budget"]["planned_steps"] > 100
    assert [r["distill_steps"] for r in rows if "distill_steps" in r] == steps  # what ran, in the table
    assert clock.t <= 540.0 and clock.t > 540.0 - 60  # in time, without wasting the budget
    assert [r["row"] for r in rows] == ["fp", "viditq-w4a8", "viditq-w4a6-mp", "qvdit-w4a6 (calibration)",
                                        "qvdit-w4a6", "viditq-w3a6-mp", "qvdit-w3a6 (calibration)", "qvdit-w3a6"]
    assert f"{steps[0]} steps per preset planned" in md and "PARTIAL" not in md
    assert f"| {steps[0]} |" in md


def test_time_limit_cuts_a_slow_second_preset_and_keeps_rows(monkeypatch, tmp_path):
    clock, calls, rows, info, written, md = run_budget(monkeypatch, tmp_path, 540.0, step_s=0.05, slow_second=3.0)
    first, second = calls["distill"]
    assert second["steps"] == first["steps"] and second["done"] < second["steps"]  # stopped early, not overrun
    assert clock.t <= 540.0
    assert "cut:" in rows[-1]["method"] and not rows[-1]["distill_complete"]

    # no time for a second distillation at all: skipped, the table says so
    clock, calls, rows, info, written, md = run_budget(monkeypatch, tmp_path, 260.0, step_s=0.05)
    assert len(calls["distill"]) == 1 and info["budget"]["skipped"] == ["qvdit-w3a6"]
    assert "qvdit-w3a6" not in [r["row"] for r in rows] and "PARTIAL" in md and "skipped for lack of time" in md


def test_no_limit_trains_the_given_steps(monkeypatch, tmp_path):
    clock, calls, rows, info, written, md = run_budget(monkeypatch, tmp_path, None, step_s=0.01)
    assert [c["steps"] for c in calls["distill"]] == [10_000, 10_000]
    assert all(c["time_limit"] is None for c in calls["distill"])
