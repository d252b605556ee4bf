"""Generic training loop: optax AdamW, EMA, orbax checkpoints (resumable), loss curve, record, export.

Run folder ``OUT``::

    OUT/ckpt/<step>/        orbax CheckpointManager (params, EMA, optimizer state, step) — resumable
    OUT/captions.npz        cached caption features of the training captions
    OUT/loss.png            loss curve (raw + smoothed, log scale)
    OUT/record.json         steps, wall time, steps/s, device, final loss, configs, loss history
    OUT/samples.png|.gif    preview of the EMA model on a few prompts
    OUT/model/              the export: EMA params in bf16 via vidq_jax.checkpoint.save_model
"""

from __future__ import annotations

import functools
import json
import math
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.families import family_of
from vidq_jax.checkpoint import params_nbytes, save_model
from vidq_jax.train.configs import TrainConfig
from vidq_jax.train.tasks import Task, build_task

__all__ = ["train", "plot_loss", "resolve_dtype", "initial_params_from"]


def resolve_dtype(name: str):
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32
    return {"bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16, "float32": jnp.float32, "fp32": jnp.float32}[name]


def dit_init(model: Any, params: Any, zero_groups: tuple[str, ...] = ()) -> Any:
    """PixArt / DiT training initialisation on top of the module's Xavier init: zero the final
    projection and every cross-attention output projection (the model starts as "predict 0"). The
    layers are the family's ``final`` group and the ``proj`` of its ``cross_attn`` group, plus every
    layer of ``zero_groups`` (DiT's adaLN-Zero: ``("adaln",)``)."""
    fam = family_of(model)
    final, cross = fam.group_pattern("final"), fam.group_pattern("cross_attn")
    zero = [fam.group_pattern(g) for g in zero_groups]

    def fix(path, x):
        names = [str(getattr(k, "key", k)) for k in path]
        layer = "/".join(names[:-1])  # the Dense holding this kernel/bias
        if names[-1] in ("kernel", "bias") and (re.search(final, layer) or any(re.search(z, layer) for z in zero) or
                                                (re.search(cross, layer) and names[-2] == "proj")):
            return jnp.zeros_like(x)
        return x

    return jax.tree_util.tree_map_with_path(fix, params)


def initial_params_from(folder: str | Path, abstract: Any) -> Any:
    """float32 params of an exported model folder (``OUT/model``, bf16) to continue training from: a second
    device call resumes from the export the first one brought back, not from optimizer checkpoints.
    ``abstract``: the task's param shapes; a folder of another architecture is a ValueError naming it."""
    from vidq_jax.checkpoint import load_model

    _, params, meta = load_model(folder)

    def by_path(tree):
        return {jax.tree_util.keystr(k): x for k, x in jax.tree_util.tree_leaves_with_path(tree)}

    want, got = by_path(abstract), by_path(params)
    if {k: x.shape for k, x in want.items()} != {k: x.shape for k, x in got.items()}:
        raise ValueError(f"--init-from {folder}: its params ({meta.get('arch')}, config {meta.get('config')}) do not "
                         "match the model being trained; pass the same --model-size it was trained with")
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract),
                                        [jnp.asarray(got[k], jnp.float32) for k in want])


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW without its learning rate (``optax.adamw`` = this chain + ``scale_by_learning_rate``): the
    loop multiplies by ``-learning_rate(step, total)`` itself, so that the schedule's length can be a
    traced value (fitted to a time budget at run time without recompiling)."""
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.scale_by_adam(b1=0.9, b2=0.999),
                       optax.add_decayed_weights(cfg.weight_decay))


def learning_rate(cfg: TrainConfig, step, total):
    """Linear warmup from 0, then cosine decay to 10 % of ``cfg.lr`` at ``total`` (traced or not)."""
    step = jnp.asarray(step, jnp.float32)
    total = jnp.maximum(jnp.asarray(total, jnp.float32), 2.0)
    warm = jnp.minimum(jnp.float32(max(1, cfg.warmup)), total - 1.0)
    frac = jnp.clip((step - warm) / jnp.maximum(total - warm, 1.0), 0.0, 1.0)
    cosine = 0.1 + 0.9 * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return cfg.lr * jnp.where(step < warm, step / warm, cosine)


def fit_steps(cfg: TrainConfig, step: int, planned: int, rate: float, elapsed: float, reserve: float) -> int:
    """Schedule length that finishes within ``cfg.time_limit`` at ``rate`` steps/s (never longer than
    planned, never before ``step``): ``elapsed`` seconds are spent, ``reserve`` are kept for export."""
    if cfg.time_limit <= 0 or not (rate > 0):
        return planned
    left = cfg.time_limit - elapsed - reserve
    return int(max(step + 1, min(planned, step + int(rate * max(left, 0.0)))))


def plot_loss(history: list[tuple[int, float]], path: Path, title: str = "") -> Path:
    """Loss curve PNG drawn with PIL (log-scale y, raw points + moving average)."""
    from PIL import Image, ImageDraw

    w, h, pad = 640, 400, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    if history:
        steps = np.array([s for s, _ in history], np.float64)
        loss = np.maximum(np.array([v for _, v in history], np.float64), 1e-8)
        ly = np.log10(loss)
        lo, hi = float(ly.min()), float(ly.max())
        hi = hi if hi > lo else lo + 1.0
        s0, s1 = float(steps.min()), float(max(steps.max(), steps.min() + 1))

        def xy(s, v):
            return pad + (s - s0) / (s1 - s0) * (w - 2 * pad), h - pad - (v - lo) / (hi - lo) * (h - 2 * pad)

        d.rectangle([pad, pad, w - pad, h - pad], outline="black")
        pts = [xy(s, v) for s, v in zip(steps, ly)]
        if len(pts) > 1:
            d.line(pts, fill=(170, 190, 230), width=1)
        k = max(1, len(ly) // 20)
        smooth = np.convolve(ly, np.ones(k) / k, mode="valid")
        sp = [xy(s, v) for s, v in zip(steps[k - 1 :], smooth)]
        if len(sp) > 1:
            d.line(sp, fill=(20, 60, 160), width=2)
        for frac in (0.0, 0.5, 1.0):
            v = lo + frac * (hi - lo)
            _, y = xy(s0, v)
            d.text((4, y - 6), f"{10 ** v:.3g}", fill="black")
        d.text((pad, h - pad + 8), f"step {int(s0)}", fill="black")
        d.text((w - pad - 80, h - pad + 8), f"step {int(s1)}", fill="black")
    d.text((pad, 15), title or "training loss (log scale)", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _device_name() -> str:
    dev = jax.devices()[0]
    return f"{dev.platform}:{getattr(dev, 'device_kind', '?')} x{jax.device_count()}"


def _save_preview(task: Task, samples: np.ndarray, out_dir: Path) -> list[str]:
    from vidq_jax.preview import image_grid, save_gif, save_png

    def to_u8(x):
        u8 = ((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        return np.kron(u8, np.ones((4, 4, 1), np.uint8))

    if samples.ndim == 4:
        save_png(image_grid([[to_u8(s) for s in samples]]), out_dir / "samples.png")
        return ["samples.png"]
    frames = [image_grid([[to_u8(s[t]) for s in samples]]) for t in range(samples.shape[1])]
    save_gif(frames, out_dir / "samples.gif", fps=4)
    save_png(image_grid([[to_u8(s[t]) for t in range(samples.shape[1])] for s in samples]), out_dir / "samples.png")
    return ["samples.gif", "samples.png"]


def train(cfg: TrainConfig, out_dir: str | Path, *, encoder: str = "minilm", resume: bool = True,
          preview: bool = True, log=print) -> dict:
    """Train ``cfg.task`` into ``out_dir``; returns the record (also written to ``record.json``)."""
    import orbax.checkpoint as ocp

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_setup = time.time()
    task = build_task(cfg, out, encoder, log)
    dtype = resolve_dtype(cfg.dtype)
    model = task.model_cls(task.model_config, dtype=dtype)
    loss_fn = task.loss_builder(model)
    tx = optimizer(cfg)
    spc = cfg.steps_per_call or (10 if jax.default_backend() == "gpu" else 1)

    # "rbg" keys (XLA RngBitGenerator): threefry-based initialisers and samplers take seconds each to
    # compile on CPU. Runs are reproducible per backend; the video clips themselves use threefry keys
    # (backend-independent) derived from these.
    key = jax.random.key(cfg.seed, impl="rbg")
    k_init, k_train, k_sample = jax.random.split(key, 3)

    def init_state():
        model = task.model_cls(task.model_config)
        params = dit_init(model, jax.jit(model.init)(k_init, **task.init_inputs)["params"], task.zero_groups)
        return {"params": params, "ema": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}

    abstract = jax.eval_shape(init_state)
    n_params = int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract["params"])))
    log(f"[{cfg.task}] {task.arch}: {n_params / 1e6:.2f} M params, compute {jnp.dtype(dtype).name}, "
        f"batch {cfg.batch_size}, {cfg.steps} steps, device {_device_name()}, data {task.data_info}")

    mngr = ocp.CheckpointManager(out / "ckpt", options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_ckpts, create=True))
    history: list[tuple[int, float]] = []
    prev_train_s = 0.0
    record_path = out / "record.json"
    if resume and mngr.latest_step() is not None:
        state = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(abstract))
        if record_path.exists():
            prev_rec = json.loads(record_path.read_text())
            history = [tuple(r) for r in prev_rec.get("loss_history", []) if r[0] <= int(state["step"])]
            prev_train_s = float(prev_rec.get("train_s_all_invocations", prev_rec.get("train_s", 0.0)))
        log(f"resumed from step {int(state['step'])}")
    else:
        state = init_state()
        if cfg.init_from:
            params = initial_params_from(cfg.init_from, abstract["params"])
            state = {"params": params, "ema": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}
            log(f"[{cfg.task}] params and EMA start from the export {cfg.init_from} (fresh optimizer and schedule)")

    def one_step(state, total):
        k = jax.random.fold_in(k_train, state["step"])
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], k)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        lr = learning_rate(cfg, state["step"], total)
        params = jax.tree_util.tree_map(lambda p, u: p - lr * u.astype(p.dtype), state["params"], updates)
        step = state["step"] + 1
        decay = jnp.minimum(cfg.ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree_util.tree_map(lambda e, p: e * decay + (1.0 - decay) * p, state["ema"], params)
        return {"params": params, "ema": ema, "opt": opt, "step": step}, loss

    @functools.partial(jax.jit, static_argnums=2)
    def train_chunk(state, total, length: int):
        return jax.lax.scan(one_step, state, jnp.broadcast_to(total, (length,)))

    start = int(state["step"])
    t_setup = time.time() - t_setup
    t0 = time.time()
    t_compile = None
    window: list[float] = []
    step = first_step = start
    # With a time limit, the schedule is shortened (once enough steps are timed) so that warmup + cosine
    # decay complete within it; ``time_reserve`` seconds are kept for checkpoint, export and preview.
    total = cfg.steps
    fitted = False
    while step < total:
        n = min(spc, total - step)  # a shorter last chunk compiles once more
        state, losses = train_chunk(state, jnp.int32(total), n)
        losses = np.asarray(losses)
        if t_compile is None:
            t_compile = time.time() - t0
            t0 = time.time()
            first_step = step + n
        window.extend(float(v) for v in losses)
        prev, step = step, step + n
        timed = time.time() - t0
        if not fitted and cfg.fit_schedule and cfg.time_limit > 0 and step - first_step >= 20 * spc and timed > 15.0:
            new_total = fit_steps(cfg, step, total, (step - first_step) / timed, timed + (t_compile or 0.0),
                                  reserve=cfg.time_reserve)
            fitted = True
            if new_total < total:
                log(f"[{cfg.task}] time limit {cfg.time_limit:.0f}s at {(step - first_step) / timed:.1f} steps/s: "
                    f"schedule shortened {total} -> {new_total} steps")
                total = new_total
        if step // cfg.log_every != prev // cfg.log_every or step >= total:
            history.append((step, float(np.mean(window))))
            window = []
            rate = (step - first_step) / max(time.time() - t0, 1e-9) if step > first_step else float("nan")
            log(f"[{cfg.task}] step {step:6d}/{total} loss {history[-1][1]:.4f} ({rate:.2f} steps/s)")
        out_of_time = cfg.time_limit > 0 and time.time() - t0 + (t_compile or 0.0) > cfg.time_limit
        if step // cfg.ckpt_every != prev // cfg.ckpt_every or step >= total or out_of_time:
            mngr.save(step, args=ocp.args.StandardSave(state))
        if out_of_time and step < total:
            log(f"[{cfg.task}] time limit {cfg.time_limit:.0f}s reached at step {step}: checkpointed; rerun the same command to resume")
            break
    mngr.wait_until_finished()
    train_time = time.time() - t0
    timed_steps = step - first_step
    steps_per_s = timed_steps / train_time if timed_steps > 0 and train_time > 0 else float("nan")

    # export: EMA params in bf16
    ema_bf16 = jax.tree_util.tree_map(lambda x: np.asarray(x, jnp.bfloat16), state["ema"])
    plot_loss(history, out / "loss.png", f"{task.arch}: training loss ({cfg.task})")
    record = {
        "task": cfg.task,
        "arch": task.arch,
        "command": " ".join([Path(sys.executable).name, "-m", "vidq_jax.train", *sys.argv[1:]]) if sys.argv else "",
        "steps": int(step),
        "complete": bool(step >= total),
        "schedule_steps": int(total),
        "batch_size": cfg.batch_size,
        "params": n_params,
        "export_bytes_bf16": params_nbytes(ema_bf16),
        "device": _device_name(),
        "host": platform.node(),
        "compute_dtype": jnp.dtype(dtype).name,
        "setup_s": round(t_setup, 2),
        "compile_s": round(t_compile or 0.0, 2),
        "train_s": round(train_time, 2),
        "train_s_all_invocations": round(train_time + prev_train_s, 2),
        "steps_per_s_after_compile": steps_per_s,
        "final_loss": float(history[-1][1]) if history else None,  # mean over the last log window
        "train_config": cfg.to_dict(),
        "model_config": task.model_config.to_dict(),
        "data": task.data_info,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loss_history": history,
    }
    record_path.write_text(json.dumps(record, indent=2, default=str))
    save_model(out / "model", task.model_cls(task.model_config), ema_bf16, arch=task.arch, overwrite=True,  # re-export
               extra={**task.export_meta, "train_record": {k: v for k, v in record.items() if k != "loss_history"}})
    if preview:
        samp_model = task.model_cls(task.model_config, dtype=dtype)

        def apply_fn(p, x, t, **c):
            return samp_model.apply({"params": p}, x, t, **c)

        samples = np.asarray(task.sampler(apply_fn, state["ema"], jnp.asarray(task.preview_y), jnp.asarray(task.preview_mask), k_sample))
        record["previews"] = _save_preview(task, samples, out)
        record_path.write_text(json.dumps(record, indent=2, default=str))
    log(f"[{cfg.task}] done: {step} steps in {train_time:.1f}s ({steps_per_s:.2f} steps/s), "
        f"final loss {record['final_loss']}, export {record['export_bytes_bf16'] / 1e6:.1f} MB -> {out / 'model'}")
    return record
