"""QuantizedWeight: balanced identity, backends agree, exact int accumulators, pallas dispatch."""

from __future__ import annotations

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax.quant import (
    LayerQuant,
    QuantizedWeight,
    balanced_weight,
    channel_absmax,
    integer_accumulators,
    quantize_weight,
    random_signs,
    smooth_scale,
    static_act_params,
    weight_channel_absmax,
)
from pallas_kernels import rotate_quantize_ref, unpack_int4
from pallas_kernels.ops.rotate_quantize import input_ref, rotate_ref
from pallas_kernels.ops.w8a8_linear import producer_args
from vidq_jax.quant import backends

K, N = 72, 24  # 72 = 36·2 exercises the non-power-of-two Hadamard

# jitted entry points: one XLA compile per configuration instead of one per eager op (CI speed);
# this also checks that everything is jittable with the LayerQuant as static metadata.
_qw = jax.jit(quantize_weight, static_argnames=("layer", "name"))
_dense = jax.jit(lambda r, x, b: r.quantized_dense(x, b, jnp.float32))
# both backends in one compile
_sim_xla = jax.jit(lambda r, x, b: (r.with_backend("simulate").quantized_dense(x, b, jnp.float32),
                                    r.with_backend("xla").quantized_dense(x, b, jnp.float32)))
_balance = jax.jit(lambda r, x: r.balance(x))
_bw = jax.jit(balanced_weight)
_signs = jax.jit(random_signs, static_argnums=1)


def _data(k=K, n=N, m=(2, 5), seed=0, outlier=True):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    x = rng.standard_normal((*m, k)).astype(np.float32)
    if outlier:
        x[..., 3] *= 40.0  # an outlier channel, like DiT activations
    b = rng.standard_normal(n).astype(np.float32)
    return w, x, b


def _record(layer: LayerQuant, w, x, *, seed=0):
    smooth = smooth_scale(channel_absmax(x), weight_channel_absmax(w), layer.smooth_alpha) if layer.smooth_alpha is not None else None
    signs = _signs(jax.random.key(seed), w.shape[0]) if layer.rotate else None
    a_scale = a_zp = None
    if layer.a_static:
        probe = QuantizedWeight(qvalue=jnp.zeros((1, w.shape[0]), jnp.int8), scale=jnp.ones(()), smooth=smooth,
                                hadamard_signs=signs, in_features=w.shape[0])
        xb = np.asarray(_balance(probe, jnp.asarray(x.reshape(-1, w.shape[0]))))
        stat = np.abs(xb).max() if layer.a_symmetric else (xb.min(), xb.max())
        a_scale, a_zp = static_act_params(stat, layer)
    return _qw(w, layer, smooth=smooth, hadamard_signs=signs, act_scale=a_scale, act_zero_point=a_zp)


@pytest.mark.parametrize("k,alpha", [(72, None), (256, 0.5), (1152, 0.01)])
def test_balanced_unquantized_linear_is_identity(k, alpha):
    w, x, _ = _data(k=k, n=16, m=(6,))
    smooth = None if alpha is None else smooth_scale(channel_absmax(x), weight_channel_absmax(w), alpha)
    signs = _signs(jax.random.key(k), k)
    rec = QuantizedWeight(qvalue=jnp.zeros((16, k), jnp.int8), scale=jnp.ones(()), smooth=smooth,
                          hadamard_signs=signs, in_features=k)
    xb = _balance(rec, jnp.asarray(x))
    wb = _bw(w, smooth, signs)
    y = np.asarray(jnp.matmul(xb, wb.T, precision=jax.lax.Precision.HIGHEST))
    ref = x.astype(np.float64) @ w.astype(np.float64)
    tol = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64)).max()
    np.testing.assert_allclose(y, ref, atol=tol)


def test_balancing_reduces_incoherence():
    from vidq_jax.quant import incoherence

    w, x, _ = _data(k=1152, m=(32,))
    rec = QuantizedWeight(qvalue=jnp.zeros((1, 1152), jnp.int8), scale=jnp.ones(()),
                          hadamard_signs=_signs(jax.random.key(0), 1152), in_features=1152)
    before = float(jnp.mean(incoherence(x)))
    after = float(jnp.mean(incoherence(_balance(rec, jnp.asarray(x)))))
    assert after < before / 3, (before, after)


