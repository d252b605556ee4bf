"""int8 GEMM: every backend must equal lax.dot_general(int8, int8, int32) exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pallas_kernels as pk
from pallas_kernels.ops.int8_matmul import mosaic
from pallas_kernels import _compat
from pallas_kernels._compat import plgpu
from pallas_kernels.testing import assert_bf16_close, rand_int, rand_scale, rand_x, requires_gpu
from tests.kernels.base import backend_params


def _ref(xq, wq):
    return jax.lax.dot_general(xq, wq, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)


@pytest.mark.parametrize("backend", backend_params("int8_matmul"))
@pytest.mark.parametrize("m", [1, 7, 130, 240])
def test_int8_matmul_exact(backend, m):
    k, n = 256, 128
    xq = rand_int(m, (m, k), -127, 127)
    wq = rand_int(1000 + m, (n, k), -127, 127)
    y = pk.int8_matmul(xq, wq, backend=backend)
    assert y.dtype == jnp.int32 and y.shape == (m, n)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(_ref(xq, wq)))


def test_extreme_values_do_not_overflow():
    k = 1152  # 1152 * 127 * 127 fits int32 easily; check sign handling at the extremes
    xq = jnp.full((3, k), -127, jnp.int8).at[1].set(127)
    wq = jnp.full((64, k), 127, jnp.int8).at[::2].set(-127)
    y = pk.int8_matmul(xq, wq, backend="triton")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(_ref(xq, wq)))


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 70))
def test_triton_scaled_epilogue_matches_reference(seed, m):
    k, n = 128, 64
    xq = rand_int(seed, (m, k), -127, 127)
    wq = rand_int(seed + 1, (n, k), -127, 127)
    xs = rand_scale(seed + 2, (m, 1))
    ws = rand_scale(seed + 3, (n,))
    bias = jax.random.normal(jax.random.key(seed + 4), (n,))
    y = pk.int8_gemm(xq, wq, xs, ws, bias, out_dtype=jnp.float32, backend="triton")
    ref = pk.scaled_epilogue_ref(_ref(xq, wq), xs, ws, bias, jnp.float32)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_unsupported_shape_falls_back_to_xla():
    xq = rand_int(5, (5, 40), -127, 127)  # K=40: no power-of-two tile >= 16 divides it
    wq = rand_int(6, (24, 40), -127, 127)
    for backend in ("triton", "mosaic", "auto"):
        y = pk.int8_matmul(xq, wq, backend=backend)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(_ref(xq, wq)))


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        pk.int8_matmul(jnp.zeros((4, 8), jnp.int8), jnp.zeros((4, 16), jnp.int8))
    with pytest.raises(TypeError):
        pk.int8_matmul(jnp.zeros((4, 8), jnp.float32), jnp.zeros((4, 8), jnp.int8))
    with pytest.raises(ValueError):
        pk.int8_matmul(jnp.zeros((4, 8), jnp.int8), jnp.zeros((4, 8), jnp.int8), backend="cuda")


def test_mosaic_config_fit():
    cfg = mosaic.MosaicGemmConfig(tm=128, tn=192, tk=128, stages=3, ws=True, chain=True)
    assert mosaic.supports(1152, 3456, cfg)
    fitted = mosaic.fit_config(cfg, 1152, 2304 + 64)
    assert 2368 % fitted.tn == 0 and not fitted.chain


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("m", [1, 7, 130, 240, 4096])
@pytest.mark.parametrize("k,n", [(1152, 3456), (4608, 1152), (1152, 1152)])
def test_mosaic_int8_matmul_gpu_exact(m, k, n):
    xq = rand_int(m, (m, k), -127, 127)
    wq = rand_int(m + 1, (n, k), -127, 127)
    y = pk.int8_matmul(xq, wq, backend="mosaic")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(_ref(xq, wq)))


def test_mosaic_configs_are_fitted_to_shared_memory():
    """The stored bf16-output config overflows Hopper's 227 KiB with a float32 output tile (the
    Mosaic compiler reported 278576 bytes); the fit drops stages, then narrows N tiles."""
    from pallas_kernels.ops.int8_matmul import mosaic

    cfg = mosaic.MosaicGemmConfig(tm=128, tn=128, tk=128, stages=3, ws=True, delay_release=0, chain=True)
    assert mosaic.smem_bytes(cfg, 4) == 278576 - 48  # the compiler's count minus its barriers
    assert mosaic.fit_smem(cfg, 1152, 2) == cfg  # bf16 out: unchanged
    fitted = mosaic.fit_smem(cfg, 1152, 4)
    assert fitted.stages == 2 and fitted.tn == 128
    assert mosaic.smem_bytes(fitted, 4) + 1024 <= mosaic.SMEM_LIMIT
    huge = mosaic.MosaicGemmConfig(tm=256, tn=256, tk=128, stages=2, ws=True)
    assert mosaic.fit_smem(huge, 96, 4) is None  # N = 96 cannot take a narrower tile: no fit


def test_stored_gemm_tilings_are_valid_for_their_shapes():
    """Every GPU row of configs.json (the sweeps store them with ``bench_linear --sweep --store``) takes its own
    shape: K and N divisible, shared memory fitted for bf16 and float32 outputs, and fused qkv's three outputs
    (N = 3C) written by one kernel at N = 3456."""
    import json

    from pallas_kernels.ops.int8_matmul import CONFIG_FILE, mosaic

    table = json.loads(CONFIG_FILE.read_text())
    checked = 0
    for gpu, kernels in table.items():
        for key, d in kernels.get("mosaic_gemm_scaled", {}).items():
            if key == "default":
                continue
            _, k, n = (int(v) for v in key.split(","))
            cfg = mosaic.MosaicGemmConfig.from_dict(d)
            assert mosaic.supports(k, n, cfg), (gpu, key, cfg)
            assert mosaic.fit_smem(cfg, n, 2) == cfg, (gpu, key, "overflows shared memory with a bf16 output")
            assert mosaic.fit_smem(cfg, n, 4) is not None, (gpu, key)
            if n == 3456:
                assert mosaic.supports(k, n, cfg, out_splits=3), (gpu, key)
            checked += 1
    assert checked >= 8


def test_config_store_and_default_rows(tmp_path, monkeypatch):
    """``_config.store`` merges rows atomically (others kept); ``gpu_rows=False`` and the debug option
    ``gemm_tiles=default`` read the ``"default"`` table as on an untuned GPU."""
    from pallas_kernels import _config
    from pallas_kernels._debug import DEBUG_ENV
    from pallas_kernels.ops.int8_matmul import mosaic_config

    f = tmp_path / "configs.json"
    _config.store(f, "default", "k", {"default": {"tm": 1}})
    _config.store(f, _config.gpu_name(), "k", {"8192,1152,1152": {"tm": 64}})
    _config.store(f, _config.gpu_name(), "k", {"8192,4608,1152": {"tm": 128}})
    assert _config.lookup(f, "k", 8000, 1152, 1152, {}) == {"tm": 64}
    assert _config.lookup(f, "k", 8000, 4608, 1152, {}) == {"tm": 128}
    assert _config.lookup(f, "k", 8000, 1152, 1152, {}, gpu_rows=False) == {"tm": 1}
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(_config, "gpu_name", lambda: "NVIDIA H100 80GB HBM3")
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    tuned = mosaic_config(8192, 4608, 1152, "mosaic_gemm_scaled")
    monkeypatch.setenv(DEBUG_ENV, "gemm_tiles=default")
    with pytest.warns(RuntimeWarning, match="gemm_tiles"):
        untuned = mosaic_config(8192, 4608, 1152, "mosaic_gemm_scaled")
    assert (tuned.tm, tuned.tn, tuned.stages) == (64, 192, 4)  # the H100 sweep's winner (session 10)
    assert (untuned.tm, untuned.tn) == (128, 128)


# ------------------------------------------------------------------ the fused epilogue's extras


def _epilogue_case(seed, m=64, k=128, n=64, groups=2):
    xq = rand_int(seed, (m, k), -127, 127)
    wq = rand_int(seed + 1, (n, k), -128, 127)  # asymmetric codes use the full int8 range
    zw = rand_int(seed + 2, (n,), -127, 127).astype(jnp.int32)
    rs = jnp.sum(xq.astype(jnp.int32), axis=-1, keepdims=True)
    extras = dict(
        residual=jax.random.normal(jax.random.key(seed + 3), (m, n)).astype(jnp.bfloat16),
        gate=jax.random.normal(jax.random.key(seed + 4), (groups, n)),
    )
    return xq, wq, zw, rs, extras


@pytest.mark.parametrize("backend", backend_params("int8_gemm_epilogue", ("triton", "mosaic")))
def test_zero_point_term_is_exact(backend):
    """``acc + x_row_sum · w_zero`` in int32: with unit scales and K = 128 every value is an integer
    below 2^24, so the float32 output shows the int32 result exactly."""
    xq, wq, zw, rs, _ = _epilogue_case(11)
    m, n = xq.shape[0], wq.shape[0]
    y = pk.int8_gemm(xq, wq, jnp.ones((m, 1)), jnp.ones((n,)), out_dtype=jnp.float32, backend=backend,
                     w_zero=zw, x_row_sum=rs)
    exact = pk.zero_point_ref(_ref(xq, wq), zw, rs)
    assert int(jnp.max(jnp.abs(exact))) < 2**24
    np.testing.assert_array_equal(np.asarray(y), np.asarray(exact, np.float32))
    # = the GEMM with the dequantized weight (q + z)
    np.testing.assert_array_equal(np.asarray(exact), np.asarray(_ref(xq.astype(jnp.int32), wq.astype(jnp.int32) + zw[:, None])))


def test_gate_spans_that_do_not_hold_whole_tiles_are_applied_after_the_kernel():
    """5 rows per gate row: no kernel row tile fits, the dispatch applies the gate after the GEMM (the
    rank-1 term stays in the kernel)."""
    xq, wq, zw, rs, extras = _epilogue_case(31, m=15, groups=3)
    xs, ws = rand_scale(32, (15, 1)), rand_scale(33, (wq.shape[0],))
    extras["rank1"] = (jax.random.normal(jax.random.key(34), (15,)), jax.random.normal(jax.random.key(35), (64,)))
    y = pk.int8_gemm(xq, wq, xs, ws, None, out_dtype=jnp.float32, backend="triton", w_zero=zw, x_row_sum=rs,
                     **extras)
    ref = pk.scaled_epilogue_ref(_ref(xq, wq), xs, ws, None, jnp.float32, w_zero=zw, x_row_sum=rs, **extras)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="go together"):
        pk.int8_gemm(xq, wq, xs, ws, w_zero=zw)
    with pytest.raises(ValueError, match="G dividing"):
        pk.int8_gemm(xq, wq, xs, ws, gate=extras["gate"][:2])


@pytest.mark.skipif(plgpu is None, reason="Mosaic GPU not importable in this JAX")
def test_mosaic_epilogue_lowers_for_cuda():
    """The Mosaic GPU kernels with every epilogue operand (rank-1 term included) lower to a CUDA custom call on this host
    (no GPU needed: catches layout/lowering errors before the GPU run)."""
    S = jax.ShapeDtypeStruct
    m, k, n = 512, 256, 256
    cfg = mosaic.MosaicGemmConfig(tm=128, tn=128, tk=128, stages=2, ws=True, delay_release=0, chain=True)

    def f(xq, wq, xs, ws, b, zw, rs, res, gate, u, beta):
        return mosaic.mosaic_int8_gemm(xq, wq, xs, ws, b, cfg=cfg, out_dtype=jnp.bfloat16, activation="gelu_tanh",
                                       w_zero=zw, x_row_sum=rs, residual=res, gate=gate, rank1=(u, beta))

    args = (S((m, k), jnp.int8), S((n, k), jnp.int8), S((m, 1), jnp.float32), S((n,), jnp.float32),
            S((n,), jnp.float32), S((n,), jnp.int32), S((m, 1), jnp.int32), S((m, n), jnp.bfloat16),
            S((2, n), jnp.float32), S((m, 1), jnp.float32), S((n,), jnp.float32))
    orig = mosaic._num_sms
    mosaic._num_sms = lambda: 132
    try:
        text = jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    finally:
        mosaic._num_sms = orig
    assert "mosaic_gpu" in text


def test_rank1_term_joins_the_epilogue_in_order():
    """``rank1=(u, beta)``: ``u[m] · beta[n]`` after zero point, scales and bias, before the activation, then
    the gated residual (Triton interpret vs the reference; the reference vs the formula in numpy)."""
    m, groups = 64, 2
    xq, wq, zw, rs, extras = _epilogue_case(41, m=m, groups=groups)
    n = wq.shape[0]
    xs, ws = rand_scale(42, (m, 1)) * 30, rand_scale(43, (n,)) * 30
    bias = jax.random.normal(jax.random.key(44), (n,))
    u = jax.random.normal(jax.random.key(45), (m,)) * 3
    beta = jax.random.normal(jax.random.key(46), (n,))
    kw = dict(activation="gelu_tanh", w_zero=zw, x_row_sum=rs, rank1=(u, beta), **extras)
    y = pk.int8_gemm(xq, wq, xs, ws, bias, out_dtype=jnp.float32, backend="triton", **kw)
    ref = pk.scaled_epilogue_ref(_ref(xq, wq), xs, ws, bias, jnp.float32, **kw)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=2e-5, atol=2e-5)
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    lin = (f64(_ref(xq, wq)) + f64(rs) * f64(zw)[None]) * f64(xs) * f64(ws)[None] + f64(bias)[None]
    lin = lin + f64(u)[:, None] * f64(beta)[None]
    gelu = np.asarray(jax.nn.gelu(jnp.asarray(lin, jnp.float32), approximate=True), np.float64)
    want = f64(extras["residual"]) + np.repeat(f64(extras["gate"]), m // groups, axis=0) * gelu
    np.testing.assert_allclose(np.asarray(ref), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with pytest.raises(ValueError, match="rank1 beta"):
        pk.int8_gemm(xq, wq, xs, ws, rank1=(u, beta[:-1]))
    with pytest.raises(ValueError, match="needs the scales"):
        pk.int8_gemm(xq, wq, rank1=(u, beta))


# ------------------------------------------------------- out_splits: one GEMM writing q, k, v as three arrays

_INTERPRET = pytest.mark.skipif(plgpu is None or _compat.interpret_params() is None,
                                reason="no Mosaic GPU interpreter in this JAX")


def _assert_no_races():
    if jax.__version_info__ < (0, 11):  # JAX 0.11.2's detector flags every reuse of a TMA ring slot
        assert not _compat.races_found()


def _split_case(seed, m=40, k=128, c=64, splits=3):
    xq, wq, zw, rs, _ = _epilogue_case(seed, m=m, k=k, n=splits * c)
    n = splits * c
    xs, ws = rand_scale(seed + 5, (m, 1)) * 30, rand_scale(seed + 6, (n,)) * 30
    bias = jax.random.normal(jax.random.key(seed + 7), (n,))
    rank1 = (jax.random.normal(jax.random.key(seed + 8), (m,)), jax.random.normal(jax.random.key(seed + 9), (n,)))
    return xq, wq, xs, ws, bias, dict(activation="gelu_tanh", w_zero=zw, x_row_sum=rs, rank1=rank1)


def _blocks_ref(xq, wq, xs, ws, bias, splits, out_dtype=jnp.float32, **kw):
    """The reference of ``out_splits``: one GEMM (int8 or e4m3) + epilogue, then its column blocks."""
    acc = pk.ops.int8_matmul.gemm_ref(xq, wq)
    return pk.column_blocks(acc if xs is None else pk.scaled_epilogue_ref(acc, xs, ws, bias, out_dtype, **kw), splits)


def test_split_tile_maps_every_column_tile_to_one_output_tile():
    """Tile ``j`` of the whole N goes to output ``j // (C/tn)`` at local tile ``j % (C/tn)``: a bijection onto
    (output, local tile), in column order."""
    for splits, per in ((3, 9), (3, 6), (2, 1), (3, 4)):
        got = [mosaic.split_tile(j, per) for j in range(splits * per)]
        assert got == [(s, t) for s in range(splits) for t in range(per)]
        assert [tuple(int(v) for v in mosaic.split_tile(jnp.int32(j), per)) for j in range(splits * per)] == got


@pytest.mark.parametrize("backend", backend_params("int8_matmul", ("xla", "triton")))
@pytest.mark.parametrize("fuse", [True, False])
def test_out_splits_are_the_column_blocks_of_one_gemm(backend, fuse):
    """``scaled_gemm(out_splits=3)`` (XLA: one GEMM then the split; Triton, interpret: one GEMM per block) ==
    the blocks of the reference: the bare int32 GEMM and the zero-point term (unit scales) exactly, the full
    epilogue (zero point, bias, rank-1 term, GELU) to float32 rounding."""
    xq, wq, xs, ws, bias, kw = _split_case(51)
    m, n = xq.shape[0], wq.shape[0]
    gemm = pk.ops.int8_matmul.scaled_gemm
    for got, want in zip(gemm(xq, wq, backend=backend, out_splits=3, fuse_splits=fuse), _blocks_ref(xq, wq, None, None, None, 3)):
        assert got.dtype == jnp.int32 and got.shape == (m, n // 3)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    unit = dict(w_zero=kw["w_zero"], x_row_sum=kw["x_row_sum"])
    ones = (jnp.ones((m, 1)), jnp.ones((n,)))
    parts = gemm(xq, wq, *ones, out_dtype=jnp.float32, backend=backend, out_splits=3, fuse_splits=fuse, **unit)
    for got, want in zip(parts, _blocks_ref(xq, wq, *ones, None, 3, **unit)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    parts = gemm(xq, wq, xs, ws, bias, out_dtype=jnp.float32, backend=backend, out_splits=3, fuse_splits=fuse, **kw)
    for got, want in zip(parts, _blocks_ref(xq, wq, xs, ws, bias, 3, **kw)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_out_splits_refusals():
    xq, wq, xs, ws, bias, kw = _split_case(61)
    gemm = pk.ops.int8_matmul.scaled_gemm
    with pytest.raises(ValueError, match="not with out_splits"):
        gemm(xq, wq, xs, ws, bias, out_splits=3, residual=jnp.zeros((xq.shape[0], wq.shape[0])))
    with pytest.raises(ValueError, match="do not split into 5"):
        gemm(xq, wq, xs, ws, bias, out_splits=5)
    cfg = mosaic.MosaicGemmConfig(tm=64, tn=128, tk=128, stages=2, ws=True)
    with pytest.raises(ValueError, match="whole 128-column tiles"):  # C = 64 < tn
        mosaic.mosaic_int8_gemm(xq, wq, xs, ws, cfg=cfg, out_splits=3)


@pytest.mark.parametrize("c", [1152, 2304, 48, 64, 96])
@pytest.mark.parametrize("gpu", ["NVIDIA H200", "NVIDIA H100 80GB HBM3"])
def test_stored_tilings_keyed_by_the_whole_n_fit_each_output(monkeypatch, gpu, c):
    """The tilings stored for the whole N = 3C (qkv) shrink to a tile width dividing C — the XL models' 1152
    and 2304, the fixtures' tiny widths — and fit shared memory with bf16 and float32 outputs."""
    from pallas_kernels import _config
    from pallas_kernels.ops.int8_matmul import mosaic_config

    monkeypatch.setattr(_config, "gpu_name", lambda: gpu)
    for m in (8192, 32768):
        for kernel, itemsize in (("mosaic_gemm_scaled", 2), ("mosaic_gemm_scaled", 4), ("mosaic_gemm_int32", 4)):
            cfg = mosaic_config(m, 1152, 3 * c, kernel, itemsize, out_splits=3)
            assert cfg is not None and c % cfg.tn == 0, (m, kernel, cfg)
            assert mosaic.supports(1152, 3 * c, cfg, out_splits=3)
            assert mosaic.smem_bytes(cfg, itemsize) + 1024 <= mosaic.SMEM_LIMIT


