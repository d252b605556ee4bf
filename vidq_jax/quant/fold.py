"""Offline fold of an attention output's balancing into V and the output projection (QuaRot-style, issue 12).

The input of an attention's output projection ``proj`` is ``x = concat_h(P_h V_h)`` (``P_h`` = softmax of
head ``h``, rows mixing TOKENS only), ``V = y W_v + b_v`` a column block of a Dense the family declares
(:class:`models.families.AttentionOutput`). ViDiT-Q balances ``x`` online as ``x' = (x / s) · R`` before
quantizing it (:mod:`vidq_jax.quant.record`). When ``R = blockdiag(R_1 .. R_H)`` rotates each head on its
own, the whole transform commutes with ``P`` and moves offline::

    W_v' = W_v · diag(1/s) · R,   b_v' = b_v · diag(1/s) · R      (V's output columns; head h: · R_h)
    W_p' = Rᵀ · diag(s) · W_p                                       (proj's input rows; Flax kernel (K, N))

so ``P V' = x' `` and ``x' W_p' = x W_p``: the float model is unchanged, and ``proj`` runs the PLAIN
per-token quantizer (no online rotation kernel, no ``1/s`` multiply). The fold changes V's weights before
V's Dense is quantized (its per-output-channel quantizer sees the rotated columns); the smoothing ``s`` is
computed as today from the calibrated absmax of the unrotated ``x`` (smoothing comes before the rotation).

``R_h`` (:func:`head_rotation`): a randomized Hadamard ``diag(σ_h) H_d / sqrt(d)`` (independent signs per
head) when :mod:`vidq_jax.quant.hadamard` can build ``H_d`` (``d = 72`` of the XL models = 36·2, 64 of the
bundled ones, 12..32 of the fixtures), otherwise a Haar-random orthogonal matrix (QR of a Gaussian with the
signs of ``R``'s diagonal fixed), both seeded by ``layer_key(config.seed, proj path)``. What a per-head
rotation cannot do is mix heads (``P`` differs per head): a layer whose incoherence lives across heads
keeps more of it than under the online rotation over all ``K`` channels. Measured on the bundled models
(``benchmarks/fold_quality.py``, CPU): mean ``proj``-input incoherence 4.3 → 3.8 online vs 4.1 folded
(PixArt), PSNR vs FP at W8A8 within ±1 dB of the online rotation, at W4A8 0.3–2.3 dB below it (the
per-head-rotated weight keeps more outliers): hence opt-in presets (``viditq-w8a8-fold``, ...).

Asked for by ``LayerQuant.fold_heads`` (rule ``LayerRule("group:attn_out", fold_heads=True)``);
:func:`vidq_jax.quant.api.quantize_params` calls :func:`fold_params` between calibration and quantization.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.families import AttentionOutput, find_family
from vidq_jax.errors import VidqError
from vidq_jax.quant.balance import layer_key, smooth_scale, weight_channel_absmax
from vidq_jax.quant.config import LayerQuant, QuantConfig
from vidq_jax.quant.hadamard import hadamard_matrix, is_supported
from vidq_jax.quant.methods import layer_statistics
from vidq_jax.quant.stats import LayerStats, collect_stats
from vidq_jax.quant.tree import get_kernel, get_node, set_kernel

_HIGHEST = jax.lax.Precision.HIGHEST


def head_rotation(key: jax.Array, heads: int, head_dim: int) -> jax.Array:
    """Per-head orthogonal matrices ``(heads, d, d)`` float32: randomized Hadamard where ``d`` allows, else
    Haar-random; drawn on the host (numpy, seeded by ``key``'s data: no compile per shape)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key), np.uint32).ravel())
    if is_supported(head_dim):
        signs = np.where(rng.random((heads, head_dim)) < 0.5, 1.0, -1.0)
        return jnp.asarray(signs[:, :, None] * hadamard_matrix(head_dim)[None], jnp.float32)
    q, r = np.linalg.qr(rng.standard_normal((heads, head_dim, head_dim)))
    return jnp.asarray(q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :], jnp.float32)


def rotate_heads(x: jax.Array, rotation: jax.Array) -> jax.Array:
    """``x · blockdiag(R_1 .. R_H)`` over the last axis (``K = H·d``; ``rotation (H, d, d)``), float32."""
    h, d, _ = rotation.shape
    xh = jnp.asarray(x, jnp.float32).reshape(*x.shape[:-1], h, d)
    return jnp.einsum("...hd,hde->...he", xh, rotation, precision=_HIGHEST).reshape(x.shape)


@jax.jit
def fold_weights(value_kernel: jax.Array, value_bias: jax.Array | None, proj_kernel: jax.Array,
                 smooth: jax.Array | None, rotation: jax.Array | None) -> tuple[jax.Array, Any, jax.Array]:
    """``(W_v', b_v', W_p')`` of V's columns ``(C_in, K)``, their bias ``(K,)`` and proj's kernel ``(K, N)``
    (module docstring); ``smooth``/``rotation`` ``None`` = that part is not folded."""
    inv = None if smooth is None else 1.0 / smooth
    vk, pk = jnp.asarray(value_kernel, jnp.float32), jnp.asarray(proj_kernel, jnp.float32)
    vb = None if value_bias is None else jnp.asarray(value_bias, jnp.float32)
    if inv is not None:
        vk, pk = vk * inv, pk * smooth[:, None]
        vb = None if vb is None else vb * inv
    if rotation is not None:
        vk, pk = rotate_heads(vk, rotation), rotate_heads(pk.T, rotation).T
        vb = None if vb is None else rotate_heads(vb, rotation)
    return vk, vb, pk


