"""Version-tolerant Pallas imports, device queries and fallback logging.

The package must import on JAX 0.10.2 (CPU CI) and 0.11.x (GPU machine), where the Pallas GPU
modules moved and were renamed several times. Everything version- or device-dependent lives here;
kernels import ``pl``, ``pltriton`` and ``plgpu`` from this module (either may be ``None``).
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any

import jax

logger = logging.getLogger("pallas_kernels")

try:  # Pallas core (present in every supported JAX).
    import jax.experimental.pallas as pl
except Exception:  # pragma: no cover - exotic jax builds
    pl = None  # type: ignore[assignment]

try:  # Triton backend (deprecated since 0.11, still functional).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from jax.experimental.pallas import triton as pltriton
except Exception:  # pragma: no cover
    pltriton = None  # type: ignore[assignment]

try:  # Mosaic GPU backend (Hopper wgmma).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import jax.experimental.pallas.mosaic_gpu as plgpu
except Exception:  # pragma: no cover
    plgpu = None  # type: ignore[assignment]


BACKENDS = ("auto", "mosaic", "triton", "xla", "reference")


def triton_compiler_params(num_warps: int, num_stages: int) -> Any:
    """Compiler params that select the Pallas Triton lowering (``CompilerParams`` since 0.7)."""
    assert pltriton is not None
    cls = getattr(pltriton, "CompilerParams", None) or getattr(pltriton, "TritonCompilerParams")
    return cls(num_warps=num_warps, num_stages=num_stages)


def default_device() -> jax.Device:
    return jax.devices()[0]


@functools.lru_cache(maxsize=None)
def gpu_name() -> str:
    """Device kind of the default device, e.g. ``'NVIDIA H200'``; ``'cpu'`` off GPU."""
    dev = default_device()
    if dev.platform != "gpu":
        return dev.platform
    return str(getattr(dev, "device_kind", "gpu"))


@functools.lru_cache(maxsize=None)
def is_hopper() -> bool:
    """True when the default device is an sm_90 GPU (H100/H200/H800/GH200)."""
    dev = default_device()
    if dev.platform != "gpu":
        return False
    cc = getattr(dev, "compute_capability", None)
    if cc is not None:
        return str(cc).startswith("9")
    kind = gpu_name().upper()
    return any(tag in kind for tag in ("H100", "H200", "H800", "GH200"))


def on_gpu() -> bool:
    return default_device().platform == "gpu"


_warned: set[str] = set()


def log_once(key: str, message: str) -> None:
    """Emit ``message`` once per process (logging WARNING + ``warnings.warn``)."""
    if key in _warned:
        return
    _warned.add(key)
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def interpret_params():
    """Mosaic GPU's CPU interpreter (threads, shared memory, barriers and TMA simulated) with its
    happens-before race detector on, or ``None`` where this JAX has none (a private module, at the same
    place in JAX 0.10 and 0.11): ``plgpu.kernel(..., interpret=interpret_params())``. After a run,
    :func:`races_found` tells whether it saw a data race."""
    try:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    except ImportError:  # pragma: no cover - other JAX versions
        return None
    return InterpretGPUParams(detect_races=True)


def races_found() -> bool:
    """Whether the last interpreted run saw a shared-memory data race (:func:`interpret_params`). Meaningful
    with JAX 0.10: JAX 0.11.2's detector also flags the canonical TMA ring (consumer reads a slot, arrives
    on its "consumed" barrier, the producer waits on it and refills the slot by TMA), even with a single
    consumer, which 0.10.2 accepts and hardware orders through the mbarrier."""
    from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call

    return bool(interpret_pallas_call.get_races().races_found)
