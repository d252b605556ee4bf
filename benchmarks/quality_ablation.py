"""Why does ViDiT-Q not win on the bundled models? A factor ablation of the quality table (issue 6).

    python -m benchmarks.quality_ablation                         # both bundled models (CPU ~35 min)
    python -m benchmarks.quality_ablation --refresh               # rebuild the report from the JSON only
    python -m benchmarks.quality_ablation --models t2i --images 4 --no-step --out /tmp/abl   # smoke run

``benchmarks/quality.py`` ranks the presets; this script isolates what differs between them, on the
same models with the same calibration (:func:`benchmarks.quality.prepare`). Unless a row says
otherwise: per-output-channel asymmetric min-max weights, dynamic per-token symmetric activations,
every Dense of the transformer blocks quantized (caption K/V included), smoothing / rotation on every
block Dense. Two measurements:

* **sampled rows** (``--images`` / ``--videos`` prompts, evaluation noise seed 0, FP from the same
  noise; PSNR / SSIM vs FP, FD and accuracy from the feature network, as quality.md):
  W8A8 and W4A8 with no balancing, rotation only (QuaRot), smoothing only (SmoothQuant α 0.5),
  smoothing + rotation (ViDiT-Q's static-dynamic balancing) at several α, the ViDiT-Q presets
  themselves (``viditq-w8a8``: α 0.25 + rotation, caption K/V float; ``viditq-w4a8``: α 0.01 +
  rotation); the weight and the activation quantizer alone (W16A8 = float balanced weight with
  quantized activations, W4A16 = weight-only); and the noise of the measurement: a second
  evaluation-noise seed (``es1``), a second Hadamard sign seed (``rs1``) and the same config on the
  ``simulate`` backend (``sim``: identical integers, float rounding differs only).
* **teacher-forced step error** (``--no-step`` skips it): the denoiser's output error on float
  trajectory states of other prompts / noise (:class:`StepProbe`): every call starts from the same
  float state, so the quantization error is measured without the sampler amplifying it. The whole grid
  — {none, rotation, smoothing α, smoothing α + rotation} × {W8A8, W4A8, W16A8, W8A16, W4A16}, α in
  ``--alphas`` — with rotated rows averaged over several Hadamard sign seeds.

Rows equal to a ``quality.py`` preset are checked to resolve every layer exactly like it. Gaps
between sampled rows: paired bootstrap over the samples of the set-PSNR difference.

Writes ``benchmarks/results/quality_ablation.{json,md}`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from benchmarks.common import REPO, environment

from benchmarks.quality import _incoherence, EvalSetup, add_model_args, evaluate, prepare, setup_info
from benchmarks.quant_report import _fmt
from vidq_jax.bundled import load_demo_model, spread, upcast_bf16
from vidq_jax.eval.fidelity import sqnr_db
from vidq_jax.eval.quality import psnr
from vidq_jax.quant import LayerQuant, LayerRule, QuantConfig, QuantizedWeight, dense_paths, quantize_params
from vidq_jax.quant.balance import balance_for_layer, layer_key
from vidq_jax.quant.config import BLOCK_LAYERS
from vidq_jax.quant.hadamard import hadamard_transform
from vidq_jax.quant.quantizers import QuantSpec, fake_quant
from vidq_jax.quant.record import balanced_weight
from vidq_jax.quant.tree import get_kernel

ALPHAS = (0.01, 0.25, 0.5, 0.75, 0.9)  # step sweep (0.01: the viditq-w4a8 preset's α)
COUNTS = {"t2i": 16, "t2v": 2}  # sampled prompts: 34 min on a 2-core CPU (one core busy) with the step sweep
PROBE_PROMPTS = {"t2i": 4, "t2v": 1}  # step probe: float trajectories of this many evaluation prompts
ROT_SEEDS = {"t2i": (0, 1, 2), "t2v": (0, 1)}  # Hadamard sign seeds of the rotated step rows
PROBE_SEED = 11  # noise of the step-probe trajectories
SEED2 = 1  # second evaluation-noise seed / second Hadamard sign seed of the sampled noise rows
BOOTSTRAP = 2000
_balanced_weight_jit = jax.jit(balanced_weight)


FINDINGS = """
## Findings (written from the numbers of the committed run, listed in the last section)

1. **The sampled PSNR vs FP cannot order presets that are a few dB apart: the orderings of quality.md
   are inside the measurement noise.** The same integer weights and activations run on the `simulate`
   instead of the `xla` backend (only float rounding differs) move PixArt W8A8 rotate-only from 29.57 to
   27.75 dB, and the two sample sets are 27.5 dB apart from *each other*, as far as either is from FP
   (STDiT: 38.53 → 40.49 dB). Another Hadamard sign seed moves STDiT W8A8 α 0.25 + rotate from 36.78 to
   27.53 dB (one clip diverges). Another evaluation noise seed turns PixArt "rotate − ViDiT-Q α 0.25" from
   +1.73 to −2.47 dB and W4A8 "rotate − ViDiT-Q α 0.01" from −1.11 to +1.65 dB, and the paired
   bootstrap over the 16 images calls both seed-1 gaps significant ([−4.69, −1.22] and [+0.16, +3.06]):
   it is over-confident, because the per-sample PSNRs of one row spread over ~20 dB with heavy tails
   and a single diverging sample decides the set PSNR. Mechanism:
   rounding makes the quantized denoiser piecewise constant, a tiny perturbation flips codes, and the
   20-step DPM-Solver (CFG 4.5) / 30-step rectified flow (CFG 4) amplify any difference until the final
   sample is roughly as far from FP as a quantization error takes it: PSNR vs FP measures whether and
   where a trajectory diverges, not how large the per-step error is. The 0.6 dB (PixArt W8A8 QuaRot vs
   ViDiT-Q), 1.1 dB (STDiT W8A8) and 0.3–0.7 dB (PixArt W4A8) gaps of quality.md are no evidence for any
   ordering.