@pytest.mark.skipif(plgpu is None, reason="Mosaic GPU not importable in this JAX")
@pytest.mark.parametrize("ws", [True, False])
def test_mosaic_out_splits_lowers_for_cuda(ws):
    """The one-GEMM qkv kernel (3 outputs; int8 with zero point and GELU, e4m3 with GELU; both kernel
    variants at the stored tiling) lowers to ONE CUDA custom call with three (M, C) results on this host."""
    S = jax.ShapeDtypeStruct
    m, k, c = 512, 256, 384
    n = 3 * c
    cfg = mosaic.MosaicGemmConfig(tm=128, tn=128, tk=128, stages=3, ws=ws, delay_release=0, chain=ws)
    for dt in (jnp.int8, jnp.float8_e4m3fn):
        zp = dt == jnp.int8

        def f(xq, wq, xs, ws_, b, zw, rs):
            return mosaic.mosaic_int8_gemm(xq, wq, xs, ws_, b, cfg=cfg, out_dtype=jnp.bfloat16, activation="gelu_tanh",
                                           w_zero=zw if zp else None, x_row_sum=rs if zp else None, out_splits=3)

        args = (S((m, k), dt), S((n, k), dt), S((m, 1), jnp.float32), S((n,), jnp.float32), S((n,), jnp.float32),
                S((n,), jnp.int32), S((m, 1), jnp.int32))
        orig = mosaic._num_sms
        mosaic._num_sms = lambda: 132
        try:
            lowered = jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",))
        finally:
            mosaic._num_sms = orig
        text = lowered.as_text()
        assert text.count("custom_call @mosaic_gpu") == 1
        assert [(o.shape, o.dtype) for o in lowered.out_info] == [((m, c), jnp.bfloat16)] * 3