LAYERS = {
    "w8a8-asym-channel": LayerQuant(),
    "w4a8-packed-asym": LayerQuant(w_bits=4),
    "w4a8-unpacked-sym-static": LayerQuant(w_bits=4, w_symmetric=True, pack_int4=False, a_granularity="tensor",
                                           a_static=True),
    "w6a6-asym-act": LayerQuant(w_bits=6, a_bits=6, a_symmetric=False),
    "w8-tensor": LayerQuant(w_granularity="tensor", w_symmetric=True),
    "a-static-asym": LayerQuant(a_granularity="tensor", a_static=True, a_symmetric=False),
    "a-dynamic-tensor": LayerQuant(a_granularity="tensor"),
    "qdit-groups": LayerQuant(w_bits=4, w_granularity="group", w_group_size=24, a_granularity="group",
                              a_group_size=24, a_symmetric=False),
    "w-groups-a-token": LayerQuant(w_granularity="group", w_group_size=8),
    "a-groups-w-channel": LayerQuant(a_granularity="group", a_group_size=36),
    "viditq-balanced": LayerQuant(smooth_alpha=0.25, rotate=True),
    "weight-only": LayerQuant(w_bits=4, a_bits=None),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_simulate_and_xla_agree(name):
    layer = LAYERS[name]
    w, x, b = _data()
    rec = _record(layer, w, x)
    ys, yx = (np.asarray(y) for y in _sim_xla(rec, jnp.asarray(x), jnp.asarray(b)))
    assert ys.shape == (2, 5, N)
    bound = 1e-5 * (np.abs(x).reshape(-1, K) @ np.abs(np.asarray(rec.effective_kernel()))).max() + 1e-6
    np.testing.assert_allclose(yx.reshape(-1, N), ys.reshape(-1, N), rtol=0, atol=bound)
    # and the result approximates the float layer (loose, bit-dependent)
    ref = x @ w + b
    rel = np.abs(ys - ref).max() / np.abs(ref).max()
    assert rel < {8: 0.06, 6: 0.15, 4: 0.3}[layer.w_bits if layer.a_bits in (None, 8) else min(layer.w_bits, layer.a_bits)]


def test_effective_kernel_close_to_float():
    w, x, _ = _data()
    for layer in (LayerQuant(), LayerQuant(smooth_alpha=0.5, rotate=True)):
        rec = _record(layer, w, x)
        ek = np.asarray(rec.effective_kernel())
        assert ek.shape == w.shape
        assert np.abs(ek - w).max() < 0.02 * np.abs(w).max() * (8 if layer.rotate else 1)


@pytest.mark.parametrize("groups", [1, 3])
def test_integer_accumulators_exact(groups):
    rng = np.random.default_rng(groups)
    qx = rng.integers(-128, 128, (7, 48)).astype(np.int8)
    qw = rng.integers(-128, 128, (5, 48)).astype(np.int8)
    qx[0] = -128
    qw[0] = -128  # extreme products must not overflow
    acc = np.asarray(integer_accumulators(jnp.asarray(qx), jnp.asarray(qw), groups))
    assert acc.dtype == np.int32 and acc.shape == (groups, 7, 5)
    g = 48 // groups
    for i in range(groups):
        ref = qx[:, i * g:(i + 1) * g].astype(np.int64) @ qw[:, i * g:(i + 1) * g].astype(np.int64).T
        np.testing.assert_array_equal(acc[i], ref)


def test_xla_uses_int32_dot_general():
    w, x, b = _data()
    rec = _record(LayerQuant(backend="xla"), w, x)
    jaxpr = str(jax.make_jaxpr(lambda r, v: r.quantized_dense(v, None, jnp.float32))(rec, jnp.asarray(x)))
    assert "dot_general" in jaxpr and "preferred_element_type=int32" in jaxpr


def test_jit_pytree_dtypes_and_leading_dims():
    w, x, b = _data()
    rec = _record(LayerQuant(w_bits=4, smooth_alpha=0.5, rotate=True), w, x)
    leaves = jax.tree_util.tree_leaves(rec)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    assert rec.qvalue.dtype == jnp.uint8 and rec.qvalue.shape == (N, K // 2)
    assert rec.scale.shape == (N,) and rec.zero_point.dtype == jnp.int32
    assert rec.shape == (K, N)
    flat, tree = jax.tree_util.tree_flatten(rec)
    again = jax.tree_util.tree_unflatten(tree, flat)
    assert again.layer == rec.layer and again.in_features == K
    f = jax.jit(lambda r, v, bb: r.quantized_dense(v, bb, jnp.bfloat16))
    y = f(rec, jnp.asarray(x, jnp.bfloat16), jnp.asarray(b))
    assert y.dtype == jnp.bfloat16 and y.shape == (2, 5, N)
    y32 = rec.quantized_dense(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), jnp.asarray(b), jnp.float32)
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y32), rtol=2e-2, atol=2e-2)
    # a bf16 cast of every leaf (careless tree_map) still computes the same integers
    cast = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), rec)
    np.testing.assert_array_equal(np.asarray(cast.int_weight()), np.asarray(rec.int_weight()))