2. **Per denoiser call (teacher-forced step SQNR, deterministic; sign-seed sd 0.05–0.4 dB on PixArt,
   up to 0.6 dB on STDiT) the W8A8 ordering is the paper's, with a small margin.** PixArt W8A8: dynamic
   46.61, SmoothQuant 49.11, QuaRot 50.34 ± 0.24, ViDiT-Q (α 0.25 + rotate) 50.78 ± 0.08, the
   `viditq-w8a8` preset (caption K/V float) 51.13, best α 0.5 + rotate 51.15 dB: ViDiT-Q − QuaRot =
   +0.44 dB (≈ 3 standard errors over the 3 sign seeds). STDiT W8A8: dynamic 41.77, SmoothQuant 43.83,
   QuaRot 43.89 ± 0.60, ViDiT-Q 44.30 ± 0.27 (preset 44.33): a tie within the sign-seed noise.

3. **Why the margin is small: rotation alone already makes these activations as flat as a random
   vector.** Mean per-token incoherence before balancing is 7.0 (PixArt) / 6.3 (STDiT), not the ~40 of
   the XL layer in the paper. Rotation alone brings it to 3.74 / 4.28 (PixArt, K = 256 / 1024) and
   3.64 / 4.13 (STDiT, K = 192 / 768), which is the i.i.d. Gaussian floor (3.82 / 4.31 and 3.71 / 4.22).
   ViDiT-Q's static smoothing in front of the rotation cannot flatten anything further (3.78 / 4.29 after
   α 0.25 + rotate). Behind a rotation both quantization errors are roughly isotropic, so the smoothing
   can only rebalance the energies of x/s and s·W, worth < 1 dB when the channels are this balanced. On
   the XL models rotation alone leaves outliers (40.75 → 12.83 in the paper), and the static stage has
   far more to remove.

4. **W8A8 error ≈ 60 % activations / 40 % weights; W4A8 error ≈ 100 % weights.** Rotate only, step
   SQNR: PixArt W8A16 54.7 and W16A8 52.3 dB add up to W8A8 50.3 dB; STDiT 48.1 and 46.0 → 43.9 dB. At
   W4A8 the W4A16 row equals the W4A8 row within 0.03 dB on both models (29.80 / 29.79 and
   23.16 / 23.13): the 8-bit activations do not matter, so ViDiT-Q's activation-side balancing has
   nothing to win there.

5. **At W4 the rotation hurts the weights of these models, and ViDiT-Q's α = 0.01 hurts most.** W4A16
   step SQNR, PixArt / STDiT: no balancing 30.6 / 26.0, rotate 29.8 / 23.2, α 0.01 + rotate (the
   `viditq-w4a8` balancing) 29.3 / 22.8, smoothing only α 0.5 31.0 / 25.9 dB. The weight rows of these
   small models are lighter-tailed than Gaussian (excess kurtosis −0.47 / −0.78; the models start from a
   Xavier-uniform init and trained 25 k / 11 k steps). The rotation makes them Gaussian (kurtosis ≈ 0),
   which raises the range / RMS that sets a min-max quantizer's step (5.27 → 5.78, 4.57 → 5.60) and the
   per-channel W4 error (10.2 % → 11.2 %, 8.9 % → 10.8 %). Rotation pays off for weights with outliers
   (heavy tails), which these are not. The W4A8 direction of quality.md (SmoothQuant > QuaRot > ViDiT-Q)
   is therefore real at the step level (PixArt 31.0 > 29.8 > 29.2, STDiT 25.8 > 23.1 > 22.8 dB), even
   though the sampled gaps themselves are not significant.

6. **α.** With rotation, α 0.25–0.5 is best on both models at both widths. At W8A8, α 0.5 vs the preset's
   0.25: PixArt +0.37 dB, STDiT −0.01 dB: no clear case for changing `viditq-w8a8`. At W4A8, α 0.01 (the
   `viditq-w4a8` / `-mp` preset, ViDiT-Q a = 0.99) is the worst α with rotation on both models: α 0.25 /
   0.5 gain +1.3 / +1.8 dB (PixArt) and +1.2 / +1.2 dB (STDiT), with the same sign at every sign seed.
   The data of both models thus support α ≈ 0.25–0.5 (a ≈ 0.5–0.75) over 0.01 for the W4A8 presets
   *on these models* (defaults left at the paper's values); better still here is no rotation at W4
   (SmoothQuant α 0.25–0.5, or no balancing at all on STDiT).

7. **Answer to issue 6.** ViDiT-Q does not clearly win on the bundled models because (a) the sampled
   PSNR cannot resolve the differences at all, (b) the real per-step W8A8 advantage over rotation alone
   is ≤ 0.4 dB since these activations have little incoherence for the static stage to remove, and (c) at
   W4A8 the error is in the weights, whose light tails make any rotation, and the α 0.01 column
   equalisation, counter-productive. No implementation bug was found: the smoothing vector comes from
   the float model's calibrated per-channel input absmax (max over all calibration calls, both CFG
   halves); `x' = (x/s)·R` and `W' = (W·diag(s))ᵀ·R` are folded in that order (a float-weight record
   reproduces the float layer to 3e-6); weights are per-output-channel asymmetric min-max RTN without a
   range search (ViDiT-Q has none either, and at W4A8 that weight error is the whole error); every row
   named after a preset resolves each layer exactly like the preset.
