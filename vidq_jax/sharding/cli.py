"""The command-line face of sharded runs: ``--devices N`` / ``--mesh data=D,seq=S``,
``--seq-strategy``, ``--param-placement`` and ``--distributed`` for ``vidq sample`` / ``vidq quantize``
(and any verb that samples), turned into the keywords of :func:`vidq_jax.pipeline.sample`."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from typing import Any

from vidq_jax.sharding.mesh import MeshError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sharding options of a sampling verb."""
    from vidq_jax.sharding.attention import STRATEGIES
    from vidq_jax.sharding.records import PLACEMENTS

    g = p.add_argument_group("several devices (jax.sharding)")
    g.add_argument("--devices", type=int, metavar="N",
                   help="sample on N devices (data parallel over prompts and the CFG pair first, the rest sequence "
                        "parallel over tokens)")
    g.add_argument("--mesh", metavar="data=D,seq=S", help="explicit device mesh, e.g. data=2,seq=4")
    g.add_argument("--seq-strategy", choices=STRATEGIES, default="ulysses",
                   help="sequence-parallel attention: ulysses (all-to-all over heads, default) or ring")
    g.add_argument("--param-placement", choices=PLACEMENTS, default="replicate",
                   help="params on every device (replicate, default) or split along the output features (shard)")
    g.add_argument("--distributed", action="store_true",
                   help="multi-host: jax.distributed.initialize() from the cluster environment first (every process "
                        "runs the same command; process 0 writes the files)")


@dataclasses.dataclass(frozen=True)
class MeshOptions:
    """The parsed options: :attr:`kwargs` for :func:`vidq_jax.pipeline.sample` (``{}`` on one device)."""

    mesh: Any = None
    strategy: str = "ulysses"
    placement: str = "replicate"

    @property
    def kwargs(self) -> dict[str, Any]:
        if self.mesh is None:
            return {}
        return {"mesh": self.mesh, "seq_strategy": self.strategy, "param_placement": self.placement}

    def activated(self):
        """Context of a statistics pass on the mesh (a no-op on one device)."""
        if self.mesh is None:
            return contextlib.nullcontext()
        from vidq_jax.sharding.attention import activate

        return activate(self.mesh, strategy=self.strategy)

    @property
    def writer(self) -> bool:
        """Whether this process writes the output files (process 0)."""
        from vidq_jax.sharding.apply import is_writer

        return is_writer()

    def place(self, params: Any) -> Any:
        """``params`` on the mesh (:func:`~vidq_jax.sharding.records.place_params`; unchanged on one
        device): loaded params sit on one device, and the statistics pass runs where the batches are."""
        if self.mesh is None:
            return params
        from vidq_jax.sharding.records import place_params

        return place_params(params, self.mesh, self.placement)

    def host(self, tree: Any) -> Any:
        """``tree``'s arrays on this host (:func:`~vidq_jax.sharding.apply.to_host`; unchanged on one device)."""
        if self.mesh is None:
            return tree
        from vidq_jax.sharding.apply import to_host

        return to_host(tree)

    def describe(self) -> str:
        if self.mesh is None:
            return ""
        from vidq_jax.sharding.mesh import describe

        return f" on {describe(self.mesh)}, {self.strategy}"


def from_args(args: argparse.Namespace, rows: int | None = None) -> MeshOptions:
    """:class:`MeshOptions` of parsed ``args`` (``rows``: the model batch rows, for the default mesh
    shape of ``--devices``); runs ``jax.distributed.initialize()`` first with ``--distributed``."""
    devices, text = getattr(args, "devices", None), getattr(args, "mesh", None)
    if getattr(args, "distributed", False):
        import jax

        jax.distributed.initialize()
    if devices is None and text is None:
        return MeshOptions()
    from vidq_jax.sharding.mesh import as_mesh, make_mesh, parse_mesh

    if text is not None:
        sizes = parse_mesh(text)
        n = sizes.get("data", 1) * sizes.get("seq", 1)
        if devices is not None and devices != n:
            raise MeshError(f"--devices {devices} and --mesh {text} disagree: the mesh has {n} devices")
        mesh = make_mesh(n, data=sizes.get("data", 1), seq=sizes.get("seq", 1))
    else:
        if devices < 1:
            raise MeshError(f"--devices {devices}: give a device count >= 1")
        mesh = as_mesh(devices, rows=rows)
    return MeshOptions(mesh, args.seq_strategy, args.param_placement)


__all__ = ["MeshOptions", "add_arguments", "from_args"]
