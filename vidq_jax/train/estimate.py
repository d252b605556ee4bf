"""Throughput measurement and an (honestly labelled) GPU extrapolation.

``python -m vidq_jax.train estimate`` measures, for each task at FULL model size, the train-step
time on this machine (small batch), and the XLA-counted FLOPs of one train step at the GPU batch
size. The H100 estimate is ``flops_per_step / (peak_bf16 * utilisation)`` for a utilisation range
typical of small transformers (10–30 % of the 989 TFLOP/s dense bf16 peak) — an extrapolation, not
a measurement.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from vidq_jax.train.configs import default_train_config
from vidq_jax.train.loop import optimizer, dit_init, learning_rate
from vidq_jax.train.tasks import build_task

__all__ = ["measure"]

H100_BF16_PEAK = 989e12


def _step_fn(task, cfg, dtype):
    model = task.model_cls(task.model_config, dtype=dtype)
    loss_fn = task.loss_builder(model)
    tx = optimizer(cfg)

    def step(params, opt, key):
        loss, g = jax.value_and_grad(loss_fn)(params, key)
        upd, opt = tx.update(g, opt, params)
        lr = learning_rate(cfg, 100, cfg.steps)
        return jax.tree_util.tree_map(lambda p, u: p - lr * u, params, upd), opt, loss

    model = task.model_cls(task.model_config)
    params = dit_init(model, jax.jit(model.init)(jax.random.key(0, impl="rbg"), **task.init_inputs)["params"])
    return jax.jit(step), params, tx.init(params)


def measure(task_name: str, cpu_batch: int = 4, iters: int = 3, out_dir=None, log=print) -> dict:
    import tempfile
    from pathlib import Path

    out = Path(out_dir or tempfile.mkdtemp())
    res: dict = {"task": task_name}
    gpu_cfg = default_train_config(task_name)
    for label, batch in (("gpu_batch", gpu_cfg.batch_size), ("cpu_batch", cpu_batch)):
        cfg = default_train_config(task_name, batch_size=batch)
        task = build_task(cfg, out, encoder="hash", log=lambda s: None)
        step, params, opt = _step_fn(task, cfg, jnp.float32)
        key = jax.random.key(1, impl="rbg")
        lowered = step.lower(params, opt, key)
        if label == "gpu_batch":
            cost = lowered.compile().cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            res["batch_gpu"] = batch
            res["flops_per_step_gpu_batch"] = float(cost.get("flops", float("nan")))
            continue
        compiled = lowered.compile()
        p, o, loss = compiled(params, opt, key)
        jax.block_until_ready(loss)
        t0 = time.time()
        for i in range(iters):
            p, o, loss = compiled(p, o, jax.random.fold_in(key, i))
        jax.block_until_ready(loss)
        dt = (time.time() - t0) / iters
        res.update(batch_cpu=batch, cpu_s_per_step=dt, cpu_steps_per_s=1.0 / dt,
                   cpu_samples_per_s=batch / dt, cpu_devices=str(jax.devices()[0]))
    f = res["flops_per_step_gpu_batch"]
    res["h100_s_per_step_range"] = [f / (H100_BF16_PEAK * 0.30), f / (H100_BF16_PEAK * 0.10)]
    res["h100_minutes_for_default_steps_range"] = [s * gpu_cfg.steps / 60 for s in res["h100_s_per_step_range"]]
    res["default_steps"] = gpu_cfg.steps
    log(res)
    return res