def test_quantize_weight_errors():
    w = np.ones((72, 8), np.float32)
    with pytest.raises(ValueError, match="does not divide C_in=72.*blocks_1/mlp/fc1"):
        quantize_weight(w, LayerQuant(w_granularity="group", w_group_size=64), name="blocks_1/mlp/fc1")
    with pytest.raises(ValueError, match="rotation impossible for C_in=18"):
        quantize_weight(np.ones((18, 4), np.float32), LayerQuant(rotate=True), name="x")
    with pytest.raises(ValueError, match="smooth must have shape"):
        quantize_weight(w, LayerQuant(), smooth=jnp.ones((8,)))
    with pytest.raises(ValueError, match="act_scale"):
        quantize_weight(w, LayerQuant(a_granularity="tensor", a_static=True))
    with pytest.raises(ValueError, match="even C_in"):
        quantize_weight(np.ones((5, 4), np.float32), LayerQuant(w_bits=4))
    rec = quantize_weight(w, LayerQuant())
    with pytest.raises(ValueError, match="expects"):
        rec.quantized_dense(jnp.ones((3, 71)), None)


def test_zero_weight_and_zero_input_are_finite():
    w = np.zeros((72, 8), np.float32)
    w[:, 1] = 0.3  # a constant output channel
    x = np.zeros((4, 72), np.float32)
    x[1] = 1.0
    for layer in (LayerQuant(), LayerQuant(w_bits=4, smooth_alpha=0.5, rotate=True), LayerQuant(a_symmetric=False)):
        smooth = smooth_scale(channel_absmax(x), weight_channel_absmax(w), 0.5) if layer.smooth_alpha else None
        signs = _signs(jax.random.key(0), 72) if layer.rotate else None
        rec = _qw(w, layer, smooth=smooth, hadamard_signs=signs)
        for y in _sim_xla(rec, jnp.asarray(x), None):
            y = np.asarray(y)
            assert np.all(np.isfinite(y))
            np.testing.assert_allclose(y, x @ w, atol=0.1 * np.abs(x @ w).max())


# ------------------------------------------------------------------------------- pallas dispatch


