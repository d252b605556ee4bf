"""int8 x int8 -> int32 GEMM (Mosaic GPU wgmma / Pallas-Triton / XLA cuBLASLt) + fused epilogue.

The public dispatch: :func:`int8_gemm` (bare int32 output, or with the fused dequant epilogue)
and :func:`int8_matmul`; semantics in ``reference.py``, kernels in ``mosaic.py`` / ``triton.py``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from pallas_kernels import _config
from pallas_kernels._compat import (
    check_backend,
    gpu_name,
    is_hopper,
    log_once,
    on_gpu,
    plgpu,
    pltriton,
)
from pallas_kernels._debug import debug_override
from pallas_kernels.ops.int8_matmul import mosaic, triton
from pallas_kernels.ops.int8_matmul.reference import (
    EPILOGUE_ACTIVATIONS,
    apply_activation,
    check_activation,
    int8_matmul_ref,
    scaled_epilogue_ref,
)

CONFIG_FILE = Path(__file__).with_name("configs.json")


def resolve_backend(backend: str, op: str) -> str:
    """Map ``auto`` to ``mosaic`` on Hopper, else ``xla`` (logging the fallback once)."""
    check_backend(backend)
    if backend == "reference":
        return "xla"
    if backend != "auto":
        return backend
    if is_hopper() and plgpu is not None:
        return "mosaic"
    log_once(
        f"{op}:auto",
        f"pallas_kernels.{op}: no Hopper GPU with Mosaic GPU (device {gpu_name()!r}); "
        "using the XLA int8 path (lax.dot_general s8xs8->s32 + scales).",
    )
    return "xla"


def mosaic_config(m: int, k: int, n: int, kernel: str, out_itemsize: int = 2) -> mosaic.MosaicGemmConfig | None:
    """Stored config for the shape, shrunk to divide K / N and to fit shared memory (``None``: no fit)."""
    cfg = mosaic.MosaicGemmConfig.from_dict(_config.lookup(CONFIG_FILE, kernel, m, k, n, {}))
    return mosaic.fit_smem(mosaic.fit_config(cfg, k, n), n, out_itemsize)


def triton_config(m: int, k: int, n: int, kernel: str) -> triton.TritonGemmConfig | None:
    cfg = triton.TritonGemmConfig.from_dict(_config.lookup(CONFIG_FILE, kernel, m, k, n, {}))
    return triton.fit_config(cfg, m, k, n)


def _check_operands(xq: jax.Array, wq: jax.Array) -> None:
    if xq.ndim != 2 or wq.ndim != 2 or xq.shape[1] != wq.shape[1]:
        raise ValueError(f"expected xq (M, K) and wq (N, K); got {xq.shape} and {wq.shape}")


def int8_gemm(
    xq: jax.Array,
    wq: jax.Array,
    x_scale: jax.Array | None = None,
    w_scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    out_dtype: jnp.dtype = jnp.int32,
    backend: str = "auto",
    op: str = "int8_matmul",
    activation: str | None = None,
    approx_gelu: bool = True,
    fuse_activation: bool = True,
) -> jax.Array:
    """int8 GEMM ``xq (M,K) x wq (N,K)^T``; with scales the dequant epilogue (+ bias and an
    optional ``activation``, see ``reference.EPILOGUE_ACTIVATIONS``) is fused.

    Mosaic GPU options (A/B switches for benchmarks; the other backends ignore them):
    ``approx_gelu`` — half-precision outputs evaluate the epilogue GELU with ``approx_math``
    (``tanh.approx.f32``, rel. error ~2^-11, below bf16's 2^-8 rounding; float32 outputs always
    keep the exact form); ``fuse_activation=False`` — apply ``activation`` by an XLA pass after the
    GEMM instead of inside its epilogue. ``$PALLAS_KERNELS_DEBUG`` may force both
    (``pallas_kernels._debug``).

    Falls back to XLA (logged once) when the chosen kernel does not support the shape/device.
    """
    _check_operands(xq, wq)
    check_activation(activation)
    if activation is not None and x_scale is None:
        raise ValueError("an epilogue activation needs the scales (dequantizing epilogue)")
    if xq.dtype != jnp.int8 or wq.dtype != jnp.int8:
        raise TypeError(f"int8 operands required, got {xq.dtype} and {wq.dtype}")
    m, k = xq.shape
    n = wq.shape[0]
    be = resolve_backend(backend, op)
    scaled = x_scale is not None
    kname = "gemm_scaled" if scaled else "gemm_int32"
    if activation is not None and be == "mosaic" and not debug_override("fuse_activation", fuse_activation):
        y = int8_gemm(xq, wq, x_scale, w_scale, bias, out_dtype=out_dtype, backend=be, op=op)
        return apply_activation(y, activation)  # as before the fusion: an XLA pass over the output
    if be == "mosaic":
        cfg = mosaic_config(m, k, n, f"mosaic_{kname}", jnp.dtype(out_dtype if scaled else jnp.int32).itemsize)
        if on_gpu() and cfg is not None and mosaic.supports(k, n, cfg):
            return mosaic.mosaic_int8_gemm(
                xq, wq, x_scale, w_scale, bias, cfg=cfg, out_dtype=out_dtype, activation=activation,
                approx_gelu=debug_override("approx_gelu", approx_gelu),
            )
        log_once(f"{op}:mosaic:{k},{n}", f"pallas_kernels.{op}: Mosaic GPU kernel does not "
                 f"support K={k}, N={n} on {gpu_name()!r}; using XLA.")
        be = "xla"
    if be == "triton":
        cfg_t = triton_config(m, k, n, f"triton_{kname}")
        if pltriton is not None and cfg_t is not None:
            return triton.triton_int8_gemm(
                xq, wq, x_scale, w_scale, bias, cfg=cfg_t, out_dtype=out_dtype,
                interpret=not on_gpu(), activation=activation,
            )
        log_once(f"{op}:triton:{k},{n}", f"pallas_kernels.{op}: Triton kernel does not "
                 f"support K={k}, N={n}; using XLA.")
    acc = int8_matmul_ref(xq, wq)
    if not scaled:
        return acc
    return scaled_epilogue_ref(acc, x_scale, w_scale, bias, out_dtype, activation)


def int8_matmul(xq: jax.Array, wq: jax.Array, *, backend: str = "auto") -> jax.Array:
    """Bare GEMM ``xq (M,K) @ wq (N,K)^T``, int8 -> int32, exactly ``lax.dot_general``."""
    return int8_gemm(xq, wq, backend=backend, op="int8_matmul")


__all__ = [
    "CONFIG_FILE",
    "EPILOGUE_ACTIVATIONS",
    "int8_gemm",
    "int8_matmul",
    "int8_matmul_ref",
    "mosaic_config",
    "resolve_backend",
    "scaled_epilogue_ref",
    "triton_config",
]
