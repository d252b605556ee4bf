"""Params-tree helpers (vidq_jax.quant.tree): Dense paths, get/set kernel, the params wrapper."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from vidq_jax.quant.tree import (
    dense_kernels,
    dense_paths,
    get_kernel,
    get_node,
    rewrap_params,
    set_kernel,
    unwrap_params,
)


class Record:
    """Any object with ``quantized_dense`` counts as a (quantized) Dense kernel."""

    def quantized_dense(self, x, bias=None, dtype=None):  # pragma: no cover - never called
        return x


PARAMS = {
    "x_embedder": {"proj": {"kernel": jnp.ones((2, 2, 4, 8)), "bias": jnp.zeros((8,))}},  # conv: skipped
    "blocks_0": {"attn": {"qkv": {"kernel": jnp.ones((8, 24)), "bias": jnp.zeros((24,))}},
                 "mlp": {"fc1": {"kernel": Record()}}},
    "t_block": {"1": {"kernel": jnp.ones((8, 48))}},
    "y_embedding": jnp.ones((4, 8)),
}


def test_paths_and_lookup():
    assert dense_paths(PARAMS) == ["blocks_0/attn/qkv", "blocks_0/mlp/fc1", "t_block/1"]
    assert get_node(PARAMS, "blocks_0/attn/qkv")["bias"].shape == (24,)
    assert get_kernel(PARAMS, "t_block/1").shape == (8, 48)
    kernels = dense_kernels({"params": PARAMS})  # the wrapper is accepted
    assert list(kernels) == dense_paths(PARAMS) and isinstance(kernels["blocks_0/mlp/fc1"], Record)


def test_set_kernel_is_functional():
    new = set_kernel(PARAMS, "blocks_0/attn/qkv", Record())
    assert isinstance(get_kernel(new, "blocks_0/attn/qkv"), Record)
    assert get_kernel(PARAMS, "blocks_0/attn/qkv").shape == (8, 24)  # input untouched
    assert new["t_block"] is PARAMS["t_block"]  # only the dicts on the path are copied
    assert new["blocks_0"]["mlp"] is PARAMS["blocks_0"]["mlp"]
    np.testing.assert_array_equal(get_node(new, "blocks_0/attn/qkv")["bias"], PARAMS["blocks_0"]["attn"]["qkv"]["bias"])


def test_unwrap_rewrap():
    inner, wrapped = unwrap_params({"params": PARAMS})
    assert inner is PARAMS and wrapped and rewrap_params(inner, wrapped) == {"params": PARAMS}
    inner, wrapped = unwrap_params(PARAMS)
    assert inner is PARAMS and not wrapped and rewrap_params(inner, wrapped) is PARAMS
