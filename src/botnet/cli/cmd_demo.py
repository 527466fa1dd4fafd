"""``botnet demo``: train botnet_mini on Fashion-MNIST within a wall-clock budget (a GPU when there is one)."""
from __future__ import annotations

import argparse
import sys
import time

HELP = """Train the small BoT model (botnet_mini) on Fashion-MNIST and evaluate it on the 10,000 test
images, all within --time-budget seconds of wall time (default 590 on the CPU, 50 on a GPU, which
is used when there is one; training stops when the budget is reached and the cosine schedule is
fitted to it, so the run never overruns by more than one evaluation). Writes RUN (default runs/demo): best/last checkpoints usable by `botnet eval` and
`botnet predict`, metrics (TensorBoard, metrics.jsonl, metrics.csv), loss/accuracy curves,
confusion matrix, attention maps of a few test images and summary.json.

A folder that already holds a run is refused: --overwrite replaces it, --resume RUN continues it
(docs/run-folder.md).

Fashion-MNIST is read from /usr/share/datasets/fashion-mnist (apt-get install
dataset-fashion-mnist) or --data-dir; --download lets torchvision fetch it where there is internet.
Every `botnet train` option works here too."""


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="Fashion-MNIST demo: train + evaluate botnet_mini on the CPU in minutes",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    from botnet.cli.train_args import add_train_arguments

    add_train_arguments(p, task="classification", default_recipe="fashion-mnist")
    p.add_argument("--attention-images", type=int, default=4, metavar="N",
                   help="draw attention maps for the first N test images (default 4; 0 = none)")
    # 590 s of training keeps the whole command (start-up, final evaluation, attention maps) near 10 minutes
    p.set_defaults(func=handler, time_budget_default=590.0, gpu_time_budget_default=50.0, output_default="runs/demo",
                   preset=[], preset_label="botnet demo")


def handler(args) -> int:
    t0 = time.monotonic()
    from botnet.cli.cmd_train import is_main_process, prepare, run_training

    if args.time_budget is None and not any(s.startswith("train.time_budget=") for s in args.set):
        budget = args.gpu_time_budget_default if _uses_gpu(args) else args.time_budget_default
        args.preset = [*args.preset, f"train.time_budget={budget}"]
    resuming = args.resume not in (None, "auto")  # --resume RUN writes into RUN: no default folder then
    if args.output is None and not resuming and not any(s.startswith("output.dir=") for s in args.set):
        args.preset = [*args.preset, f"output.dir={args.output_default}"]
    cfg = prepare(args)
    if cfg is None:
        return 0
    rc, result = run_training(args, cfg)
    if rc != 0 or result is None or result["status"] == "already_finished" or not is_main_process():
        return rc  # under torchrun, rank 0 alone draws the attention maps and reports
    import json
    from pathlib import Path

    run = Path(cfg["output"]["dir"])
    from botnet.engine.run_folder import RunFolderLock

    with RunFolderLock(run):  # the run's folder stays ours while the demo adds its files
        if args.attention_images > 0:
            try:
                _attention_samples(run, cfg, args.attention_images)
            except Exception as e:  # the trained model is safe on disk; a plotting problem must not hide that
                print(f"warning: attention maps failed: {e}", file=sys.stderr)
        summary_path = run / "summary.json"
        summary = json.loads(summary_path.read_text())
        summary["demo_wall_seconds"] = round(time.monotonic() - t0, 2)
        from botnet.io.atomic import atomic_write_bytes

        atomic_write_bytes(summary_path, (json.dumps(summary, indent=2) + "\n").encode())
    fin = summary.get("final", {})
    best = max(fin.values(), key=lambda r: r["top1"]) if fin else None
    if best:
        tta = " (each image averaged with its mirror image)" if cfg["data"]["eval_tta"] == "hflip" else ""
        print(f"demo: top-1 {best['top1']:.2f}% on {best['n']:.0f} test images{tta} after {summary['epochs']:.2f} epochs, "
              f"wall time {summary['demo_wall_seconds']:.0f}s (budget {cfg['train']['time_budget']:.0f}s); "
              f"try: botnet predict {run}/samples/*.png --checkpoint {run}")
    return 0


def _uses_gpu(args) -> bool:
    from botnet.errors import resolve_device

    dev = args.device or next((s.split("=", 1)[1] for s in args.set if s.startswith("train.device=")), "auto")
    return resolve_device(dev.strip()).type == "cuda"


def _attention_samples(run, cfg: dict, n: int) -> None:
    import numpy as np
    from PIL import Image

    from botnet.data.fashion_mnist import CLASSES, load_fashion_mnist
    from botnet.viz.attention import attention_maps, plot_attention
    from botnet.classification.predict import load_for_inference

    images, labels = load_fashion_mnist("test", cfg["data"]["root"], cfg["data"]["download"])
    samples = run / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    model, transform, names, _ = load_for_inference(run)
    import torch

    with torch.no_grad():
        for i in range(min(n, len(images))):
            path = samples / f"test{i:05d}_{CLASSES[labels[i]].replace('/', '-').replace(' ', '-')}.png"
            Image.fromarray(images[i]).save(path)
            img = Image.open(path).convert("L")
            x = transform(img).unsqueeze(0)
            pred = model(x).softmax(1)[0]
            c = int(pred.argmax())
            q = (0.5, 0.5)
            maps = attention_maps(model, x, q)
            plot_attention(np.asarray(img, dtype=np.float32) / 255.0, maps, run / "attention" / f"{path.stem}.png", q,
                           title=f"true {CLASSES[labels[i]]}, predicted {names[c]} ({100 * float(pred[c]):.1f}%, one view)")