@_INTERPRET
@pytest.mark.parametrize("dtype,out_dtype", [(jnp.float8_e4m3fn, jnp.bfloat16), (jnp.int8, jnp.int32)])
def test_interpreted_mosaic_out_splits(dtype, out_dtype):
    """The Mosaic GPU kernel itself (the one-warpgroup variant; the warp-specialized one runs in the next test)
    in the CPU interpreter (TMA, barriers, shared memory simulated, race detector on; outputs start as NaN / int
    max, so a tile stored to the wrong output or not at all shows): e4m3 with the GELU epilogue into bf16
    outputs, and the bare int32 GEMM (exact), 3 outputs, M padded."""
    m, k, c = 72, 256, 64
    n = 3 * c
    cfg = mosaic.MosaicGemmConfig(tm=64, tn=64, tk=128, stages=2, ws=False)
    if dtype == jnp.int8:
        xq, wq = rand_int(1, (m, k), -127, 127), rand_int(2, (n, k), -128, 127)
        parts = mosaic.mosaic_int8_gemm(xq, wq, cfg=cfg, out_splits=3, interpret=True)
        for got, want in zip(parts, _blocks_ref(xq, wq, None, None, None, 3)):
            assert got.dtype == jnp.int32
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        _assert_no_races()
        return
    xq = (jax.random.normal(jax.random.key(3), (m, k)) * 4).astype(dtype)
    wq = jax.random.normal(jax.random.key(4), (n, k)).astype(dtype)
    xs, ws_, bias = rand_scale(5, (m, 1)) * 30, rand_scale(6, (n,)) * 30, jax.random.normal(jax.random.key(7), (n,))
    parts = mosaic.mosaic_int8_gemm(xq, wq, xs, ws_, bias, cfg=cfg, out_dtype=out_dtype, activation="gelu_tanh",
                                    out_splits=3, interpret=True)
    for got, want in zip(parts, _blocks_ref(xq, wq, xs, ws_, bias, 3, out_dtype, activation="gelu_tanh")):
        assert got.shape == (m, c) and got.dtype == out_dtype
        assert_bf16_close(got, want)
    _assert_no_races()


