"""Sharded sampling and calibration on ``jax.sharding``: one model call spread over several devices.

No communication layer of its own: a :class:`jax.sharding.Mesh` with the axes ``data`` (the rows of
the model batch: prompts and the CFG pair) and ``seq`` (tokens: an image's spatial tokens, a video's
frames × tokens), ``shard_map`` with XLA's collectives (``all_to_all``, ``ppermute``) where attention
needs them, and the partitioner for everything per token.

* :mod:`.mesh` — :func:`make_mesh` / :func:`as_mesh` (device count, device list, ``"data=2,seq=4"``),
  :class:`MeshError`;
* :mod:`.attention` — sequence-parallel attention per kind of the models' attention seam (Ulysses
  all-to-all over heads, ring attention, frame-local, position-sharded temporal), installed while a
  model call is traced (:func:`activate`);
* :mod:`.records` — quantized records run per shard (:class:`ShardedDense`), params stored
  replicated or split along N (:func:`place_params`);
* :mod:`.apply` — the sharded ``apply_fn`` and the placement of a sampling run
  (:func:`prepare_sampling`, used by ``vidq_jax.pipeline.sample(..., mesh=)``), :func:`to_host`.

Use::

    from vidq_jax import pipeline, sharding
    out = pipeline.sample(model, params, noise, cond, mesh=8)                   # 8 devices, default shape
    out = pipeline.sample(model, params, noise, cond, mesh="data=2,seq=4")
    batches = vidq_jax.calibration.collect(model, params, cond, mesh=mesh)    # calibration on the mesh
    with sharding.activate(mesh):                                             # statistics pass on the mesh
        qparams = vidq_jax.quantize_params(params, batches, model=model)

The default mesh for ``N`` devices (:func:`default_shape`) puts as many devices as divide the batch
rows on ``data`` (the CFG pair of one prompt: 2) and the rest on ``seq``. Choosing ``seq``: Ulysses
needs it to divide the heads (16 for the XL models), ring attention does not; a video runs best when
it divides the latent frames too (whole frames per device: spatial attention without communication,
and STDiT3's per-head qk-norm / RoPE, which work on the frame-grouped view, need no gather of the
token stream) — e.g. Open-Sora 1.2's 51 frames are 15 latent frames: ``seq`` 3 or 5.

Results equal the single-device run within float tolerance: per-token layers compute the same rows,
attention sums over the same keys per head in another blocking (the model call itself is bitwise equal
in the CPU tests). Over a sampling run, last-bit differences (XLA fuses the sampler's update
differently per program) grow as the sampler amplifies them; a quantized model, whose int8 roundings
can flip on such a difference, follows its own trajectory as far as it would from a 1e-6 change of the
noise on one device.

Multi-host: call ``jax.distributed.initialize()`` (``vidq sample/quantize --distributed``; arguments
from the cluster environment) in every process before anything touches JAX; ``jax.devices()`` then
lists the devices of all processes and a mesh spans them. Every process runs the same program on the
same host values (same prompts, same seed): inputs become global arrays from those values
(``jax.make_array_from_callback``), results come back with :func:`to_host`, and only process 0
(:func:`is_writer`) writes files.
"""

from vidq_jax.sharding.apply import check_rows, is_writer, latent_spec, place, prepare_sampling, sharded_apply_fn, \
    to_host
from vidq_jax.sharding.attention import STRATEGIES, Layout, ShardedAttentionRecord, activate, active_layout, \
    ring_attention, sharded_attend
from vidq_jax.sharding.mesh import AXES, DATA, SEQ, MeshError, as_mesh, axis_size, default_shape, describe, \
    make_mesh, parse_mesh
from vidq_jax.sharding.records import PLACEMENTS, FloatDense, ShardedDense, place_params, shard_records

__all__ = [
    "AXES", "DATA", "PLACEMENTS", "SEQ", "STRATEGIES", "FloatDense", "Layout", "MeshError", "ShardedAttentionRecord",
    "ShardedDense",
    "activate", "active_layout", "as_mesh", "axis_size", "check_rows", "default_shape", "describe", "is_writer",
    "latent_spec", "make_mesh", "parse_mesh", "place", "place_params", "prepare_sampling", "ring_attention",
    "shard_records", "sharded_apply_fn", "sharded_attend", "to_host",
]
