"""The ``vidq`` command line.

    vidq convert --arch pixart-alpha CKPT OUT_DIR [--config JSON] [--dtype bf16]
    vidq demo [--out outputs/demo]

Each verb is a function ``cmd_<verb>(args) -> int`` registered in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _dtype(name: str | None):
    if name is None:
        return None
    import jax.numpy as jnp

    table = {"fp32": jnp.float32, "float32": jnp.float32, "bf16": jnp.bfloat16, "bfloat16": jnp.bfloat16, "fp16": jnp.float16}
    if name not in table:
        raise SystemExit(f"vidq: unknown dtype {name!r}; choose one of {sorted(table)}")
    return table[name]


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def cmd_convert(args) -> int:
    from conversion import ConversionError, load_checkpoint
    from vidq_jax.checkpoint import save_model

    config = None
    if args.config:
        text = args.config.strip()
        if not text.startswith("{"):
            text = Path(text).read_text()
        try:
            config = json.loads(text)
        except ValueError as e:
            print(f"vidq convert: --config is not valid JSON ({e})", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    try:
        model, params = load_checkpoint(args.checkpoint, args.arch, config, dtype=_dtype(args.dtype))
    except ConversionError as e:
        print(f"vidq convert: {e}", file=sys.stderr)
        return 2
    out = save_model(args.out_dir, model, params, arch=args.arch, extra={"source": str(args.checkpoint)})
    meta = json.loads((out / "model.json").read_text())
    print(
        f"converted {args.checkpoint} ({args.arch}, {type(model).__name__}) -> {out} "
        f"[{_human_bytes(meta['param_bytes'])}, {time.perf_counter() - t0:.1f} s]"
    )
    return 0


def cmd_demo(args) -> int:
    from vidq_jax.demo import run_demo

    run_demo(Path(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from conversion import ARCHS

    p = argparse.ArgumentParser(prog="vidq", description="ViDiT-Q quantization of diffusion transformers in JAX")
    sub = p.add_subparsers(dest="verb", required=True)

    c = sub.add_parser("convert", help="PyTorch checkpoint -> orbax params + model.json")
    c.add_argument("--arch", required=True, choices=ARCHS)
    c.add_argument("checkpoint", help=".pth / .safetensors file, or a diffusers / Hugging Face folder")
    c.add_argument("out_dir")
    c.add_argument("--config", help="JSON (inline or a file) completing/overriding the model config")
    c.add_argument("--dtype", help="cast params: fp32 | bf16 | fp16 (default: as stored)")
    c.set_defaults(func=cmd_convert)

    d = sub.add_parser("demo", help="the main job on the embedded default (writes outputs/demo/)")
    d.add_argument("--out", default="outputs/demo")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