"""


# ------------------------------------------------------------------------------------------------
# configurations
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row: weight / activation bits (``None`` = float), balancing of the block layers, caption
    K/V float or not, Hadamard sign seed, evaluation-noise seed, backend override."""

    w: int | None
    a: int | None
    alpha: float | None = None
    rotate: bool = False
    kv_float: bool = False
    rot_seed: int = 0
    eval_seed: int = 0
    backend: str | None = None
    preset: str | None = None  # the quality.py preset this row reproduces (checked)
    group: str = "grid"

    @property
    def is_fp(self) -> bool:
        return self.w is None and self.a is None

    @property
    def bits(self) -> str:
        return f"W{self.w or 16}A{self.a or 16}"

    @property
    def balancing(self) -> str:
        parts = ([f"smooth α={self.alpha:g}"] if self.alpha is not None else []) + (["rotate"] if self.rotate else [])
        return " + ".join(parts) or "none"

    @property
    def key(self) -> str:
        """Short unique id, e.g. ``W4A8 sm0.5+rot kvfp rs1 es1 sim``."""
        bal = "+".join(([f"sm{self.alpha:g}"] if self.alpha is not None else []) + (["rot"] if self.rotate else []))
        extra = (" kvfp" if self.kv_float else "") + (f" rs{self.rot_seed}" if self.rot_seed else "") + (
            f" es{self.eval_seed}" if self.eval_seed else "") + (" sim" if self.backend == "simulate" else "")
        return f"{self.bits} {bal or 'none'}{extra}"

    @property
    def step_key(self) -> str:
        """The key of the quantization alone (the evaluation noise does not change the params)."""
        return dataclasses.replace(self, eval_seed=0).key

    def config(self, backend: str) -> QuantConfig | None:
        """The :class:`QuantConfig` (``None`` for FP). W16 rows quantize W8 here and swap the weights
        for the float balanced weight afterwards (:func:`float_weights`, ``simulate`` backend)."""
        if self.is_fp:
            return None
        backend = "simulate" if self.w is None else (self.backend or backend)
        layer = LayerQuant(w_bits=self.w or 8, a_bits=self.a, backend=backend)
        rules = ((LayerRule(BLOCK_LAYERS, smooth_alpha=self.alpha, rotate=self.rotate),)
                 if self.alpha is not None or self.rotate else ())
        return QuantConfig(self.key, default=layer, rules=rules, quantize_cross_kv=not self.kv_float,
                           seed=self.rot_seed)


def sample_variants(video: bool) -> list[Variant]:
    """The sampled rows, FP first (the reference of every evaluation seed)."""
    V = Variant
    rows = [V(None, None, preset="fp"), V(None, None, eval_seed=SEED2, group="noise")]
    rows += [V(8, 8, preset="dynamic-w8a8"), V(8, 8, rotate=True, preset="quarot-w8a8"),
             V(8, 8, alpha=0.5, preset="smoothquant-w8a8"), V(8, 8, alpha=0.25, rotate=True),
             V(8, 8, alpha=0.5, rotate=True), V(8, 8, alpha=0.75, rotate=True),
             V(8, 8, alpha=0.25, rotate=True, kv_float=True, preset="viditq-w8a8"),
             V(4, 8, rotate=True, preset="quarot-w4a8"), V(4, 8, alpha=0.5, preset="smoothquant-w4a8"),
             V(4, 8, alpha=0.01, rotate=True, preset="viditq-w4a8"), V(4, 8, alpha=0.25, rotate=True),
             V(4, 8, alpha=0.5, rotate=True)]
    rows += [V(None, 8, rotate=True, group="wa"), V(4, None, rotate=True, group="wa")]
    if not video:
        rows += [V(None, 8, alpha=0.25, rotate=True, group="wa"), V(4, None, alpha=0.01, rotate=True, group="wa")]
    noise = [V(8, 8, rotate=True, backend="simulate"), V(8, 8, rotate=True, rot_seed=SEED2),
             V(8, 8, alpha=0.25, rotate=True, rot_seed=SEED2),
             V(8, 8, rotate=True, eval_seed=SEED2), V(8, 8, alpha=0.25, rotate=True, eval_seed=SEED2)]
    if not video:
        noise += [V(4, 8, rotate=True, eval_seed=SEED2), V(4, 8, alpha=0.01, rotate=True, eval_seed=SEED2)]
    rows += [dataclasses.replace(v, group="noise") for v in noise]
    return rows


def step_variants(alphas: tuple[float, ...]) -> list[Variant]:
    """The teacher-forced grid (rotation seeds are added by the runner)."""
    V = Variant
    rows = []
    for w, a in ((8, 8), (4, 8)):
        rows += [V(w, a), V(w, a, rotate=True)]
        rows += [V(w, a, alpha=al) for al in alphas]
        rows += [V(w, a, alpha=al, rotate=True) for al in alphas]
    rows.append(V(8, 8, alpha=0.25, rotate=True, kv_float=True))
    for w, a in ((None, 8), (8, None), (4, None)):
        rows += [V(w, a), V(w, a, rotate=True), V(w, a, alpha=0.5)]
        rows += [V(w, a, alpha=al, rotate=True) for al in alphas if w != 8 or al in (0.25, 0.5)]  # W8 weights: 2 α
    return rows


def check_preset(dm, v: Variant, backend: str) -> None:
    """A row labelled with a preset must resolve every Dense of the model exactly like it."""
    if v.preset is None or v.preset == "fp":
        return
    mine, ref = v.config(backend), dm.quant_config(v.preset, backend)
    for p in dense_paths(dm.params):
        if mine.resolve(p) != ref.resolve(p):
            raise AssertionError(f"row {v.key} differs from preset {v.preset} at {p}: {mine.resolve(p)} vs {ref.resolve(p)}")


# ------------------------------------------------------------------------------------------------
# float-weight records (activation quantization alone) and params
# ------------------------------------------------------------------------------------------------


@struct.dataclass
class FloatWeightRecord(QuantizedWeight):
    """A record whose weight is NOT quantized: ``dequantize`` returns the float balanced weight
    ``W' = (W·diag(s))ᵀ R``; the activation side (smoothing, rotation, dynamic quantization) is the
    record's own. Only the ``simulate`` backend reads the weight through ``dequantize``."""

    w_float: jax.Array | None = None

    def dequantize(self) -> jax.Array:
        return self.w_float


def float_weights(qparams: Any, params: Any) -> Any:
    """``qparams`` with every :class:`QuantizedWeight` replaced by a :class:`FloatWeightRecord` built
    from the matching float kernel of ``params`` (same tree layout)."""
    names = [f.name for f in dataclasses.fields(QuantizedWeight)]

    def rec(q: Any, f: Any) -> Any:
        if not isinstance(q, Mapping):
            return q
        out = {}
        for k, v in q.items():
            if isinstance(v, QuantizedWeight):
                if v.layer.backend != "simulate":
                    raise ValueError("float-weight records need the simulate backend")
                out[k] = FloatWeightRecord(**{n: getattr(v, n) for n in names},
                                           w_float=_balanced_weight_jit(f[k], v.smooth, v.hadamard_signs))
            else:
                out[k] = rec(v, f[k])
        return out

    return rec(qparams, params)


