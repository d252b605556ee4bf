"""Q-VDiT distillation: learn LoRA, step sizes and the TQE branch against the float model, fold, quantize once.

:func:`distill` (viditq_method.md §10.3, what the released code does)::

    records  = quantize_params(params, calib, config)     calibrated "qvdit" records (clip-searched scales,
                                                          zero branch, M = 1 on temporal attention)
    train    = LearnableTQE per record                     + rank-32 LoRA (A Kaiming, B zero)
    repeat   steps times, one calibration batch per step (shuffled per epoch):
        S_Q  = model(train, batch)       jax.checkpoint over the transformer blocks (only block outputs kept)
        loss = mean (S_FP − S_Q)² + γ · KL(frame relations)            γ = 100 (loss.py)
        AdamW (weight decay 0.01), cosine decay to 0 over the steps: LoRA / α / β / M at ``lr`` (1e-5),
        step sizes at ``scale_lr`` (1e-6)
    qparams  = fold: W' + (A·B)ᵀ quantized once with the learned step sizes -> TQEWeight records

One jitted step (the cosine horizon is one of its array arguments: a run of any length reuses one
compilation); the host reads the loss terms only every ``log_every`` steps, so the device is never idle
between steps. The float targets ``S_FP`` are computed once per calibration batch. With
``checkpoint_dir`` the state (trainable leaves, optimizer, step) is saved with orbax every
``checkpoint_every`` steps and at the end, next to ``distill.json`` (settings + loss history); a rerun with
the same settings resumes from the latest one. The progress bar shows the loss terms.

``plan`` (a time budget): the step is compiled and timed on :data:`PROBE_STEPS` throw-away steps from the
initial state first; ``plan(timings)`` then picks the number of steps, and the run is the one
``steps=<that number>`` would have been.

The saved recipe is the preset plus one rule giving the temporal-attention layers their per-frame scale
(:attr:`~vidq_jax.quant.config.LayerQuant.tqe_frames` = the latent frames of the calibration batches), so
the distilled params save and load like every quantized folder
(:func:`vidq_jax.checkpoint.save_quantized` with :attr:`DistillResult.config`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.ad_checkpoint import checkpoint_name

from models.families import find_family
from vidq_jax.errors import VidqError
from vidq_jax.quant.api import model_of, quantize_params, set_backend
from vidq_jax.quant.config import LayerRule, QuantConfig
from vidq_jax.quant.distill.learnable import learnable_from
from vidq_jax.quant.distill.loss import GAMMA, tmd_loss
from vidq_jax.quant.quantizers import fake_quant
from vidq_jax.quant.tqe import TQEWeight
from vidq_jax.quant.tree import dense_paths, get_kernel, rewrap_params, set_kernel, unwrap_params

# the released code's settings (w4a6_ours.yaml / w3a8_ours.yaml, block_recon.py)
LR = 1e-5  # LoRA, TQE branch, per-frame scales
SCALE_LR = 1e-6  # weight step sizes
WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default
RANK = 32
STEPS = 1000  # the code trains 10k (W4A6) / 15k (W3A8) iterations on OpenSora
FRAME_LAYERS = "group:temporal_attn"
FRAME_INITS = ("ones", "saliency")
BLOCK_NAME = "qvdit_block"  # jax.checkpoint keeps only the outputs of the transformer blocks
PROBE_STEPS = 3  # timed throw-away steps after the compiling one, when a ``plan`` picks the step count


@dataclasses.dataclass
class DistillResult:
    """What :func:`distill` returns: the distilled quantized ``params`` (same wrapper as the input), the
    recipe to save them with (``config``), the loss ``history`` (one entry per logged step: ``step``,
    ``loss``, ``mse``, ``kl`` — means over the steps since the previous entry), the calibration loss over
    every batch before and after (``before`` / ``after``; ``None`` without ``evaluate``), ``steps`` done
    (``complete``: all of them) and training ``seconds`` (this invocation; ``seconds_all``: all invocations
    of a resumed run), the ``settings``, and where this invocation's time went (``timings``, seconds:
    ``setup`` — calibration records, float targets, loss before; ``compile`` — the first step; ``step`` —
    one step after it, measured on the probe with a ``plan``, else on the loop; ``train`` — the loop;
    ``finish`` — loss after, fold)."""

    params: Any
    config: QuantConfig
    history: list[dict]
    before: dict[str, float] | None
    after: dict[str, float] | None
    steps: int
    complete: bool
    seconds: float
    seconds_all: float
    settings: dict[str, Any]
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """JSON summary (a quantized folder's ``model.json`` ``"distillation"`` entry)."""
        return {**self.settings, "steps_done": self.steps, "complete": self.complete,
                "seconds": round(self.seconds_all, 2),
                "device": _device(), "calibration_loss_before": self.before, "calibration_loss_after": self.after,
                "history": self.history}


def _device() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', d.platform)} x{jax.device_count()}"


def latent_frames(model: Any, x_shape: tuple[int, ...]) -> int | None:
    """Frames of the token grid a video latent ``(B, T, H, W, C)`` becomes (``ceil(T / patch_t)``, the
    model config's temporal patch); ``None`` for images."""
    if len(x_shape) != 5:
        return None
    patch = getattr(getattr(model, "config", None), "patch_size", None)
    pt = int(patch[0]) if isinstance(patch, (tuple, list)) and len(patch) == 3 else 1
    return -(-int(x_shape[1]) // pt)


def _batch_dicts(calib_batches: Iterable) -> list[dict]:
    out = []
    for b in calib_batches:
        if hasattr(b, "as_pair"):
            b = b.as_pair()
        if isinstance(b, tuple) and len(b) == 2 and isinstance(b[0], str):
            b = b[1]
        if not isinstance(b, Mapping):
            raise VidqError(f"calibration batch {len(out)}: expected a dict of model inputs, a (name, dict) pair or a "
                            f"CalibBatch, got {type(b).__name__}")
        out.append(dict(b))
    if not out:
        raise VidqError("distill: no calibration batches (vidq_jax.calibration.collect records them)")
    return out


def distill_config(model: Any, params: Any, config: QuantConfig | str, frames: int | None,
                   frame_layers: str | None = FRAME_LAYERS) -> QuantConfig:
    """The preset/config with the per-frame TQE scale on ``frame_layers`` (``tqe_frames = frames``) where
    the model has such layers and ``frames > 1``; ``VidqError`` if it quantizes no layer with
    ``w_method="qvdit"``."""
    cfg = QuantConfig.preset(config) if isinstance(config, str) else config
    paths = dense_paths(unwrap_params(params)[0])
    bound = cfg.for_model(model, paths) if find_family(model) is not None else cfg
    if not any((lq := bound.resolve(p)) is not None and lq.w_method == "qvdit" for p in paths):
        raise VidqError(f"distill: config {cfg.name!r} quantizes no layer with w_method='qvdit'; use a qvdit-* preset "
                        f"(qvdit-w4a6, qvdit-w3a6)")
    if frame_layers and frames is not None and frames > 1 and any(bound.matches(frame_layers, p) for p in paths):
        cfg = cfg.with_rules(LayerRule(frame_layers, tqe_frames=int(frames)))
    return cfg


def _dense_class():
    from models.layers import Dense  # lazy, as in vidq_jax.quant.stats

    return Dense


def saliency_frame_scales(model: Any, params: Any, records: Mapping[str, TQEWeight], batches: list[dict],
                          ) -> dict[str, jax.Array]:
    """The paper's initialisation of the per-frame scales ``M`` (Q-VDiT Eq. 9) of the ``records`` that have
    one: with the float model's input ``X`` of the layer and its quantized ``Q̂(X)`` (the record's balance
    and activation quantizer), ``η = softmax_i(1 − cos(X_frame i, Q̂(X)_frame i))`` (frames damaged more by
    quantization get more weight), ``ω_i = Σ|X_frame i| / Σ|X|``, ``M_i = η_i / ω_i`` (averaged over the
    batches and their samples)."""
    recs = {p: r for p, r in records.items() if r.frame_scale is not None}
    if not recs:
        return {}
    from models.layers import dense_input  # the Dense input an interceptor sees (prenorm applied)

    dense_cls = _dense_class()

    def fn(params, batch):
        found: dict[str, dict] = {}

        def interceptor(next_fun, args, kwargs, context):
            path = "/".join(context.module.path)
            if isinstance(context.module, dense_cls) and context.method_name == "__call__" and path in recs:
                rec = recs[path]
                x = dense_input(args, kwargs)
                t = rec.frame_scale.shape[0]
                b, k = x.shape[0], x.shape[-1]
                x2 = rec.base.balance(x.reshape(-1, k).astype(jnp.float32))
                spec = rec.base.layer.act_spec()
                xq = x2 if spec is None else fake_quant(x2, spec)
                x2, xq = x2.reshape(b, t, -1), xq.reshape(b, t, -1)
                cos = jnp.sum(x2 * xq, -1) / jnp.maximum(jnp.linalg.norm(x2, axis=-1) * jnp.linalg.norm(xq, axis=-1),
                                                         1e-12)
                st = {"damage": jnp.sum(1.0 - cos, 0), "abs": jnp.sum(jnp.abs(x.astype(jnp.float32)).reshape(b, t, -1),
                                                                      (0, 2)), "n": jnp.asarray(b, jnp.float32)}
                found[path] = st if path not in found else jax.tree_util.tree_map(jnp.add, found[path], st)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            model.apply({"params": params}, **batch)
        return found

    fn = jax.jit(fn)
    total: dict[str, dict] = {}
    for batch in batches:
        for p, st in fn(params, batch).items():
            total[p] = st if p not in total else jax.tree_util.tree_map(jnp.add, total[p], st)
    out = {}
    for p, st in total.items():
        eta = jax.nn.softmax(st["damage"] / st["n"])
        omega = st["abs"] / jnp.sum(st["abs"])
        out[p] = (eta / jnp.maximum(omega, 1e-12)).astype(jnp.float32)
    return out


def block_remat(model: Any, apply_fn):
    """``apply_fn(params, batch)`` under ``jax.checkpoint`` keeping only the outputs of the model's
    transformer blocks (the family's ``blocks`` pattern; marked by a method interceptor): the backward
    pass recomputes each block from its input. Models of no registered family run without remat."""
    fam = find_family(model)
    if fam is None:
        return apply_fn
    block_re = re.compile(fam.blocks)

    def mark(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            p = "/".join(context.module.path)
            m = block_re.match(p + "/")
            if m is not None and m.end() == len(p) + 1 and isinstance(out, jax.Array):
                out = checkpoint_name(out, BLOCK_NAME)
        return out

    def marked(params, batch):
        with nn.intercept_methods(mark):
            return apply_fn(params, batch)

    return jax.checkpoint(marked, policy=jax.checkpoint_policies.save_only_these_names(BLOCK_NAME))


def assemble(frozen: Any, trainable: Mapping[str, Mapping[str, jax.Array]]) -> Any:
    """``frozen`` (params with :class:`LearnableTQE` records) with each record's trainable leaves replaced."""
    out = frozen
    for p, leaves in trainable.items():
        out = set_kernel(out, p, get_kernel(out, p).replace(**leaves))
    return out


def horizon_of(steps: int) -> tuple[np.float32, np.float32]:
    """``(steps, π / steps)`` in float32, the second as ``π · (1 / steps)``: the cosine horizon as
    :func:`cosine_decay` takes it."""
    return np.float32(steps), np.float32(np.pi) * (np.float32(1) / np.float32(steps))


def cosine_decay(peak: float, horizon: tuple[Any, Any]) -> optax.Schedule:
    """``optax.cosine_decay_schedule(peak, steps)`` (decay to 0) whose horizon ``(steps, π / steps)``
    (:func:`horizon_of`) may be traced (optax checks it in Python and bakes it into the graph), with the
    same float32 values: XLA compiles optax's ``π · count / steps`` with the constant ``steps`` into
    ``count · (π · (1 / steps))``, which is what this computes from the traced pair."""
    steps, rate = horizon

    def schedule(count):
        return peak * (0.5 * (1 + jnp.cos(jnp.minimum(count, steps) * rate)))

    return schedule


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """AdamW (decoupled weight decay) with a cosine decay to 0 over ``horizon`` steps (an argument of
    :meth:`transform`, traced in the jitted step): peak ``lr`` for LoRA, the TQE branch and the
    per-frame scales, ``scale_lr`` for the weight step sizes (hashable: a static argument of the
    jitted step)."""

    lr: float
    scale_lr: float
    weight_decay: float

    def transform(self, trainable: Mapping[str, Mapping[str, Any]], horizon: tuple[Any, Any]
                  ) -> optax.GradientTransformation:
        labels = {p: {n: "scale" if n == "scale" else "main" for n in leaves} for p, leaves in trainable.items()}
        return optax.multi_transform(
            {"main": optax.adamw(cosine_decay(self.lr, horizon), weight_decay=self.weight_decay),
             "scale": optax.adamw(cosine_decay(self.scale_lr, horizon), weight_decay=self.weight_decay)},
            labels,
        )


def _quantized_loss(trainable, frozen, batch, target, model, remat, gamma):
    def apply_fn(p, b):
        return model.apply({"params": p}, **b)

    forward = block_remat(model, apply_fn) if remat else apply_fn
    return tmd_loss(forward(assemble(frozen, trainable), batch), target, gamma)


# module-level jitted functions (static: the model and the settings), so that a resumed or repeated run in
# the same process reuses their compilation
@functools.partial(jax.jit, static_argnames=("model",))
def _float_output(params, batch, *, model):
    return model.apply({"params": params}, **batch)


@functools.partial(jax.jit, static_argnames=("model", "gamma"))
def _eval_loss(trainable, frozen, batch, target, *, model, gamma):
    return _quantized_loss(trainable, frozen, batch, target, model, False, gamma)


@functools.partial(jax.jit, static_argnames=("model", "remat", "gamma", "opt"))
def _train_step(trainable, opt_state, frozen, batch, target, horizon, *, model, remat, gamma, opt):
    (loss, terms), grads = jax.value_and_grad(_quantized_loss, has_aux=True)(trainable, frozen, batch, target, model,
                                                                            remat, gamma)
    updates, opt_state = opt.transform(trainable, horizon).update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, {"loss": loss, **terms}


_fold = jax.jit(lambda rec: rec.fold())  # one compilation per (layer shape, settings)


def _settings_mismatch(saved: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    return [k for k in settings if json.dumps(saved.get(k), sort_keys=True) != json.dumps(settings[k], sort_keys=True)]


def distill(
    model: Any,
    params: Any,
    calib_batches: Iterable,
    *,
    config: QuantConfig | str = "qvdit-w4a6",
    steps: int = STEPS,
    lr: float = LR,
    scale_lr: float | None = None,
    rank: int = RANK,
    gamma: float = GAMMA,
    frame_layers: str | None = FRAME_LAYERS,
    frame_init: str = "ones",
    weight_decay: float = WEIGHT_DECAY,
    seed: int = 0,
    remat: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 200,
    resume: bool = True,
    log_every: int = 10,
    progress: bool = True,
    evaluate: bool = True,
    time_limit: float | None = None,
    backend: str | None = None,
    stats: Mapping[str, Any] | None = None,
    plan: Callable[[dict[str, float]], int] | None = None,
) -> DistillResult:
    """Q-VDiT distillation of ``params`` (a float ``params`` tree, float32 compute; a ``{"params": ...}``
    wrapper is kept) on ``calib_batches`` (:class:`~vidq_jax.calibration.CalibBatch` records along float
    trajectories, ``(name, dict)`` pairs or dicts of model inputs): see the module docstring.

    ``config``: a qvdit preset name or a :class:`QuantConfig` whose layers use ``w_method="qvdit"``;
    ``model``: the Flax module (``None``: the one the CalibBatch records name). ``lr`` / ``scale_lr``
    (default ``lr / 10``): peak learning rates of LoRA + branch and of the step sizes. ``frame_layers``:
    the layers with a per-frame scale (default the temporal attention; ``None``: none), initialised with
    ones (``frame_init="ones"``, the code) or the paper's saliency rule (``"saliency"``). ``backend``: of
    the returned records (default the config's). ``progress``: a tqdm bar with the loss terms.
    ``evaluate``: the calibration loss over every batch before and after (two more forward passes per
    batch). ``time_limit`` (seconds): stop after the step that crosses it, checkpoint (with
    ``checkpoint_dir``) and return the params of the steps done (``DistillResult.complete`` False): rerun
    the same call to resume. ``stats``: the calibration statistics of ``calib_batches``
    (:func:`~vidq_jax.quant.collect_stats`) to reuse instead of collecting them again.

    ``plan`` (a time budget): called once, before training, with the measured ``{"setup": s,
    "compile": s, "step": s}`` (:attr:`DistillResult.timings`; the step compiled and timed on
    :data:`PROBE_STEPS` throw-away steps from the initial state); returns the number of steps to train,
    clipped to ``1..steps`` (``settings["steps"]``: the planned number). A resumed run keeps its saved
    number and does not plan again.
    """
    if frame_init not in FRAME_INITS:
        raise VidqError(f"distill: frame_init={frame_init!r} unknown; choose one of {FRAME_INITS}")
    for name, value, lo in (("steps", steps, 1), ("rank", rank, 1), ("checkpoint_every", checkpoint_every, 1),
                            ("log_every", log_every, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise VidqError(f"distill: {name}={value!r} must be an integer >= {lo}")
    for name, value in (("lr", lr), ("scale_lr", scale_lr), ("gamma", gamma), ("weight_decay", weight_decay),
                        ("time_limit", time_limit)):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise VidqError(f"distill: {name}={value!r} must be a finite number >= 0")
    scale_lr = lr / 10 if scale_lr is None else scale_lr
    items = list(calib_batches)
    batches = _batch_dicts(items)
    if model is None:
        model = model_of(items)
        if model is None:
            raise VidqError("distill: model= is missing (the calibration batches do not name their model)")
    inner, wrapped = unwrap_params(params)
    frames = latent_frames(model, tuple(np.shape(batches[0]["x"])))
    cfg = distill_config(model, inner, config, frames, frame_layers)
    preset = config if isinstance(config, str) else None

    t_setup = time.perf_counter()
    settings = {"config": cfg.to_dict(), "preset": preset, "steps": int(steps), "lr": float(lr),
                "scale_lr": float(scale_lr), "rank": int(rank), "gamma": float(gamma), "frame_layers": frame_layers,
                "frame_init": frame_init, "weight_decay": float(weight_decay), "seed": int(seed),
                "calibration_batches": len(batches), "batch_shape": list(np.shape(batches[0]["x"]))}
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir).resolve()
    saved = {}
    if ckpt is not None and not resume:  # start over: the previous run's state goes
        shutil.rmtree(ckpt / "state", ignore_errors=True)
        (ckpt / "distill.json").unlink(missing_ok=True)
    if ckpt is not None and resume and (ckpt / "distill.json").is_file():
        saved = json.loads((ckpt / "distill.json").read_text())
        if plan is not None:  # the planned number of the saved run
            steps = settings["steps"] = int(saved.get("settings", {}).get("steps", steps))
        bad = _settings_mismatch(saved.get("settings", {}), settings)
        if bad:
            raise VidqError(f"distill: {ckpt} holds a run with other settings ({', '.join(bad)}); resume with the "
                            f"same settings, pass resume=False (--no-resume) to start over, or use another "
                            f"checkpoint folder")

    # 1. calibrated records (clip-searched scales, zero branch) and their learnable twins
    qinit = quantize_params(inner, batches, model=model, config=cfg, stats=stats)
    records = {p: k for p in dense_paths(qinit) if isinstance(k := get_kernel(qinit, p), TQEWeight)}
    if frame_init == "saliency":
        for p, m in saliency_frame_scales(model, inner, records, batches).items():
            records[p] = records[p].replace(frame_scale=m)
    frozen = qinit
    for p, rec in records.items():
        rng = np.random.default_rng([seed, zlib.crc32(p.encode())])
        frozen = set_kernel(frozen, p, learnable_from(rec, get_kernel(inner, p), rank, rng))
    trainable0 = {p: get_kernel(frozen, p).trainable() for p in records}
    counts = {"trainable_layers": len(records),
              "trainable_params": int(sum(np.size(v) for d in trainable0.values() for v in d.values()))}
    opt = Optimizer(float(lr), float(scale_lr), float(weight_decay))
    batches = jax.tree_util.tree_map(jnp.asarray, batches)  # on the device once, not every step
    targets = [_float_output(inner, b, model=model) for b in batches]

    def calibration_loss(trainable) -> dict[str, float] | None:
        if not evaluate:
            return None
        vals = jax.device_get([_eval_loss(trainable, frozen, b, t, model=model, gamma=float(gamma))
                               for b, t in zip(batches, targets)])
        return {"loss": float(np.mean([v[0] for v in vals])), "mse": float(np.mean([v[1]["mse"] for v in vals])),
                "kl": float(np.mean([v[1]["kl"] for v in vals]))}

    state = {"trainable": trainable0, "opt": opt.transform(trainable0, horizon_of(steps)).init(trainable0),
             "step": jnp.zeros((), jnp.int32)}
    history: list[dict] = []
    seconds_before = 0.0
    mngr = None
    if ckpt is not None:
        import orbax.checkpoint as ocp

        mngr = ocp.CheckpointManager(ckpt / "state", options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
        if resume and saved and mngr.latest_step() is not None:
            state = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(jax.eval_shape(lambda: state)))
            # uncommitted arrays like a fresh state's: the jitted step's compilation is reused
            state = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), state)
            history = [h for h in saved.get("history", []) if h["step"] <= int(state["step"])]
            seconds_before = float(saved.get("seconds", 0.0))

    before = calibration_loss(trainable0)
    start = int(state["step"])
    trainable, opt_state = state["trainable"], state["opt"]
    order_cache: dict[int, np.ndarray] = {}

    def batch_index(step: int) -> int:
        epoch = step // len(batches)
        if epoch not in order_cache:
            order_cache[epoch] = np.random.default_rng([seed, epoch]).permutation(len(batches))
        return int(order_cache[epoch][step % len(batches)])

    def save(step: int, seconds: float) -> None:
        if mngr is None:
            return
        mngr.save(step, args=ocp.args.StandardSave({"trainable": trainable, "opt": opt_state,
                                                    "step": jnp.asarray(step, jnp.int32)}), force=True)
        mngr.wait_until_finished()
        (ckpt / "distill.json").write_text(json.dumps(
            {"settings": settings, "step": step, "seconds": seconds, "history": history}, indent=1))

    def train_step(trainable, opt_state, step: int, horizon: tuple[np.float32, np.float32]):
        i = batch_index(step)
        return _train_step(trainable, opt_state, frozen, batches[i], targets[i], horizon, model=model,
                           remat=bool(remat), gamma=float(gamma), opt=opt)

    timings = {"setup": time.perf_counter() - t_setup}
    if plan is not None and not saved:  # compile and time the step on throw-away steps, then plan
        t0 = time.perf_counter()
        probe = jax.block_until_ready(train_step(trainable, opt_state, start, horizon_of(steps)))
        timings["compile"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for k in range(PROBE_STEPS):
            probe = train_step(*probe[:2], start + 1 + k, horizon_of(steps))
        jax.block_until_ready(probe)
        timings["step"] = (time.perf_counter() - t0) / PROBE_STEPS
        steps = settings["steps"] = min(max(int(plan(dict(timings))), 1), int(steps))
        del probe
    horizon = horizon_of(steps)

    from tqdm.auto import tqdm

    t_train = time.perf_counter()
    pending: list[dict] = []  # the loss terms (device arrays) of the steps since the last history entry
    done = start
    with tqdm(total=steps, initial=start, unit="step", disable=not progress, dynamic_ncols=True,
              desc=f"distill {cfg.name}") as bar:
        for step in range(start, steps):
            trainable, opt_state, terms = train_step(trainable, opt_state, step, horizon)
            pending.append(terms)
            bar.update(1)
            done = step + 1
            out_of_time = time_limit is not None and time.perf_counter() - t_train > time_limit
            if done % log_every == 0 or done == steps or step == start or out_of_time:
                window = [{k: float(v) for k, v in t.items()} for t in jax.device_get(pending)]  # waits for the step
                pending = []
                history.append({"step": done, **{k: float(np.mean([w[k] for w in window])) for k in window[0]}})
                bar.set_postfix({k: f"{v:.4g}" for k, v in window[-1].items()})
                if step == start and "compile" not in timings:
                    timings["compile"] = time.perf_counter() - t_train
            if done % checkpoint_every == 0 or done == steps or out_of_time:
                save(done, seconds_before + time.perf_counter() - t_train)
            if out_of_time:
                break
    seconds = time.perf_counter() - t_train
    timings["train"] = seconds
    if "step" not in timings and done - start > 1:
        timings["step"] = (seconds - timings["compile"]) / (done - start - 1)
    t0 = time.perf_counter()
    after = calibration_loss(trainable)

    qparams = assemble(frozen, trainable)
    for p in records:
        qparams = set_kernel(qparams, p, _fold(get_kernel(qparams, p)))
    if backend is not None:
        qparams = set_backend(qparams, backend)
    timings["finish"] = time.perf_counter() - t0
    return DistillResult(
        params=rewrap_params(qparams, wrapped), config=cfg, history=history, before=before, after=after,
        steps=done, complete=done >= steps, seconds=seconds, seconds_all=seconds_before + seconds,
        settings={**settings, **counts}, timings=timings,
    )


__all__ = ["DistillResult", "FRAME_INITS", "FRAME_LAYERS", "LR", "PROBE_STEPS", "RANK", "SCALE_LR", "STEPS",
           "WEIGHT_DECAY", "assemble", "block_remat", "cosine_decay", "distill", "distill_config", "horizon_of",
           "latent_frames", "saliency_frame_scales"]
