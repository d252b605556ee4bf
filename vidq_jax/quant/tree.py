"""Params-tree helpers shared by the quantization code, the evaluation and the benchmarks.

A *Dense path* is the Flax param path of a ``models.layers.Dense`` module without ``/kernel``
(``"blocks_3/attn/qkv"``); its node is the dict holding ``kernel`` (and ``bias``). The ``kernel``
leaf is a float ``(K, N)`` array or a quantized record (anything with ``quantized_dense``, see
DESIGN.md's Dense seam). Updates are functional: only the dicts on the path are copied.

A ``{"params": ...}`` wrapper (the Flax variables dict) is accepted where noted:
:func:`unwrap_params` removes it and says whether it was there, :func:`rewrap_params` puts it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def dense_paths(params: Mapping[str, Any]) -> list[str]:
    """Paths (``"blocks_3/attn/qkv"``) of every Dense-like node: a mapping with a 2-D ``kernel``
    (float array or already a quantized record: anything with ``quantized_dense``). Conv kernels
    (rank > 2) are skipped."""
    out: list[str] = []

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if not isinstance(node, Mapping):
            return
        k = node.get("kernel")
        if hasattr(k, "quantized_dense") or (k is not None and getattr(k, "ndim", 0) == 2):
            out.append("/".join(prefix))
        for name, child in node.items():
            if isinstance(child, Mapping):
                walk(child, prefix + (str(name),))

    walk(params, ())
    return out


def get_node(params: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The node at ``path`` (``params["blocks_3"]["attn"]["qkv"]``)."""
    node = params
    for part in path.split("/"):
        node = node[part]
    return node


def get_kernel(params: Mapping[str, Any], path: str) -> Any:
    """The ``kernel`` leaf of the Dense at ``path`` (float array or quantized record)."""
    return get_node(params, path)["kernel"]


def set_kernel(params: Mapping[str, Any], path: str, value: Any, leaf: str = "kernel") -> dict:
    """Functional update of ``params[...path...]["kernel"]`` (or of another ``leaf`` of the node, e.g.
    ``"bias"``; copies only the dicts on the path)."""
    parts = path.split("/")

    def rec(node: Mapping[str, Any], i: int) -> dict:
        new = dict(node)
        if i == len(parts):
            new[leaf] = value
        else:
            new[parts[i]] = rec(node[parts[i]], i + 1)
        return new

    return rec(params, 0)


def unwrap_params(params: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """``(inner, wrapped)``: the params without a ``{"params": ...}`` wrapper, and whether it had one."""
    if set(params) == {"params"}:
        return params["params"], True
    return params, False


def rewrap_params(inner: Mapping[str, Any], wrapped: bool) -> Mapping[str, Any]:
    """Inverse of :func:`unwrap_params`."""
    return {"params": inner} if wrapped else inner


def dense_kernels(params: Mapping[str, Any]) -> dict[str, Any]:
    """``{path: kernel}`` of every Dense (a ``{"params": ...}`` wrapper is accepted), in path order."""
    inner, _ = unwrap_params(params)
    return {p: get_kernel(inner, p) for p in dense_paths(inner)}


__all__ = ["dense_kernels", "dense_paths", "get_kernel", "get_node", "rewrap_params", "set_kernel", "unwrap_params"]