def _canonical(params: Any) -> Any:
    """Records with ``smooth_alpha`` normalised in their static metadata (the α is baked into the
    stored smoothing vector and not read at run time): every α of a grid shares one compiled sampler."""
    def canon(v: Any) -> Any:
        if isinstance(v, QuantizedWeight) and v.layer.smooth_alpha is not None:
            return v.replace(layer=v.layer.replace(smooth_alpha=0.5))
        return v

    return jax.tree_util.tree_map(canon, params, is_leaf=lambda v: isinstance(v, QuantizedWeight))


def build_params(setup: EvalSetup, v: Variant, backend: str) -> Any:
    dm = setup.dm
    cfg = v.config(backend)
    if cfg is None:
        return dm.params
    q = quantize_params(dm.params, setup.calib, model=dm.model, config=cfg, stats=setup.stats)
    return _canonical(float_weights(q, dm.params) if v.w is None else q)


# ------------------------------------------------------------------------------------------------
# teacher-forced denoiser error (deterministic, no sampling)
# ------------------------------------------------------------------------------------------------


class StepProbe:
    """The denoiser's one-call error on float trajectory states: model inputs recorded along float
    sampling runs of ``n`` evaluation prompts from their own noise (``PROBE_SEED``; every
    ``calib_every_k``-th step, both CFG halves, like the calibration batches but other prompts and
    noise) and the float model's outputs on them. :meth:`sqnr` of a params tree =
    ``10 log10(‖ε_fp‖² / ‖ε_q − ε_fp‖²)`` over all probe calls: every call starts from the SAME float
    state, so nothing is amplified along the trajectory (unlike PSNR of the final samples)."""

    def __init__(self, setup: EvalSetup, n: int):
        dm = setup.dm
        probe = setup.prompts.take(spread(len(setup.prompts), min(n, len(setup.prompts))))
        self.prompts = probe.texts
        self.batches = [b.batch for b in dm.collect_calibration(dm.condition(probe.y, probe.mask),
                                                                 key=jax.random.PRNGKey(PROBE_SEED))]
        self.apply = jax.jit(lambda p, b: dm.model.apply({"params": p}, **b))
        self.ref = self.outputs(dm.params)

    def outputs(self, params: Any) -> np.ndarray:
        params = upcast_bf16(params)
        return np.concatenate([np.asarray(self.apply(params, b), np.float32).ravel() for b in self.batches])

    def sqnr(self, params: Any) -> float:
        return sqnr_db(self.ref, self.outputs(params))


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------


