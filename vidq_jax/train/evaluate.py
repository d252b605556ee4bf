"""Is a trained text-to-video export worth distilling? Subject and motion accuracy of its FP samples.

``python -m vidq_jax.train eval-t2v runs/t2v/model --select-guidance 2,3,4,6 --write`` samples the folder
with its exported settings (:class:`vidq_jax.bundled.DemoModel`, exactly what the demo and the quality
benchmark run) and classifies the clips with the shipped video feature network (animal of the caption,
motion direction of the caption):

* ``demo``: the ``vidq demo`` prompts and noise (``demo_prompts(DEFAULT_COUNTS["t2v"])``, seed ``NOISE_SEED``);
* ``quality4`` / ``eval32``: 4 / 32 captions spread over ``assets/t2v_prompts.npz``, noise seed 0 (the sets
  of ``benchmarks/quality.py`` with ``--videos 4`` / ``--videos 32``);
* ``all40x4``: every caption from 4 noise seeds (1..4), 160 clips: the least noisy estimate.

``--select-guidance``: first score each CFG scale on all 40 captions from a noise seed (1000) that no
reported set uses, keep the best (subject + motion accuracy; ties: the exported scale, then the lower one)
and, with ``--write``, store it in the folder's ``model.json``. Writes ``eval.json`` (and
``eval_samples.png``: the ``eval32`` clips, one row each, frames left to right) next to the folder.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

__all__ = ["evaluate_t2v", "direction_sensitivity", "pick_guidance", "score_clips", "SELECTION_SEED"]

SELECTION_SEED = 1000


def score_clips(extractor, clips: np.ndarray, animals: np.ndarray, directions: np.ndarray) -> dict:
    """Subject / motion accuracy and temporal consistency of ``clips`` ``(N, T, H, W, 3)`` in [-1, 1]."""
    from vidq_jax.eval.quality import conditional_accuracy, motion_accuracy, temporal_consistency

    o = extractor(clips)
    names = extractor.config.class_names
    motions = extractor.config.motion_names
    return {
        "n": int(len(clips)),
        "subject_acc": conditional_accuracy(o["logits"], animals),
        "motion_acc": motion_accuracy(o["motion_logits"], directions),
        "temporal_consistency": temporal_consistency(o["frame_features"]),
        "predicted": [f"{names[a]} {motions[m]}" for a, m in zip(o["logits"].argmax(-1), o["motion_logits"].argmax(-1))],
    }


def pick_guidance(scores: dict[float, dict], exported: float) -> float:
    """The CFG scale with the highest subject + motion accuracy; ties: ``exported``, then the lowest."""
    return max(scores, key=lambda g: (scores[g]["subject_acc"] + scores[g]["motion_acc"], g == exported, -g))


def _sample(dm, prompts, seed: int, batch: int) -> np.ndarray:
    """Clips of ``prompts`` from noise ``seed``, sampled as ``batch`` rows (padded with copies of row 0, then
    dropped): every set reuses one compiled sampling loop."""
    n = len(prompts)
    idx = np.concatenate([np.arange(n), np.zeros(max(batch - n, 0), int)])
    noise = dm.noise(n, jax.random.PRNGKey(seed))[idx]
    cond = {k: v[idx] for k, v in dm.condition(prompts.y, prompts.mask).items()}
    return dm.to_pixels(dm.sample(dm.params, noise, cond))[:n]


def _eval_sets(dm) -> dict[str, list[tuple[object, int]]]:
    """name -> [(prompts, noise seed), ...]"""
    from vidq_jax.bundled import spread
    from vidq_jax.demo import DEFAULT_COUNTS, NOISE_SEED

    bank = dm.default_prompts()
    return {
        "demo": [(dm.demo_prompts(DEFAULT_COUNTS["t2v"]), NOISE_SEED)],
        "quality4": [(bank.take(spread(len(bank), 4)), 0)],
        "eval32": [(bank.take(spread(len(bank), min(32, len(bank)))), 0)],
        f"all{len(bank)}x4": [(bank, s) for s in (1, 2, 3, 4)],
    }


def direction_sensitivity(dm, n: int = 24, u_values: Sequence[float] = (0.8, 0.9, 0.95, 0.98), reps: int = 2,
                          seed: int = 0) -> dict[str, dict[str, float]]:
    """Does the model read the caption's motion direction? Its rectified-flow loss on ``n`` real training clips
    at flow times ``u`` (= t/1000) with the true caption, the caption of the opposite direction ("left" <->
    "right", "up" <-> "down") and one of the other axis, as relative increases over the true caption's loss:
    ``{f"{u:g}": {"loss": ..., "flip": ..., "axis": ...}}``. A model that learnt the axis but not the sign has
    ``axis`` well above 0 and ``flip`` near 0 — at high ``u``, where the noisy clip no longer shows where the
    sprite is, the caption is the only source of the direction, so ``flip`` near 0 there means random signs
    in the samples (the shipped model, size s, 10.8k steps: ``flip`` +11 / +9 / +5 / +2 % at u = 0.8 / 0.9 /
    0.95 / 0.98, ``axis`` +191 / +96 / +29 / +4 %; the size-m run of 4k steps: ``flip`` -0.2 % everywhere)."""
    import jax.numpy as jnp

    from vidq_jax.data.video import VideoDataset
    from vidq_jax.train.tasks import rflow_pair

    ds = VideoDataset(spec=_spec_of(dm))
    clips = ds.clips(np.arange(10_000, 10_000 + n))  # the first 10,000 clip indices are left to the tests
    video = jnp.asarray(clips["video"])
    bank = dm.default_prompts()
    index = {t: i for i, t in enumerate(bank.texts)}
    swap = {"flip": {"left": "right", "right": "left", "up": "down", "down": "up"},
            "axis": {"left": "up", "right": "down", "up": "left", "down": "right"}}
    variants = {"true": np.array([index[c] for c in clips["caption"]])}
    for name, to in swap.items():
        variants[name] = np.array([index[c.rsplit(" ", 1)[0] + " " + to[c.rsplit(" ", 1)[1]]] for c in clips["caption"]])
    params = dm.compute_params

    @jax.jit
    def loss(ci, xt, u, target):
        cond = dm.condition(jnp.asarray(bank.y)[ci], jnp.asarray(bank.mask)[ci])
        out = dm.model.apply({"params": params}, xt, u * 1000.0, **cond)[..., :target.shape[-1]]
        return jnp.mean((out - target) ** 2)

    report = {}
    for u in u_values:
        tot = {k: 0.0 for k in variants}
        for r in range(reps):
            eps = jax.random.normal(jax.random.PRNGKey(seed * 1000 + r), video.shape)
            uu = jnp.full((n,), u)
            xt, v = rflow_pair(video, eps, uu)
            for k, ci in variants.items():
                tot[k] += float(loss(jnp.asarray(ci), xt, uu, v)) / reps
        report[f"{u:g}"] = {"loss": tot["true"], "flip": tot["flip"] / tot["true"] - 1.0,
                            "axis": tot["axis"] / tot["true"] - 1.0}
    return report


def _spec_of(dm):
    from vidq_jax.data.video import VideoSpec

    frames, size = dm.sample_shape[0], dm.sample_shape[1]
    return VideoSpec(frames=frames, size=size)


def _write_guidance(folder: Path, guidance: float) -> None:
    """Store the sampler's CFG scale in ``folder/model.json`` (atomic replace)."""
    path = folder / "model.json"
    meta = json.loads(path.read_text())
    meta["sampler"] = {**meta.get("sampler", {}), "guidance_scale": float(guidance)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path)


