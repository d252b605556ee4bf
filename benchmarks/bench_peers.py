"""The PyTorch anchors a PixArt user would pick instead of this project, timed in the same GPU run.

One CFG step (batch 2) of diffusers ``PixArtTransformer2DModel`` at the XL config of
``xl_keys/pixart-diffusers.json`` (PixArt-Σ-XL/2 1024 px: latent 128×128, 16 heads × 72, 28 layers,
120 caption tokens of T5-XXL width), random weights, bf16, in four forms:

* ``eager_bf16`` — diffusers as shipped;
* ``compile_bf16`` — ``torch.compile`` of the same module (default mode: max-autotune compiles for many
  minutes on the XL model);
* ``compile_int8dq`` — torchao ``Int8DynamicActivationInt8WeightConfig`` then ``torch.compile``;
* ``compile_fp8row`` — torchao ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` then
  ``torch.compile``.

``--compile-scope``: ``compile_bf16`` compiles the whole module, the torchao forms each transformer block (regional
compilation, ``compile_scope``); each row says which.

The project's own bf16 step (``benchmarks.bench_e2e``, PixArt 1024 px) runs first in a subprocess on the same
GPU so that each row carries ``ratio_vs_project_bf16`` (> 1 = the peer is faster than the project's bf16).
Rows are written as they finish (``benchmarks/results/peers.json`` + ``.md``); a form that does not finish
compiling inside ``--budget`` seconds is recorded as not measured, with the reason: on the GPU each form runs in a
child process killed when the budget runs out (``--isolate``, the default except with ``--tiny``), so a compile that
runs on cannot take the finished rows with it.

The GPU machine has torch but not diffusers/torchao: carry their wheels in ``.whl-peers`` (``pip download
--python-version 3.12 --only-binary=:all: diffusers torchao``, without numpy); ``benchmarks/gpu_batch.sh peers``
installs what the machine lacks.

    python -m benchmarks.bench_peers [--iters 10] [--budget 480] [--methods eager_bf16,compile_bf16,...]
    python -m benchmarks.bench_peers --tiny        # toy config, CPU smoke run of the same code
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, title

METHODS = ("eager_bf16", "compile_bf16", "compile_fp8row", "compile_int8dq")
LATENT, CAPTION = 128, 120  # PixArt 1024 px: 128x128 latent, 120 T5 tokens (PixArt-alpha length)


def _child_json(module_args: list[str], timeout_s: float | None = None) -> tuple[subprocess.CompletedProcess, object]:
    """``python -m <module_args> <file>`` in a child process (the last argument names the flag that takes the result
    file); its completed process and the JSON it wrote (``None`` if it failed or wrote none). A child that outlives
    ``timeout_s`` is killed (``subprocess.TimeoutExpired``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        proc = subprocess.run([sys.executable, "-m", *module_args, str(out)], cwd=REPO, text=True,
                              capture_output=True, timeout=timeout_s)
        ok = proc.returncode == 0 and out.exists()
        return proc, json.loads(out.read_text()) if ok else None


def project_bf16_ms(iters: int, tiny: bool) -> float | None:
    """The project's bf16 PixArt step, measured by ``bench_e2e`` in a child process (JAX and torch must not
    share one process's GPU memory pool)."""
    proc, data = _child_json(["benchmarks.bench_e2e", "--models", "pixart", "--variants", "bf16", "--iters", str(iters)]
                             + (["--tiny"] if tiny else []) + ["--out"])
    if data is None:
        print(f"project bf16 step failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}", flush=True)
        return None
    return pixart_bf16_ms(data, "the project bf16 step")


def peer_config(tiny: bool) -> dict:
    from conversion.fixtures import load_xl_keys

    cfg = dict(load_xl_keys("pixart-diffusers")["config"])
    if tiny:
        cfg.update(num_layers=2, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
                   caption_channels=32, sample_size=8)
    return cfg


def build_peer(method: str, cfg: dict, device: str, scope: str | None = None):
    import torch
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(**cfg).to(device=device, dtype=torch.bfloat16).eval()
    if method in ("compile_int8dq", "compile_fp8row"):
        from torchao.quantization import quantize_

        if method == "compile_int8dq":
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig

            quantize_(model, Int8DynamicActivationInt8WeightConfig())
        else:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

            quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    if method.startswith("compile"):
        if compile_scope(method, scope) == "blocks":  # regional: one compiled graph shared by the identical blocks
            for block in model.transformer_blocks:
                block.compile()
        else:
            model = torch.compile(model)
    return model


def compile_scope(method: str, scope: str | None = None) -> str:
    """What ``torch.compile`` wraps: ``"model"`` (the whole module: the strongest bf16 anchor, fusions across
    blocks) or ``"blocks"`` (each transformer block, PyTorch's regional compilation: the 28 identical blocks share one
    compiled graph, so a torchao-quantized XL model compiles in the time of one block). Default: the whole model for
    bf16, the blocks for the torchao forms (their whole-model compile ran past a 600-s device call, issue 12)."""
    if not method.startswith("compile"):
        return ""
    if scope is not None:
        return scope
    return "model" if method == "compile_bf16" else "blocks"


def peer_inputs(cfg: dict, tiny: bool, device: str) -> dict:
    import torch

    size = cfg["sample_size"] if tiny else LATENT
    length = 8 if tiny else CAPTION
    g = torch.Generator(device="cpu").manual_seed(0)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[:, (length * 5) // 6:] = 0
    return {
        "hidden_states": torch.randn(2, cfg["in_channels"], size, size, generator=g).to(device, torch.bfloat16),
        "encoder_hidden_states": torch.randn(2, length, cfg["caption_channels"], generator=g).to(device, torch.bfloat16),
        "timestep": torch.full((2,), 500, dtype=torch.long).to(device),
        "encoder_attention_mask": mask.to(device),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
        "return_dict": False,
    }


def time_peer(model, inputs: dict, iters: int, device: str, reps: int = 5) -> dict:
    """Median per-call ms over ``reps`` runs of ``iters`` back-to-back calls (CUDA events on a GPU)."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            for _ in range(iters):
                model(**inputs)
            sync()
            times.append((time.perf_counter() - t0) / iters * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def environment_torch(device: str) -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    versions = {"torch_version": torch.__version__}
    for name in ("diffusers", "torchao"):
        try:
            versions[f"{name}_version"] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing peer library is reported per row
            versions[f"{name}_version"] = None
    try:
        import jax

        versions["jax_version"] = jax.__version__
    except Exception:  # noqa: BLE001
        versions["jax_version"] = None
    return {"gpu": gpu, **versions, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def pixart_bf16_ms(data, where: str) -> float:
    """The PixArt bf16 row's median of a ``bench_e2e`` result (``{"rows": [...]}`` or a list of rows)."""
    rows = data["rows"] if isinstance(data, dict) else data
    for r in rows:
        if r.get("method") == "bf16" and str(r.get("model", "")).lower().startswith("pixart"):
            return float(r["median_ms"])
    raise SystemExit(f"{where}: no PixArt bf16 row in it")


def bf16_from_e2e(path: Path) -> float:
    """The PixArt bf16 row of a ``bench_e2e`` JSON written earlier in the same GPU run (``--project-bf16-from``)."""
    return pixart_bf16_ms(json.loads(Path(path).read_text()), f"--project-bf16-from {path}")


def measure_form(method: str, iters: int, tiny: bool, device: str, scope: str | None = None) -> dict:
    """Build, compile and time one form in this process: ``compile_s``, the timings, ``peak_memory_bytes``; a form
    that fails is ``{"not_measured": reason}`` (a result, not a crash)."""
    import torch

    row: dict = {}
    try:
        t0 = time.perf_counter()
        cfg = peer_config(tiny)
        model = build_peer(method, cfg, device, scope)
        inputs = peer_inputs(cfg, tiny, device)
        with torch.inference_mode():
            model(**inputs)  # compiles (torch.compile is lazy)
            if device == "cuda":
                torch.cuda.synchronize()
        row["compile_s"] = round(time.perf_counter() - t0, 1)
        row.update({k: round(v, 3) for k, v in time_peer(model, inputs, iters, device).items()})
        if device == "cuda":
            row["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
        del model
    except Exception as e:  # noqa: BLE001 - a peer form that fails is a result, not a crash
        row = {"not_measured": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return row


def measure_form_isolated(method: str, iters: int, tiny: bool, scope: str | None, timeout_s: float) -> dict:
    """:func:`measure_form` in a child process killed after ``timeout_s``: the budget holds even while a compile runs
    (session 11: torchao's int8 form was still compiling when the device call's own timeout killed the whole run,
    and no row was written)."""
    try:
        proc, row = _child_json(["benchmarks.bench_peers", "--one", method, "--iters", str(iters)]
                                + (["--tiny"] if tiny else []) + (["--compile-scope", scope] if scope else [])
                                + ["--one-out"], timeout_s)
    except subprocess.TimeoutExpired:
        return {"not_measured": f"did not finish building, compiling and timing within the {timeout_s:.0f} s "
                                "left of the time budget (killed)"}
    if row is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"not_measured": f"the form's process exited with {proc.returncode}: {tail[0][:200]}"}
    return row


def run(methods: list[str], iters: int, budget_s: float, tiny: bool, out: Path, scope: str | None = None,
        base: float | None = None, isolate: bool = False) -> list[dict]:
    """Every form in ``methods``, rows written as they finish. ``isolate``: each form in a child process that gets
    what is left of ``budget_s`` (the GPU runs; in-process for the toy CPU run and tests)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    if base is None:
        base = project_bf16_ms(iters, tiny)
    print(f"project bf16 step: {base} ms", flush=True)
    env = environment_torch(device)
    rows: list[dict] = []
    for method in methods:
        row = {"model": "PixArt-XL/2 1024px (diffusers PixArtTransformer2DModel)" if not tiny
               else "PixArt [toy size]", "framework": "torch", "method": method,
               "compile_scope": compile_scope(method, scope), "batch": 2, "tiny": tiny, **env}
        left = budget_s - (time.perf_counter() - start)
        if left < 30:
            row["not_measured"] = f"time budget of {budget_s:.0f} s spent before this form started"
        elif isolate:
            row.update(measure_form_isolated(method, iters, tiny, scope, left))
        else:
            row.update(measure_form(method, iters, tiny, device, scope))
        if "median_ms" in row:
            row["ratio_vs_project_bf16"] = round(base / row["median_ms"], 3) if base else None
        row["project_bf16_ms"] = base
        print(json.dumps(row), flush=True)
        rows.append(row)
        write(rows, out)
    return rows


def write(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    env = rows[0]
    lines = ["# " + title(f"PyTorch peers, one PixArt-XL/2 1024 px CFG step (batch 2), {env['gpu']}, torch "
                          f"{env['torch_version']}, diffusers {env['diffusers_version']}, torchao "
                          f"{env['torchao_version']}, JAX {env['jax_version']}, {env['date']}", env["tiny"]),
             "", f"Project bf16 step in the same run: {env['project_bf16_ms']} ms "
                 "(`benchmarks.bench_e2e`, PixArt-α XL config). Ratio > 1: the peer is faster than the project's bf16.",
             "", "| method | step ms (median) | ratio vs project bf16 | compile s | peak GPU mem GiB |", "|---|---|---|---|---|"]
    for r in rows:
        if "not_measured" in r:
            lines.append(f"| {r['method']} | not measured: {r['not_measured']} | | | |")
            continue
        pm = f"{r['peak_memory_bytes'] / 2**30:.1f}" if r.get("peak_memory_bytes") else "n/a"
        ratio = f"{r['ratio_vs_project_bf16']:.2f}×" if r.get("ratio_vs_project_bf16") else "n/a"
        scope = f" ({r['compile_scope']})" if r.get("compile_scope") else ""
        lines.append(f"| {r['method']}{scope} | {r['median_ms']:.2f} | {ratio} | {r['compile_s']} | {pm} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (compiles included)")
    ap.add_argument("--tiny", action="store_true", help="toy config (CPU smoke run of the same code)")
    ap.add_argument("--out", help="result JSON (default benchmarks/results/peers.json, peers_tiny.json with --tiny)")
    ap.add_argument("--compile-scope", choices=("model", "blocks"), default=None,
                    help="what torch.compile wraps for every compile_* form (default: the model for compile_bf16, "
                         "each transformer block for the torchao forms)")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="each form in a child process killed when the budget runs out (default: on, off with --tiny)")
    ap.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # the child of --isolate
    ap.add_argument("--one-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--project-bf16-from", type=Path, metavar="E2E_JSON",
                    help="take the project's bf16 step from this bench_e2e JSON of the same GPU run instead of "
                         "measuring it again")
    args = ap.parse_args(argv)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "inductor"))
    if args.one:  # one form, in this process (the child of an isolated run)
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        args.one_out.write_text(json.dumps(measure_form(args.one, args.iters, args.tiny, device, args.compile_scope)))
        return 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"--methods: unknown {unknown}; known: {', '.join(METHODS)}")
    from benchmarks.common import results_path

    out = results_path(REPO / "benchmarks" / "results" / "peers.json", args.out, args.tiny)
    base = bf16_from_e2e(args.project_bf16_from) if args.project_bf16_from else None
    isolate = (not args.tiny) if args.isolate is None else args.isolate
    run(methods, args.iters, args.budget, args.tiny, out, args.compile_scope, base, isolate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
