"""``python -m vidq_jax.train {t2i,t2v,c2i,features,prompts} ...``

Examples::

    python -m vidq_jax.train t2i --out runs/t2i                    # GPU defaults (20k steps, batch 128)
    python -m vidq_jax.train t2v --out runs/t2v                    # GPU defaults (20k steps, batch 32)
    python -m vidq_jax.train c2i --out runs/c2i                    # DiT on emoji categories (20k steps, batch 128)
    python -m vidq_jax.train t2i --tiny --out /tmp/t2i             # CPU smoke run (3 steps)
    python -m vidq_jax.train features --data emoji --out assets/feature_nets/emoji
    python -m vidq_jax.train prompts                               # re-encode the shipped prompt banks
    python -m vidq_jax.train captions t2i --out runs/t2i           # caption cache only (then train without torch)
    python -m vidq_jax.train estimate                              # steps/s here + FLOPs -> H100 estimate
    python -m vidq_jax.train eval-t2v runs/t2v/model --select-guidance 2,3,4,6 --write   # FP subject/motion acc.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, record, export in OUT/model)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke mode: tiny model, 3 steps, batch 4")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--steps-per-call", type=int, help="train steps fused per jitted call (0 = auto)")
    p.add_argument("--log-every", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--time-limit", type=float, help="stop after this many seconds (checkpoint + export); rerun to resume")
    p.add_argument("--fit-schedule", action="store_true",
                   help="with --time-limit: measure steps/s, then shorten the LR schedule so it completes in time")
    p.add_argument("--time-reserve", type=float, help="seconds of --time-limit kept for export/preview (default 20)")
    p.add_argument("--encoder", choices=["minilm", "hash"], default="minilm",
                   help="caption features: MiniLM (needs the text extra) or a torch-free hash stand-in (smoke tests); "
                        "c2i has no captions")
    p.add_argument("--model-size", help="t2v: named model size (s = the first shipped 4.1 M model, m = 9.3 M, default)")
    p.add_argument("--time-sampling", choices=["logit-normal", "uniform", "mixed", "mixed-high"],
                   help="t2v: distribution of the flow time in training (default mixed)")
    p.add_argument("--motion-loss", type=float,
                   help="t2v: weight of the loss on frame-to-frame differences of the velocity error (default 0: off)")
    p.add_argument("--init-from", type=Path,
                   help="start params + EMA from an exported model folder (fresh optimizer and schedule), e.g. the "
                        "OUT/model a previous device call brought back")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if OUT/ckpt exists")
    p.add_argument("--no-preview", action="store_true")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vidq_jax.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, hlp in (("t2i", "PixArt on emoji (DPM / epsilon)"), ("t2v", "STDiT3 on sprite clips (rectified flow)"),
                      ("c2i", "DiT on emoji categories (class-conditional, DDIM / epsilon)")):
        _train_args(sub.add_parser(name, help=hlp))
    pf = sub.add_parser("features", help="train a feature network of the quality metrics")
    pf.add_argument("--data", choices=["emoji", "video"], required=True)
    pf.add_argument("--out", required=True, type=Path)
    pf.add_argument("--steps", type=int, default=3000)
    pf.add_argument("--batch-size", type=int)
    pf.add_argument("--seed", type=int, default=0)
    pf.add_argument("--tiny", action="store_true")
    pc = sub.add_parser("captions", help="only encode and cache the task's caption features in OUT (run where the "
                        "text extra is installed, then carry OUT to the GPU machine)")
    pc.add_argument("task", choices=["t2i", "t2v"])
    pc.add_argument("--out", required=True, type=Path)
    pe = sub.add_parser("estimate", help="measure full-size train-step time here + FLOPs; extrapolate to an H100")
    pe.add_argument("--task", choices=["t2i", "t2v", "both"], default="both")
    pe.add_argument("--cpu-batch", type=int, default=4)
    pv = sub.add_parser("eval-t2v", help="subject / motion accuracy of a text-to-video export's FP samples "
                        "(video feature network); optionally pick its CFG scale")
    pv.add_argument("folder", type=Path, help="the exported model folder (OUT/model)")
    pv.add_argument("--select-guidance", default="", help="comma-separated CFG scales to choose from, e.g. 2,3,4,6")
    pv.add_argument("--write", action="store_true", help="store the chosen CFG scale in the folder's model.json")
    pv.add_argument("--features", default="video", help="feature network: 'video' (shipped) or a folder")
    pv.add_argument("--out", type=Path, help="report JSON (default: eval.json next to the folder)")
    pv.add_argument("--steps", type=int, help="sampler steps instead of the exported ones (smoke runs)")
    pp = sub.add_parser("prompts", help="encode the demo prompt banks into assets/ (needs the text extra)")
    pp.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    if args.cmd in ("t2i", "t2v", "c2i"):
        from vidq_jax.train.configs import default_train_config
        from vidq_jax.train.loop import train

        cfg = default_train_config(
            args.cmd, tiny=args.tiny, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
            ema_decay=args.ema_decay, seed=args.seed, dtype=args.dtype, steps_per_call=args.steps_per_call,
            log_every=args.log_every, ckpt_every=args.ckpt_every, time_limit=args.time_limit,
            fit_schedule=args.fit_schedule or None, time_reserve=args.time_reserve, model_size=args.model_size,
            init_from=str(args.init_from) if args.init_from else None, time_sampling=args.time_sampling,
            motion_loss=args.motion_loss,
        )
        train(cfg, args.out, encoder=args.encoder, resume=not args.no_resume, preview=not args.no_preview)
    elif args.cmd == "features":
        from vidq_jax.train.feature_net import train_emoji_features, train_video_features

        fn = train_emoji_features if args.data == "emoji" else train_video_features
        kw = {"batch": args.batch_size} if args.batch_size else {}
        info = fn(args.out, steps=args.steps, seed=args.seed, tiny=args.tiny, **kw)
        print({k: v for k, v in info.items() if k != "history"})
    elif args.cmd == "captions":
        from vidq_jax.train.configs import default_train_config
        from vidq_jax.train.tasks import build_task

        task = build_task(default_train_config(args.task), args.out)
        print(f"{args.out}/captions.npz, preview_prompts.npz: {task.data_info}")
    elif args.cmd == "estimate":
        import json

        from vidq_jax.train.estimate import measure

        for t in (["t2i", "t2v"] if args.task == "both" else [args.task]):
            print(json.dumps(measure(t, cpu_batch=args.cpu_batch, log=lambda s: None), indent=1))
    elif args.cmd == "eval-t2v":
        from vidq_jax.train.evaluate import evaluate_t2v

        try:
            scales = [float(g) for g in args.select_guidance.split(",") if g.strip()]
        except ValueError:
            ap.error(f"--select-guidance {args.select_guidance!r}: comma-separated numbers, e.g. 2,3,4,6")
        evaluate_t2v(args.folder, guidance=scales, write=args.write, out=args.out, features=args.features,
                     steps=args.steps)
    elif args.cmd == "prompts":
        from vidq_jax.train.prompts import write_prompt_banks

        for p in write_prompt_banks(args.out):
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