@pytest.fixture
def fake_kernels(monkeypatch):
    """A stand-in ``pallas_kernels`` module with the agreed signature (exact int semantics)."""
    calls = []

    def w8a8_linear(x, qweight, w_scale, bias=None, *, out_dtype=jnp.bfloat16, backend="auto", rotation=None,
                    w_zero_point=None, activation=None, splits=1, residual=None, gate=None, smooth=None, prenorm=None):
        calls.append(("w8a8", x.dtype, qweight.dtype))
        assert x.dtype == jnp.bfloat16 and qweight.dtype == jnp.int8 and x.ndim == 2
        if smooth is not None or prenorm is not None:  # the producer: LayerNorm + modulate, smoothing
            x = input_ref(x, *producer_args(x.shape[1], smooth, prenorm), bf16_input=True).astype(jnp.bfloat16)
        xf = x.astype(jnp.float32) if rotation is None else rotate_ref(x, *rotation)
        s = jnp.max(jnp.abs(xf), axis=-1, keepdims=True) / 127
        s = jnp.where(s > 0, s, 1.0)
        q = jnp.clip(jnp.round(xf / s), -127, 127).astype(jnp.int8)
        acc = jax.lax.dot_general(q, qweight, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
        if w_zero_point is not None:  # the zero-point term, exact in int32 (the epilogue's contract)
            acc = acc + jnp.sum(q.astype(jnp.int32), -1, keepdims=True) * w_zero_point[None, :]
        y = acc.astype(jnp.float32) * s * w_scale[None, :]
        if bias is not None:
            y = y + bias
        y = y if activation is None else jax.nn.gelu(y, approximate=True)
        if gate is not None:
            y = y * jnp.repeat(gate, y.shape[0] // gate.shape[0], axis=0)
        y = (y if residual is None else residual + y).astype(out_dtype)
        return tuple(jnp.split(y, splits, axis=-1)) if splits > 1 else y

    def w4a8_linear(x, qweight, w_scale, bias=None, *, out_dtype=jnp.bfloat16, backend="auto", rotation=None,
                    **kw):
        calls.append(("w4a8", x.dtype, qweight.dtype))
        assert qweight.dtype == jnp.uint8
        return w8a8_linear(x, unpack_int4(qweight), w_scale, bias, out_dtype=out_dtype, rotation=rotation, **kw)

    mod = types.ModuleType("pallas_kernels")
    mod.w8a8_linear, mod.w4a8_linear = w8a8_linear, w4a8_linear
    mod.rotate_quantize = rotate_quantize_ref
    mod.is_hopper = lambda: False
    monkeypatch.setattr(backends, "kernels", mod)
    yield calls


@pytest.mark.parametrize("layer", [LayerQuant(w_symmetric=True), LayerQuant(), LayerQuant(w_bits=4, rotate=True)])
def test_pallas_backend_matches_xla(fake_kernels, layer):
    w, x, b = _data()
    rec = _record(layer, w, x)
    xb = jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)  # the kernel sees bf16 activations
    yp = np.asarray(_dense(rec.with_backend("pallas"), xb, jnp.asarray(b)))
    yx = np.asarray(_dense(rec.with_backend("xla"), xb, jnp.asarray(b)))
    assert fake_kernels and fake_kernels[0][0] == ("w4a8" if layer.packed else "w8a8")
    if not layer.rotate:  # rotation output is rounded to bf16 before the kernel: compare loosely
        np.testing.assert_allclose(yp, yx, rtol=1e-5, atol=1e-4)
    else:
        np.testing.assert_allclose(yp, yx, rtol=0, atol=0.02 * np.abs(yx).max())


def test_pallas_falls_back_to_xla(fake_kernels, caplog):
    w, x, b = _data()
    rec = _record(LayerQuant(a_symmetric=False, backend="pallas"), w, x)
    backends._LOGGED.clear()
    with caplog.at_level("WARNING"):
        yp = np.asarray(_dense(rec, jnp.asarray(x), jnp.asarray(b)))
        _dense(rec, jnp.asarray(x)[:1], jnp.asarray(b))  # a second trace must not log again
    yx = np.asarray(_dense(rec.with_backend("xla"), jnp.asarray(x), jnp.asarray(b)))
    np.testing.assert_array_equal(yp, yx)
    assert not fake_kernels
    assert sum("falls back to xla" in r.message for r in caplog.records) == 1


def test_pallas_missing_package_falls_back(monkeypatch):
    monkeypatch.setattr(backends, "kernels", None)  # the guarded import of the kernel package failed
    w, x, b = _data()
    rec = _record(LayerQuant(w_symmetric=True, backend="pallas"), w, x)
    assert rec.backend == "pallas" and LayerQuant().backend == "auto"
    assert backends.resolve("auto") == "xla"
    yp = _dense(rec, jnp.asarray(x), None)
    yx = _dense(rec.with_backend("xla"), jnp.asarray(x), None)
    np.testing.assert_array_equal(np.asarray(yp), np.asarray(yx))


@pytest.mark.parametrize(
    "layer",
    [LayerQuant(), LayerQuant(w_bits=4, w_symmetric=True, w_granularity="group", w_group_size=24)],
    ids=["w8-asym", "w4-sym-group"],
)
def test_real_kernel_package_contract(layer):
    """The actual ``pallas_kernels`` entry points (XLA fallback on CPU) accept our record's arrays."""
    pk = pytest.importorskip("pallas_kernels")
    if not (hasattr(pk, "w8a8_linear") and hasattr(pk, "w4a8_linear")):
        pytest.skip("pallas_kernels linear ops not available")
    w, x, b = _data()
    rec = _record(layer, w, x)
    xb = jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)
    yp = np.asarray(_dense(rec.with_backend("pallas"), xb, jnp.asarray(b)))
    yx = np.asarray(_dense(rec.with_backend("xla"), xb, jnp.asarray(b)))
    np.testing.assert_allclose(yp, yx, rtol=1e-4, atol=1e-3 * np.abs(yx).max())