@_INTERPRET
def test_w8a8_linear_splits_run_one_mosaic_kernel(monkeypatch):
    """``w8a8_linear(splits=3, backend="mosaic")`` as on a Hopper GPU (the dispatch's ``on_gpu`` patched; the kernel
    run by the CPU interpreter, warp-specialized at the stored default tiling, chain off): ONE kernel call with
    ``out_splits=3`` writes q, k, v == the reference's blocks (zero point, bias, rank-1 term, GELU, float32 out);
    ``fuse_splits=False`` and an unfused activation take one kernel per output again."""
    import dataclasses

    from pallas_kernels.ops import int8_matmul

    calls = []
    real = mosaic.mosaic_int8_gemm

    def spy(*args, cfg, **kw):
        calls.append((cfg, kw.get("out_splits", 1)))
        return real(*args, cfg=dataclasses.replace(cfg, chain=False), interpret=True, **kw)

    monkeypatch.setattr(int8_matmul, "on_gpu", lambda: True)
    monkeypatch.setattr(mosaic, "mosaic_int8_gemm", spy)
    monkeypatch.setattr(mosaic, "_num_sms", lambda: 2)
    m, k, c = 40, 128, 128
    n = 3 * c
    x = rand_x(71, m, k)
    wq = rand_int(72, (n, k), -128, 127)
    zw = rand_int(73, (n,), -127, 127).astype(jnp.int32)
    ws, bias = rand_scale(74, (n,)) * 30, jax.random.normal(jax.random.key(75), (n,))
    r1 = (jax.random.normal(jax.random.key(76), (k,)) / 16, jax.random.normal(jax.random.key(77), (n,)))
    kw = dict(w_zero_point=zw, rank1=r1, activation="gelu_tanh", out_dtype=jnp.float32)
    parts = pk.w8a8_linear(x, wq, ws, bias, backend="mosaic", splits=3, **kw)
    assert [(cfg.ws, s) for cfg, s in calls] == [(True, 3)] and c % calls[0][0].tn == 0
    _assert_no_races()
    want = pk.column_blocks(pk.w8a8_linear_ref(x, wq, ws, bias, **kw), 3)
    for got, w in zip(parts, want):
        assert got.shape == (m, c)
        np.testing.assert_allclose(np.asarray(got), np.asarray(w), rtol=2e-5, atol=2e-5 * float(jnp.abs(w).max()))
    # the switches: one GEMM per output (the path before the fused one), checked without running the kernel
    monkeypatch.setattr(mosaic, "mosaic_int8_gemm", lambda *a, cfg, **kw: calls.append((cfg, kw.get("out_splits", 1)))
                        or jnp.zeros((a[0].shape[0], a[1].shape[0]), kw.get("out_dtype")))
    xq, xs = pk.quantize_per_token(x)
    for switch in (dict(fuse_splits=False), dict(fuse_splits=True, fuse_activation=False)):
        calls.clear()
        parts = pk.ops.int8_matmul.scaled_gemm(xq, wq, xs, ws, bias, out_dtype=jnp.bfloat16, backend="mosaic",
                                               activation="gelu_tanh", out_splits=3, **switch)
        assert [s for _, s in calls] == [1, 1, 1] and [p.shape for p in parts] == [(m, c)] * 3
