"""Benchmarks and quality reports, run as modules from the repository root::

    python -m benchmarks.bench_linear      # fused linears vs XLA bf16 (GPU)
    python -m benchmarks.bench_e2e         # one denoising step, bf16 vs W8A8 / W4A8 (GPU; --tiny on CPU)
    python -m benchmarks.profile_step      # GPU kernel time of that step by kernel kind
    python -m benchmarks.bench_parts       # quantizer / attention / qkv micro-benchmarks (GPU)
    python -m benchmarks.bench_bf16_video  # bf16 latency of the video DiTs (GPU; --tiny on CPU)
    python -m benchmarks.quant_report      # every preset on the fixture models (CPU)
    python -m benchmarks.quality           # sample quality of every preset on the bundled models
    python -m benchmarks.quality_ablation  # factor ablation of the quality table

``python -m`` from the repository root puts the root on ``sys.path``; the modules never edit it.
Shared pieces: :mod:`benchmarks.common` (timing, environment record) and :mod:`benchmarks.xl_step`
(the XL denoising step that ``bench_e2e`` times and ``profile_step`` profiles). Results go to
``benchmarks/results/``.
"""