def test_producer_fusion_helpers():
    w, x, _ = _data()
    rec = _record(LayerQuant(smooth_alpha=0.5, rotate=True), w, x)
    x2 = jnp.asarray(x.reshape(-1, K))
    fused = rec.rotation_hook()(x2 * rec.smooth_multiplier())
    np.testing.assert_allclose(np.asarray(fused), np.asarray(_balance(rec, x2)), rtol=1e-5, atol=1e-5)
    plain = _record(LayerQuant(), w, x)
    assert plain.smooth_multiplier() is None and plain.rotation_hook() is None


@pytest.mark.parametrize("backend", ["simulate", "xla", "pallas"])
@pytest.mark.parametrize("w_symmetric", [True, False])
def test_dense_activation_matches_unfused(backend, w_symmetric):
    """``quantized_dense(..., activation="gelu_tanh")`` == gelu(quantized_dense(...)) on every
    backend (pallas fuses it into the epilogue for symmetric weights, applies it after the
    zero-point term otherwise); the Flax Dense routes its ``activation`` the same way."""
    from models.layers import Dense

    w, x, b = _data(k=128, n=64, seed=5)
    layer = LayerQuant(w_bits=8, w_symmetric=w_symmetric, a_bits=8, backend=backend)
    rec = _record(layer, w, x)
    f = jax.jit(lambda r, v, bb: (r.quantized_dense(v, bb, jnp.float32, activation="gelu_tanh"),
                                  jax.nn.gelu(r.quantized_dense(v, bb, jnp.float32), approximate=True)))
    fused, unfused = f(rec, jnp.asarray(x), jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(fused), np.asarray(unfused), rtol=1e-4, atol=1e-4)
    dense = Dense(64, activation="gelu_tanh", dtype=jnp.float32)
    via_module = dense.apply({"params": {"kernel": rec, "bias": jnp.asarray(b)}}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(via_module), np.asarray(fused), rtol=1e-6, atol=1e-6)
    float_out = dense.apply({"params": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}, jnp.asarray(x))
    ref = jax.nn.gelu(jnp.asarray(x) @ jnp.asarray(w) + jnp.asarray(b), approximate=True)
    np.testing.assert_allclose(np.asarray(float_out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_auto_backend_is_pallas_on_hopper_only(fake_kernels):
    """``backend="auto"`` (the default) runs the kernels on a Hopper GPU and the int8 XLA path
    elsewhere; it is resolved when the layer runs, so one checkpoint serves both machines."""
    assert LayerQuant().backend == "auto"
    w, x, b = _data()
    rec = _record(LayerQuant(w_symmetric=True), w, x)
    xb = jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)
    ref = np.asarray(_dense(rec.with_backend("xla"), xb, jnp.asarray(b)))
    backends.kernels.is_hopper = lambda: False
    assert rec.backend == "xla"
    np.testing.assert_allclose(np.asarray(rec.quantized_dense(xb, jnp.asarray(b), jnp.float32)), ref, rtol=1e-6, atol=1e-6)
    assert not fake_kernels
    backends.kernels.is_hopper = lambda: True
    assert rec.backend == "pallas"
    np.testing.assert_allclose(np.asarray(rec.quantized_dense(xb, jnp.asarray(b), jnp.float32)), ref,
                               rtol=1e-5, atol=1e-4)  # (not through a cached jit: auto resolves at trace time)
    assert fake_kernels and fake_kernels[0][0] == "w8a8"


@pytest.mark.parametrize("w_symmetric", [True, False])
def test_splits_are_the_column_blocks_of_the_whole_output(w_symmetric):
    """``splits=3`` on the pallas backend (kernels per block for symmetric weights, one output split
    after the zero-point term otherwise) == the blocks of the unsplit output."""
    w, x, b = _data(n=96)
    rec = _record(LayerQuant(w_symmetric=w_symmetric, backend="pallas"), w, x)
    full = rec.quantized_dense(jnp.asarray(x), jnp.asarray(b), jnp.float32)
    parts = rec.quantized_dense(jnp.asarray(x), jnp.asarray(b), jnp.float32, splits=3)
    assert isinstance(parts, tuple) and [p.shape for p in parts] == [full.shape[:-1] + (32,)] * 3
    np.testing.assert_allclose(np.concatenate(parts, -1), np.asarray(full), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["simulate", "xla", "pallas"])
def test_residual_gate_equal_the_expression_after_the_layer(fake_kernels, backend):
    """``Dense(...)(x, residual=r, gate=g)`` == ``r + g * Dense(...)(x)`` for the float kernel and a
    quantized record on every backend (pallas: fused into the epilogue for a ``(B, 1, N)`` gate; a
    per-token gate is applied after the kernel); the fake kernels see the ``(G, N)`` gate form."""
    from models.layers import Dense

    w, x, b = _data(k=72, n=24, m=(2, 5), seed=9)
    rng = np.random.default_rng(3)
    res = jnp.asarray(rng.standard_normal((2, 5, 24)), jnp.float32)
    rec = _record(LayerQuant(backend=backend), w, x)  # asymmetric weights: zero point in the epilogue
    dense = Dense(24, dtype=jnp.float32)
    for gate_shape in ((2, 1, 24), (2, 5, 24)):
        gate = jnp.asarray(rng.standard_normal(gate_shape), jnp.float32)
        for kernel in (jnp.asarray(w), rec):
            params = {"params": {"kernel": kernel, "bias": jnp.asarray(b)}}
            f = jax.jit(lambda p, v, r, g: (dense.apply(p, v, residual=r, gate=g), r + g * dense.apply(p, v)))
            fused, unfused = f(params, jnp.asarray(x), res, gate)
            np.testing.assert_allclose(np.asarray(fused), np.asarray(unfused), rtol=1e-5, atol=1e-5)
    assert backend != "pallas" or {c[0] for c in fake_kernels} == {"w8a8"}


@pytest.mark.parametrize("rotate", [False, True])
def test_fp8_record_backends_agree(rotate):
    """``LayerQuant(fp8=True)``: e4m3 codes per channel; simulate (dequantized float32 matmul) and xla
    (XLA's e4m3 dot) agree to float rounding, the pallas path (the kernel package's ``fp8_linear``, its
    XLA fallback on CPU: bf16 input) to bf16 input rounding; all near the float layer."""
    w, x, b = _data(seed=11)
    rec = _record(LayerQuant(w_symmetric=True, fp8=True, rotate=rotate), w, x)
    assert rec.qvalue.dtype == jnp.float8_e4m3fn and rec.zero_point is None and rec.scale.shape == (N,)
    ys, yx = (np.asarray(y) for y in _sim_xla(rec, jnp.asarray(x), jnp.asarray(b)))
    np.testing.assert_allclose(yx, ys, rtol=1e-5, atol=1e-5 * np.abs(ys).max())
    yp = np.asarray(_dense(rec.with_backend("pallas"), jnp.asarray(x), jnp.asarray(b)))
    yf = x @ w + b
    for y, tol in ((ys, 0.06), (yp, 0.06)):
        assert np.linalg.norm(y - yf) / np.linalg.norm(yf) < tol
    with pytest.raises(ValueError, match="fp8=True"):
        LayerQuant(fp8=True)  # asymmetric weights: e4m3 has no zero point


# ------------------------------------------------------------------------------- prenorm (LayerNorm + modulate)


@pytest.fixture(scope="module")
def viditq_pixart():
    """A one-block PixArt quantized with viditq-w8a8 (qkv and fc1 smoothed and rotated)."""
    from tests.fixture_models import random_pixart
    from vidq_jax.quant import QuantConfig, quantize_params

    model, params, batch = random_pixart()
    return model, quantize_params(params, [batch], model=model, config=QuantConfig.preset("viditq-w8a8")), batch


def _dense_computes_prenorm(monkeypatch):
    """Records refuse ``prenorm=`` from now on: the Dense computes ``modulate(layer_norm(x))`` itself."""
    import models.layers as layers

    accepts = layers._record_accepts
    monkeypatch.setattr(layers, "_record_accepts", lambda t, kw: kw != "prenorm" and accepts(t, kw))


def _spy_linear(monkeypatch) -> list[set]:
    """The keyword names of every call of the kernel package's ``w8a8_linear``."""
    calls, linear = [], backends.kernels.w8a8_linear
    monkeypatch.setattr(backends.kernels, "w8a8_linear", lambda *a, **kw: calls.append(set(kw)) or linear(*a, **kw))
    return calls


@pytest.mark.parametrize("backend", ["simulate", "xla", "pallas"])
def test_prenorm_wiring_matches_the_dense_computing_the_input(viditq_pixart, backend, monkeypatch):
    """viditq-w8a8 records given the pre-LayerNorm stream plus ``prenorm=`` (qkv, fc1) compute what they
    computed when the Dense handed them ``modulate(layer_norm(x))``: bit for bit off the kernels; on
    ``pallas`` (the kernel package's XLA path on CPU) the linears get ``prenorm`` and ``smooth`` and
    their producer rounds the normed input to bf16."""
    from vidq_jax.quant import set_backend

    model, qparams, batch = viditq_pixart
    qparams = set_backend(qparams, backend)
    calls = _spy_linear(monkeypatch)
    y = np.asarray(jax.jit(lambda p, b: model.apply({"params": p}, **b))(qparams, batch))
    _dense_computes_prenorm(monkeypatch)
    y_dense = np.asarray(jax.jit(lambda p, b: model.apply({"params": p}, **b))(qparams, batch))
    if backend != "pallas":
        np.testing.assert_array_equal(y, y_dense)
        return
    fused = [kw for kw in calls if "prenorm" in kw]
    assert len(fused) == 2 and all({"smooth", "rotation"} <= kw for kw in fused), calls  # qkv, fc1
    assert len(calls) > 4  # proj, cross attention, fc2: no prenorm
    np.testing.assert_allclose(y, y_dense, rtol=0, atol=0.02 * np.abs(y_dense).max())


def test_per_frame_prenorm_on_every_backend(monkeypatch):
    """Per-frame adaLN parameters ``(B, T, 1, K)`` on frame-major tokens ``(B, T·S, K)`` (STDiT3's
    x_mask): the record equals itself on ``modulate(layer_norm(x))`` computed per frame by hand — exactly
    off the kernels, to bf16 rounding on ``pallas`` (whose linears get the ``(B·T, K)`` rows)."""
    from models.layers import Dense, layer_norm, modulate

    b, t, s = 2, 3, 4
    w, x, bias = _data(m=(b, t * s))
    rng = np.random.default_rng(1)
    shift, scale = (jnp.asarray(rng.standard_normal((b, t, 1, K)).astype(np.float32)) for _ in range(2))
    by_hand = lambda x: modulate(layer_norm(x.reshape(b, t, s, K)), shift, scale).reshape(x.shape)  # noqa: E731
    rec = _record(LayerQuant(smooth_alpha=0.5, rotate=True), w, np.asarray(by_hand(jnp.asarray(x))))
    dense = Dense(N)
    params = {"kernel": rec, "bias": jnp.asarray(bias)}
    calls = _spy_linear(monkeypatch)
    for backend in ("simulate", "xla", "pallas"):
        p = dict(params, kernel=rec.with_backend(backend))
        y = np.asarray(jax.jit(lambda p, x: dense.apply({"params": p}, x, prenorm=(shift, scale)))(p, jnp.asarray(x)))
        y_h = np.asarray(jax.jit(lambda p, x: dense.apply({"params": p}, by_hand(x)))(p, jnp.asarray(x)))
        if backend == "pallas":
            assert [("prenorm" in kw) for kw in calls] == [True, False]
            np.testing.assert_allclose(y, y_h, rtol=0, atol=0.02 * np.abs(y_h).max())
        else:
            np.testing.assert_array_equal(y, y_h)