def _strip_png(clips: np.ndarray, path: Path, zoom: int = 2) -> None:
    from PIL import Image

    u8 = ((np.clip(clips, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    img = np.concatenate([np.concatenate(list(v), axis=1) for v in u8], axis=0)
    Image.fromarray(np.kron(img, np.ones((zoom, zoom, 1), np.uint8))).save(path)


def evaluate_t2v(folder: str | Path, *, guidance: Sequence[float] = (), write: bool = False,
                 out: str | Path | None = None, features: str = "video", steps: int | None = None,
                 sets: Sequence[str] | None = None, log=print) -> dict:
    """Evaluate (and optionally pick the CFG scale of) the t2v export in ``folder``; returns the report
    (also written to ``out``, default ``folder/../eval.json``). ``features``: the feature network
    (``"video"`` = the shipped one, or a folder written by ``python -m vidq_jax.train features``); ``steps``:
    sampler steps instead of the exported ones (smoke runs); ``sets``: only these evaluation sets."""
    from vidq_jax.bundled import load_demo_model
    from vidq_jax.eval.quality import load_reference

    folder = Path(folder)
    t0 = time.time()
    dm = load_demo_model(folder)
    if not dm.is_video:
        raise ValueError(f"{folder}: a {dm.task} model; eval-t2v scores text-to-video exports")
    if steps:
        dm = dm.with_settings(steps=steps)
    extractor, _ = load_reference(features)
    report: dict = {"folder": str(folder), "arch": dm.name, "device": str(jax.devices()[0].device_kind),
                    "exported_sampler": dm.describe_sampler(), "selection": {}}
    bank = dm.default_prompts()
    if guidance:
        exported = float(dm.sampler["guidance_scale"])
        for g in guidance:
            x = _sample(dm.with_settings(guidance_scale=float(g)), bank, SELECTION_SEED, len(bank))
            r = score_clips(extractor, x, bank.labels, bank.directions)
            report["selection"][f"{float(g):g}"] = {k: r[k] for k in ("subject_acc", "motion_acc", "temporal_consistency")}
            log(f"[eval-t2v] CFG {float(g):g}: subject {r['subject_acc']:.3f} motion {r['motion_acc']:.3f} "
                f"(all {len(bank)} captions, noise seed {SELECTION_SEED})")
        best = pick_guidance({float(g): r for g, r in report["selection"].items()}, exported)
        report["chosen_guidance"] = best
        dm = dm.with_settings(guidance_scale=best)
        if write:
            _write_guidance(folder, best)
        log(f"[eval-t2v] chosen CFG {best:g}" + (f" (written to {folder / 'model.json'})" if write else ""))
    report["sampler"] = dm.describe_sampler()
    try:
        sens = direction_sensitivity(dm, n=4 if steps else 24, reps=1 if steps else 2)
    except ImportError as e:  # the training clips need the animal-mnist sprites (the training data extra)
        sens = {"not measured": str(e)}
        log(f"[eval-t2v] direction sensitivity not measured: {e}")
    else:
        log("[eval-t2v] loss with the opposite direction / the other axis vs the true caption, by flow time u: "
            + ", ".join(f"u={u} +{100 * r['flip']:.1f}% / +{100 * r['axis']:.1f}%" for u, r in sens.items()))
    report["direction_sensitivity"] = sens
    report["sets"] = {}
    for name, parts in _eval_sets(dm).items():
        if sets is not None and name not in sets:
            continue
        clips, animals, dirs, texts = [], [], [], []
        for prompts, seed in parts:
            clips.append(_sample(dm, prompts, seed, len(bank)))
            animals.append(prompts.labels)
            dirs.append(prompts.directions)
            texts += prompts.texts
        clips = np.concatenate(clips)
        r = score_clips(extractor, clips, np.concatenate(animals), np.concatenate(dirs))
        r["prompts"] = texts
        report["sets"][name] = r
        log(f"[eval-t2v] {name:9s} ({r['n']:3d} clips): subject {r['subject_acc']:.3f} motion {r['motion_acc']:.3f} "
            f"temporal {r['temporal_consistency']:.4f}")
        if name == "eval32":
            _strip_png(clips, folder.parent / "eval_samples.png")
    report["seconds"] = round(time.time() - t0, 1)
    path = Path(out) if out else folder.parent / "eval.json"
    path.write_text(json.dumps(report, indent=1))
    return report