def per_sample_mse(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    d = np.asarray(x, np.float64) - np.asarray(ref, np.float64)
    return np.mean(d.reshape(len(d), -1) ** 2, axis=1)


def set_psnr(mse: np.ndarray) -> float:
    """PSNR of a set from its per-sample MSEs (equal sizes, pixels in [-1, 1]), as quality.md."""
    m = float(np.mean(mse))
    return 100.0 if m == 0 else 10.0 * np.log10(4.0 / m)


def paired_gap(mse_a: np.ndarray, mse_b: np.ndarray, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Set-PSNR(a) − set-PSNR(b); with >= 4 samples a paired bootstrap over the samples: 95 %
    interval and the fraction of resamples where a is better."""
    out: dict[str, Any] = {"gap_db": set_psnr(mse_a) - set_psnr(mse_b), "ci_lo": None, "ci_hi": None, "p_a_better": None}
    n = len(mse_a)
    if n >= 4:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        d = 10.0 * np.log10(np.mean(mse_b[idx], axis=1) / np.mean(mse_a[idx], axis=1))
        out.update(ci_lo=float(np.percentile(d, 2.5)), ci_hi=float(np.percentile(d, 97.5)), p_a_better=float(np.mean(d > 0)))
    return out


def _row_stats(w: np.ndarray) -> dict[str, float]:
    """Per-row (output channel) shape statistics of a weight ``(N, K)``, averaged over rows: excess
    kurtosis (0 Gaussian, −1.2 uniform), min-max range / RMS (what a min-max quantizer's step
    scales with) and the relative error of per-channel asymmetric min-max W4 / W8 RTN."""
    w = np.asarray(w, np.float64)
    c = w - w.mean(1, keepdims=True)
    out = {"kurtosis": float(np.mean(np.mean(c**4, 1) / np.mean(c**2, 1) ** 2 - 3)),
           "range_over_rms": float(np.mean((w.max(1) - w.min(1)) / np.sqrt(np.mean(w**2, 1))))}
    for bits in (4, 8):
        e = np.asarray(fake_quant(jnp.asarray(w, jnp.float32), QuantSpec(bits, False, "channel")), np.float64) - w
        out[f"w{bits}_rel_err"] = float(np.linalg.norm(e) / np.linalg.norm(w))
    return out


def weight_stats(dm, backend: str = "xla") -> dict[str, Any]:
    """:func:`_row_stats` of the quantized block weights before and after the rotation (sign seed 0),
    mean over layers, with i.i.d. Gaussian and uniform rows of the hidden width for reference."""
    cfg = Variant(8, 8, rotate=True).config(backend)
    before, after = [], []
    for p in dense_paths(dm.params):
        lq = cfg.resolve(p)
        if lq is None:
            continue
        w = jnp.asarray(get_kernel(dm.params, p), jnp.float32).T  # (N, K)
        signs = balance_for_layer(get_kernel(dm.params, p), lq, key=layer_key(cfg.seed, p))[1]
        before.append(_row_stats(w))
        after.append(_row_stats(hadamard_transform(w, signs)))
    mean = lambda rows: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}  # noqa: E731
    k = int(dm.model.config.hidden_size)
    rng = np.random.default_rng(0)
    return {"layers": len(before), "before": mean(before), "after_rotation": mean(after),
            "gaussian": _row_stats(rng.standard_normal((1024, k))), "uniform": _row_stats(rng.uniform(-1, 1, (1024, k))),
            "width": k}


def gaussian_incoherence(k: int, tokens: int = 4096, seed: int = 0) -> float:
    """Mean per-token max|x|/mean|x| of i.i.d. Gaussian tokens of width ``k``: the floor a random
    rotation drives any token towards (ViDiT-Q's 5.02 after balancing is at this floor for K=1152)."""
    x = np.abs(np.random.default_rng(seed).standard_normal((tokens, k)))
    return float(np.mean(x.max(1) / x.mean(1)))


# ------------------------------------------------------------------------------------------------
# runner
# ------------------------------------------------------------------------------------------------


def run_model(spec: str, *, counts: dict[str, int | None], backend: str, step: bool, alphas: tuple[float, ...],
              models_dir: str | None = None, only: set[str] | None = None) -> tuple[list[dict], list[dict], dict]:
    """``(sampled rows, step rows, info)`` of one model."""
    t_model = time.perf_counter()
    setup0 = prepare(spec, counts=counts, models_dir=models_dir)
    dm = setup0.dm
    video = dm.task == "t2v"
    t0 = time.perf_counter()
    probe = StepProbe(setup0, PROBE_PROMPTS[dm.task]) if step else None
    probe_s = time.perf_counter() - t0
    sqnr_cache: dict[str, float] = {}

    def step_sqnr(v: Variant, q: Any) -> float | None:
        if probe is None:
            return None
        if v.step_key not in sqnr_cache:
            sqnr_cache[v.step_key] = probe.sqnr(q)
        return sqnr_cache[v.step_key]

    # ---- sampled rows
    vs = sample_variants(video)
    if only is not None:
        vs = [v for v in vs if v.key in only or v.is_fp]
        seeds = {v.eval_seed for v in vs if not v.is_fp} | {0}
        vs = [v for v in vs if not v.is_fp or v.eval_seed in seeds]
    setups = {0: setup0}
    refs: dict[int, np.ndarray] = {}
    samples: dict[str, np.ndarray] = {}
    rows: list[dict] = []
    feature_dim = None
    for v in vs:
        check_preset(dm, v, backend)
        if v.eval_seed not in setups:
            setups[v.eval_seed] = setup0.reseeded(v.eval_seed)
        setup = setups[v.eval_seed]
        if not v.is_fp and v.eval_seed not in refs:
            raise ValueError(f"no FP row for evaluation seed {v.eval_seed}")
        t0 = time.perf_counter()
        q = jax.block_until_ready(build_params(setup, v, backend))
        quantize_s = time.perf_counter() - t0
        x, metrics = evaluate(setup, q, refs.get(v.eval_seed))
        if v.is_fp:
            refs[v.eval_seed] = x
        samples[v.key] = x
        feature_dim = metrics.pop("feature_dim")
        row = {"model": dm.name, "task": dm.task, "key": v.key, **dataclasses.asdict(v), "bits": v.bits,
               "balancing": v.balancing, **metrics,
               "sample_psnr": [psnr(a, b) for a, b in zip(x, refs[v.eval_seed])],
               "sample_mse": per_sample_mse(x, refs[v.eval_seed]).tolist(),
               "step_sqnr": None if v.is_fp else step_sqnr(v, q), "quantize_s": quantize_s}
        if v.backend == "simulate":  # the same quantization on the other backend: how far apart are the samples?
            twin = dataclasses.replace(v, backend=None).key
            if twin in samples:
                row["psnr_vs_twin"] = {"twin": twin, "psnr": psnr(x, samples[twin])}
        rows.append(row)
        sq = "" if row["step_sqnr"] is None else f"  step SQNR {row['step_sqnr']:6.2f} dB"
        print(f"  {dm.name:22s} {v.key:28s} PSNR {row['psnr']:6.2f} dB  SSIM {row['ssim']:.4f}  FD {row['fd']:8.3f}"
              f"{sq}  [{quantize_s + row['sample_s']:.0f} s]", flush=True)

    # ---- incoherence of the key balancings vs the Gaussian floor
    inc = {}
    t0 = time.perf_counter()
    for v in (Variant(8, 8, rotate=True), Variant(8, 8, alpha=0.25, rotate=True), Variant(4, 8, alpha=0.01, rotate=True)):
        if only is not None and v.key not in only:
            continue
        r = _incoherence(dm, build_params(setup0, v, backend), setup0.calib)
        inc[v.key] = {"mean_before": r.get("mean_before"), "mean_after": r.get("mean_after"),
                      "after_by_k": _by_width(dm, r["layers"], "after"), "before_by_k": _by_width(dm, r["layers"], "before")}
    widths = sorted({int(np.shape(get_kernel(dm.params, p))[0]) for p in dense_paths(dm.params)
                     if Variant(8, 8, rotate=True).config(backend).resolve(p) is not None})
    floor = {k: gaussian_incoherence(k) for k in widths}
    inc_s = time.perf_counter() - t0

    # ---- teacher-forced step grid
    step_rows: list[dict] = []
    t0 = time.perf_counter()
    if probe is not None:
        for v in step_variants(alphas):
            if only is not None and v.key not in only:
                continue
            by_seed = {}
            for seed in (ROT_SEEDS[dm.task] if v.rotate else (0,)):
                vv = dataclasses.replace(v, rot_seed=seed)
                if vv.step_key not in sqnr_cache:
                    sqnr_cache[vv.step_key] = probe.sqnr(build_params(setup0, vv, backend))
                by_seed[seed] = sqnr_cache[vv.step_key]
            vals = np.asarray(list(by_seed.values()))
            step_rows.append({"model": dm.name, "task": dm.task, "key": v.key, **dataclasses.asdict(v), "bits": v.bits,
                              "balancing": v.balancing, "sqnr_by_seed": {str(k): x for k, x in by_seed.items()},
                              "sqnr": float(vals.mean()), "sqnr_sd": float(vals.std(ddof=1)) if len(vals) > 1 else None})
            print(f"  {dm.name:22s} step {v.key:24s} SQNR {vals.mean():6.2f} dB " + " ".join(f"{x:.2f}" for x in vals),
                  flush=True)
    step_s = time.perf_counter() - t0
    info = {**setup_info(setup0), "arch": dm.name, "task": dm.task, "feature_dim": feature_dim,
            "probe": None if probe is None else {"prompts": probe.prompts, "batches": len(probe.batches),
                                                   "noise_seed": PROBE_SEED, "seconds": probe_s},
            "rot_seeds": list(ROT_SEEDS[dm.task]), "incoherence": inc, "gaussian_floor": floor,
            "weights": weight_stats(dm, backend),
            "seconds": time.perf_counter() - t_model, "incoherence_s": inc_s, "step_s": step_s}
    return rows, step_rows, {dm.name: info}


def _by_width(dm, layers: dict, which: str) -> dict[int, float]:
    """Mean incoherence per input width K (the Gaussian floor depends on K)."""
    groups: dict[int, list[float]] = {}
    for p, v in layers.items():
        groups.setdefault(int(np.shape(get_kernel(dm.params, p))[0]), []).append(v[which])
    return {k: float(np.mean(x)) for k, x in sorted(groups.items())}


# ------------------------------------------------------------------------------------------------
# analysis and report
# ------------------------------------------------------------------------------------------------

_DEFAULTS = {"w": None, "a": None, "alpha": None, "rotate": False, "kv_float": False, "rot_seed": 0, "eval_seed": 0,
             "backend": None}


def _find(rows: list[dict], **kw) -> dict | None:
    want = {**_DEFAULTS, **kw}
    return next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)


def comparisons(rows: list[dict]) -> list[dict]:
    """Paired gaps of the sampled rows that decide the ordering, per model and evaluation seed."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mrows = [r for r in rows if r["model"] == model]
        pairs = []
        for extra in ({}, {"rot_seed": SEED2}, {"eval_seed": SEED2}):
            for w, vq in ((8, 0.25), (4, 0.01)):
                pairs.append((_find(mrows, w=w, a=8, rotate=True, **extra),
                              _find(mrows, w=w, a=8, alpha=vq, rotate=True, **extra)))
                if "rot_seed" not in extra:  # SmoothQuant has no rotation to reseed
                    pairs.append((_find(mrows, w=w, a=8, alpha=0.5, **extra),
                                  _find(mrows, w=w, a=8, alpha=vq, rotate=True, **extra)))
        pairs.append((_find(mrows, w=8, a=8, rotate=True), _find(mrows, w=8, a=8, rotate=True, backend="simulate")))
        pairs.append((_find(mrows, w=8, a=8, rotate=True), _find(mrows, w=8, a=8, alpha=0.25, rotate=True, kv_float=True)))
        for w in (8, 4):
            pairs.append((_find(mrows, w=w, a=8, alpha=0.5, rotate=True), _find(mrows, w=w, a=8, rotate=True)))
        seen = set()
        for a, b in pairs:
            if a is None or b is None or a is b or (a["key"], b["key"]) in seen:
                continue
            seen.add((a["key"], b["key"]))
            g = paired_gap(np.asarray(a["sample_mse"]), np.asarray(b["sample_mse"]))
            out.append({"model": model, "a": a["key"], "b": b["key"], **g})
    return out


def _ci(c: dict) -> str:
    return "–" if c["ci_lo"] is None else f"[{c['ci_lo']:+.2f}, {c['ci_hi']:+.2f}]"


def _sample_table(rows: list[dict], video: bool) -> list[str]:
    head = ["row", "bits", "balancing", "caption K/V", "PSNR dB", "per-sample PSNR mean ± s.e.", "SSIM", "FD", "acc."]
    if video:
        head += ["motion", "temporal"]
    head += ["step SQNR dB", "preset", "s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sp = np.asarray(r["sample_psnr"], np.float64)
        se = sp.std(ddof=1) / np.sqrt(len(sp)) if len(sp) > 1 else float("nan")
        bal = r["balancing"] + (f", signs seed {r['rot_seed']}" if r["rot_seed"] else "") + (
            f", noise seed {r['eval_seed']}" if r["eval_seed"] else "") + (", simulate backend" if r["backend"] else "")
        cells = [f"`{r['key']}`", r["bits"], bal,
                 "–" if r["w"] is None and r["a"] is None else ("float" if r["kv_float"] else "quantized"),
                 f"{r['psnr']:.2f}", "–" if r["w"] is None and r["a"] is None else f"{sp.mean():.2f} ± {se:.2f}",
                 f"{r['ssim']:.4f}", f"{r['fd']:.3f}", f"{r['cond_acc']:.3f}"]
        if video:
            cells += [_fmt(r.get("motion_acc"), 3), _fmt(r.get("temporal_consistency"), 4)]
        cells += ["–" if r["step_sqnr"] is None else f"{r['step_sqnr']:.2f}", f"`{r['preset']}`" if r["preset"] else "", f"{r['quantize_s'] + r['sample_s']:.0f}"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _step_table(rows: list[dict], alphas: tuple[float, ...], seeds: tuple[int, ...]) -> list[str]:
    """Bits × balancing matrix of the step SQNR (mean over sign seeds ± sd for rotated rows)."""
    cols = [("none", {}), ("rotate", {"rotate": True})] + [(f"smooth α={a:g}", {"alpha": a}) for a in alphas] + [
        (f"α={a:g} + rotate", {"alpha": a, "rotate": True}) for a in alphas]
    out = [f"Teacher-forced denoiser SQNR in dB (higher = closer to FP); rotated cells: mean ± sd over Hadamard sign "
           f"seeds {', '.join(map(str, seeds))}.", "",
           "| bits | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for w, a in ((8, 8), (4, 8), (None, 8), (8, None), (4, None)):
        cells = []
        for _, kw in cols:
            r = _find(rows, w=w, a=a, **kw)
            if r is None:
                cells.append("")
            else:
                cells.append(f"{r['sqnr']:.2f}" + (f" ± {r['sqnr_sd']:.2f}" if r["sqnr_sd"] is not None else ""))
        out.append(f"| W{w or 16}A{a or 16} | " + " | ".join(cells) + " |")
    kv = _find(rows, w=8, a=8, alpha=0.25, rotate=True, kv_float=True)
    if kv is not None:
        out += ["", f"W8A8 α=0.25 + rotate with the caption K/V kept float (the `viditq-w8a8` preset): {kv['sqnr']:.2f}"
                + (f" ± {kv['sqnr_sd']:.2f}" if kv["sqnr_sd"] is not None else "") + " dB."]
    return out


def findings(rows: list[dict], step_rows: list[dict], comps: list[dict], models: dict) -> list[str]:
    """Data-driven statements, one block per model (the numbers the interpretation rests on)."""
    out = []
    for model, info in models.items():
        mrows = [r for r in rows if r["model"] == model]
        srows = [r for r in step_rows if r["model"] == model]
        out.append(f"- **{model}**")
        for w in (8, 4):
            base = [r for r in mrows if r["w"] == w and r["a"] == 8 and not r["kv_float"] and r["rot_seed"] == 0
                    and r["eval_seed"] == 0 and r["backend"] is None]
            if base:
                rank = sorted(base, key=lambda r: -r["psnr"])
                out.append(f"  - sampled W{w}A8, PSNR vs FP: " + " > ".join(f"{r['balancing']} {r['psnr']:.2f}" for r in rank))
            st = [r for r in srows if r["w"] == w and r["a"] == 8 and not r["kv_float"]]
            if st:
                rank = sorted(st, key=lambda r: -r["sqnr"])[:5]
                rot = _find(srows, w=w, a=8, rotate=True)
                sd = f"; sign-seed sd of rotate only {rot['sqnr_sd']:.2f} dB" if rot and rot["sqnr_sd"] is not None else ""
                out.append(f"  - step W{w}A8, top 5 by SQNR: " + " > ".join(f"{r['balancing']} {r['sqnr']:.2f}" for r in rank)
                           + (f"; rotate only {rot['sqnr']:.2f}" if rot else "") + sd)
            wf, af, both = (_find(srows, w=None, a=8, rotate=True), _find(srows, w=w, a=None, rotate=True),
                            _find(srows, w=w, a=8, rotate=True))
            if wf and af and both:
                out.append(f"  - step, rotate only: W{w}A8 {both['sqnr']:.2f} dB = weights alone (W{w}A16) {af['sqnr']:.2f} dB "
                           f"⊕ activations alone (W16A8) {wf['sqnr']:.2f} dB")
        for c in [c for c in comps if c["model"] == model]:
            sig = "" if c["ci_lo"] is None else (", significant" if c["ci_lo"] > 0 or c["ci_hi"] < 0 else ", not significant")
            out.append(f"  - sampled `{c['a']}` − `{c['b']}`: {c['gap_db']:+.2f} dB (95 % {_ci(c)}{sig})")
        sim = next((r for r in mrows if r.get("psnr_vs_twin")), None)
        if sim:
            out.append(f"  - `{sim['key']}` vs `{sim['psnr_vs_twin']['twin']}` (same integers, other float rounding): the "
                       f"two sample sets are {sim['psnr_vs_twin']['psnr']:.2f} dB PSNR apart")
        inc = info.get("incoherence") or {}
        floor = info.get("gaussian_floor") or {}
        for key, v in inc.items():
            out.append(f"  - incoherence `{key}`: {_fmt(v['mean_before'], 3)} → {_fmt(v['mean_after'], 3)}; by C_in after: "
                       + ", ".join(f"K={k}: {x:.2f}" for k, x in v["after_by_k"].items()))
        if floor:
            out.append("  - Gaussian floor (i.i.d. normal token): " + ", ".join(f"K={k}: {x:.2f}" for k, x in floor.items()))
        ws = info.get("weights")
        if ws:
            f = lambda d: (f"excess kurtosis {d['kurtosis']:+.2f}, range/RMS {d['range_over_rms']:.2f}, "  # noqa: E731
                           f"W4 error {d['w4_rel_err']:.2%}, W8 error {d['w8_rel_err']:.2%}")
            out.append(f"  - weight rows (per output channel, mean over {ws['layers']} layers): before rotation {f(ws['before'])}; "
                       f"after rotation {f(ws['after_rotation'])}; i.i.d. Gaussian rows (K={ws['width']}) "
                       f"{f(ws['gaussian'])}; uniform rows {f(ws['uniform'])}")
    return out


def to_markdown(rows: list[dict], step_rows: list[dict], models: dict, env: dict, total_s: float, comps: list[dict],
                alphas: tuple[float, ...], notes: str = "") -> str:
    lines = [
        "# Quality ablation: which factor orders the presets on the bundled trained models",
        "",
        f"{env['date']}, JAX {env['jax_version']} on {env['platform']} ({env['cpu']}, {env['cpu_count']} CPU cores), "
        f"`{env['backend']}` backend (W16 rows and `sim` rows: `simulate`); generated by "
        f"`benchmarks/quality_ablation.py` in {total_s / 60:.1f} min.",
        "",
        "Unless a row says otherwise: per-output-channel asymmetric min-max weights (RTN, no clipping search, as "
        "ViDiT-Q), dynamic per-token symmetric activations, every Dense of the transformer blocks quantized "
        "(embedders, t_block, final layer float; caption K/V quantized), smoothing / rotation on every block Dense, "
        "smoothing vector from the calibration channel absmax (max over all calibration batches, as quality.py). "
        "α is SmoothQuant's migration strength (`s = A^α / max|W|^(1-α)`; ViDiT-Q's `a` = 1 − α). W16: the balanced "
        "float weight (not quantized); A16: float activations.",
        "",
        "- **sampled rows**: PSNR / SSIM vs the FP samples from the same noise (one MSE over the set, as quality.md), "
        "per-sample PSNR mean ± standard error, FD / accuracy from the feature network (few samples: compare rows of "
        "one model only). `es1`: evaluation noise seed 1 (FP re-sampled from it); `rs1`: Hadamard sign seed 1; "
        "`sim`: the `simulate` backend (identical integer values, only float rounding differs). Gaps: paired "
        f"bootstrap over the samples ({BOOTSTRAP} resamples; 4 or more samples) of the set-PSNR difference.",
        "- **step SQNR**: `10 log10(‖ε_fp‖² / ‖ε_q − ε_fp‖²)` of the denoiser output over float trajectory states "
        f"of other prompts and noise (seed {PROBE_SEED}; every `calib_every_k`-th step, both CFG halves). Every call "
        "starts from the same float state: the quantization error without the sampler's amplification.",
        "",
    ]
    for name, info in models.items():
        mrows = [r for r in rows if r["model"] == name]
        srows = [r for r in step_rows if r["model"] == name]
        video = info["task"] == "t2v"
        s, tr, cal = info["sampler"], info["train_record"], info["calibration"]
        probe = info.get("probe")
        lines += [
            f"## {name} ({'text-to-video' if video else 'text-to-image'})",
            "",
            f"- {info['model']} (hidden {info['config']['hidden_size']}, depth {info['config']['depth']}); trained "
            f"{tr.get('steps')} steps; sampler {s['sampler']} {s['steps']} steps, CFG {s['guidance_scale']:g}",
            f"- {info['samples']} sampled prompts: captions of `assets/{info['eval_bank']}.npz` spread over the bank, "
            f"noise seed {info['eval_noise_seed']} (and {SEED2} for `es1` rows); feature dim {info['feature_dim']}",
            f"- calibration as quality.py: {len(cal['prompts'])} demo prompts, own noise (seed {cal['noise_seed']}), "
            f"every {cal['every_k_steps']}-th step: {cal['batches']} batches ({cal['seconds']:.0f} s)",
        ]
        if probe:
            lines.append(f"- step probe: {len(probe['prompts'])} evaluation prompt(s) ({', '.join(probe['prompts'])}), "
                         f"noise seed {probe['noise_seed']}, {probe['batches']} calls")
        lines.append("")
        if srows:
            lines += ["### Teacher-forced step error: the whole grid", "",
                      *_step_table(srows, alphas, tuple(info["rot_seeds"])), ""]
        for group, title in (("grid", "Sampled: balancing (W8A8, W4A8)"),
                             ("wa", "Sampled: weights vs activations (W16 = float weights, A16 = float activations)"),
                             ("noise", "Sampled: measurement noise (`es1` noise seed, `rs1` sign seed, `sim` backend)")):
            g = [r for r in mrows if r["group"] == group]
            if g:
                lines += [f"### {title}", "", *_sample_table(g, video), ""]
        mc = [c for c in comps if c["model"] == name]
        if mc:
            lines += ["### Sampled: paired gaps", "", "| a | b | PSNR(a) − PSNR(b) dB | 95 % interval | a better in |",
                      "|---|---|---|---|---|"]
            lines += [f"| `{c['a']}` | `{c['b']}` | {c['gap_db']:+.2f} | {_ci(c)} | "
                      f"{'–' if c['p_a_better'] is None else format(c['p_a_better'], '.0%')} |" for c in mc]
            lines.append("")
    if notes:
        lines += [notes.strip(), ""]
    lines += ["## Numbers behind the findings", "", *findings(rows, step_rows, comps, models), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(ap)
    ap.add_argument("--images", type=int, default=COUNTS["t2i"])
    ap.add_argument("--videos", type=int, default=COUNTS["t2v"])
    ap.add_argument("--alphas", nargs="+", type=float, default=list(ALPHAS), help="α grid of the step sweep")
    ap.add_argument("--no-step", action="store_true", help="skip the teacher-forced step sweep")
    ap.add_argument("--only", nargs="*", help="run only rows whose key is listed (plus FP), e.g. 'W8A8 rot'")
    ap.add_argument("--backend", default="xla", choices=["simulate", "xla"])
    ap.add_argument("--no-findings", action="store_true",
                    help="leave out the written findings (FINDINGS: they describe the committed run)")
    ap.add_argument("--refresh", action="store_true",
                    help="no sampling: rebuild the report from the JSON at --out (weight statistics added if missing)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quality_ablation"),
                    help="output stem (.json/.md)")
    args = ap.parse_args(argv)
    alphas = tuple(args.alphas)
    out = Path(args.out)
    notes = "" if args.no_findings else FINDINGS
    if args.refresh:
        data = json.loads(out.with_suffix(".json").read_text())
        for info in data["models"].values():
            if "weights" not in info:
                info["weights"] = weight_stats(load_demo_model(info["folder"]), data["environment"]["backend"])
        data["comparisons"] = comparisons(data["rows"])
        _write(out, data, notes)
        return 0
    t0 = time.perf_counter()
    rows: list[dict] = []
    step_rows: list[dict] = []
    models: dict = {}
    for spec in args.models:
        print(spec, flush=True)
        r, s, info = run_model(spec, counts={"t2i": args.images, "t2v": args.videos}, backend=args.backend,
                               step=not args.no_step, alphas=alphas, models_dir=args.models_dir,
                               only=None if args.only is None else set(args.only))
        rows += r
        step_rows += s
        models.update(info)
    total = time.perf_counter() - t0
    env = {**environment(), "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "backend": args.backend}
    _write(out, {"environment": env, "models": models, "rows": rows, "step_rows": step_rows,
                 "comparisons": comparisons(rows), "alphas": list(alphas), "total_s": total}, notes)
    return 0


def _write(out: Path, data: dict, notes: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=float))
    out.with_suffix(".md").write_text(to_markdown(data["rows"], data["step_rows"], data["models"], data["environment"],
                                                  data["total_s"], data["comparisons"], tuple(data["alphas"]), notes))
    print(f"wrote {out.with_suffix('.md')} and .json ({data['total_s']:.0f} s run)")


if __name__ == "__main__":
    raise SystemExit(main())