def record_layer(lq: LayerQuant | None) -> LayerQuant | None:
    """The settings a layer's record runs with: a folded layer's balancing happened offline (none online)."""
    return lq.replace(smooth_alpha=None, rotate=False) if lq is not None and lq.fold_heads else lq


def fold_targets(model: Any, inner: Mapping[str, Any], settings: Mapping[str, Sequence[LayerQuant | None]]
                 ) -> dict[str, tuple[LayerQuant, AttentionOutput, str]]:
    """``{proj path: (its setting, declaration, V producer path)}`` of every layer asking for ``fold_heads``;
    a one-line :class:`VidqError` names a layer that cannot be folded."""
    out = {}
    fam = find_family(model)
    for p, lqs in settings.items():
        asks = [lq for lq in lqs if lq is not None and lq.fold_heads]
        if not asks:
            continue
        if len({(lq.smooth_alpha, lq.rotate) for lq in lqs if lq is not None}) > 1 or len(asks) < sum(
                lq is not None for lq in lqs):
            raise VidqError(f"layer {p!r}: fold_heads needs the same smoothing/rotation (and fold_heads) in "
                            "every segment of the plan; allowed: one balancing per folded layer")
        found = None if fam is None else fam.attention_output_of(p)
        if found is None:
            where = f"{type(model).__name__} ({fam.name})" if fam is not None else type(model).__name__
            raise VidqError(f"layer {p!r} of {where}: fold_heads=True but no attention output of its family feeds it; "
                            "allowed: the layers of group:attn_out")
        decl, module = found
        producer = f"{module}/{decl.value}"
        try:
            vk = get_kernel(inner, producer)
        except (KeyError, TypeError):
            raise VidqError(f"layer {p!r}: fold_heads needs V's Dense {producer!r}, which the params lack") from None
        if not hasattr(vk, "ndim") or hasattr(vk, "quantized_dense"):
            raise VidqError(f"layer {p!r}: fold_heads needs V's Dense {producer!r} in float, it is already quantized")
        out[p] = (asks[0], decl, producer)
    return out


def fold_params(
    inner: Mapping[str, Any],
    settings: Mapping[str, list[LayerQuant | None]],
    *,
    model: Any,
    config: QuantConfig,
    stats: Mapping[str, LayerStats],
    batches: Iterable | None,
) -> tuple[Mapping[str, Any], dict[str, list[LayerQuant | None]], Mapping[str, LayerStats]]:
    """Fold every ``fold_heads`` layer's balancing into its V producer and itself (module docstring).

    ``settings``: ``{path: [setting per segment]}`` as resolved; ``stats``: the float model's statistics
    (the smoothing's absmax). Returns the folded float params, the settings the records are built with
    (:func:`record_layer`) and the statistics, where a folded layer's record needs any (static scale,
    GPTQ's Hessian), re-collected on the folded float model (``batches``)."""
    targets = fold_targets(model, inner, settings)
    if not targets:
        return inner, dict(settings), stats
    new = inner
    for p, (lq, decl, producer) in targets.items():
        pk = get_kernel(new, p)
        k = int(pk.shape[0])
        heads = int(getattr(model.config, decl.heads))
        vnode = get_node(new, producer)
        vk, vb = vnode["kernel"], vnode.get("bias")
        if k % heads or vk.shape[1] != decl.value_blocks * k:
            raise VidqError(f"layer {p!r}: C_in {k} does not fit {heads} heads and V's Dense {producer!r} of "
                            f"{vk.shape[1]} outputs ({decl.value_blocks} blocks of {k} expected)")
        smooth = None
        if lq.smooth_alpha is not None:
            if p not in stats:
                raise VidqError(f"layer {p!r}: folding its smoothing needs its calibration statistics")
            smooth = smooth_scale(stats[p].absmax, weight_channel_absmax(pk), float(lq.smooth_alpha))
        rot = head_rotation(layer_key(config.seed, p), heads, k // heads) if lq.rotate else None
        cols = slice(decl.value_block * k, (decl.value_block + 1) * k)
        v_new, b_new, p_new = fold_weights(vk[:, cols], None if vb is None else vb[cols], pk, smooth, rot)
        # a Dense that is quantized next keeps the folded float32 weights (no bf16 rounding of the rotation
        # before its quantizer); a V producer that stays float keeps its dtype (what the saved folder holds)
        vdt = jnp.float32 if any(lq is not None for lq in settings.get(producer, ())) else vk.dtype
        new = set_kernel(new, producer, jnp.asarray(vk, vdt).at[:, cols].set(v_new.astype(vdt)))
        if vb is not None:
            new = set_kernel(new, producer, jnp.asarray(vb).at[cols].set(b_new.astype(vb.dtype)), leaf="bias")
        new = set_kernel(new, p, p_new)
    out_settings = {p: [record_layer(lq) for lq in lqs] for p, lqs in settings.items()}
    refresh = sorted({n for p in targets for lq in out_settings[p] if lq is not None for n in layer_statistics(lq, p)})
    paths = [p for p in targets if any(lq is not None and layer_statistics(lq, p) for lq in out_settings[p])]
    if paths:
        if not batches:
            raise VidqError(f"layers {paths[:3]}: their statistics must be taken on the folded model; pass calib_batches")
        stats = {**stats, **collect_stats(model, new, batches, paths=paths, statistics=refresh)}
    return new, out_settings, stats


__all__ = ["fold_params", "fold_targets", "fold_weights", "head_rotation", "record_layer", "rotate_heads"]
