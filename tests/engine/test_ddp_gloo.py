"""DDP on CPU (gloo, 2 processes through torchrun) reaches the weights of 1 process with twice the batch.

Why the equivalence is exact in principle: DistributedSampler gives rank r the samples r, r+2, ...
of the same seeded permutation, so the two ranks' batches of B together are exactly the single
process's batch of 2B; DDP averages the two ranks' mean-loss gradients, which equals the mean
over 2B. BatchNorm would break this (its batch statistics over B differ from those over 2B, and
SyncBatchNorm has no CPU kernel), so the test trains with --freeze-bn (BN uses its running
statistics, affine parameters still learn) and without random augmentation (each rank has its
own augmentation RNG stream). What remains is float summation order: tolerance 1e-5.
"""
import os
import subprocess
import sys

from safetensors.torch import load_file

from botnet.cli import main


def test_two_gloo_ranks_match_one_process_with_double_batch(tmp_path, tiny_train_args):
    args = tiny_train_args + ["--epochs", "1", "--max-steps", "5", "--freeze-bn", "--threads", "1",
                              "--set", "data.padding=0", "--set", "data.hflip=0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "botnet.cli",
           *args, "--batch-size", "16", "--output", str(tmp_path / "ddp")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "2 process(es) x batch 16" in r.stdout
    assert main(args + ["--batch-size", "32", "--output", str(tmp_path / "single")]) == 0
    init = tmp_path / "init"
    assert main(args + ["--batch-size", "32", "--max-steps", "1", "--set", "optim.lr=0.0", "--output", str(init)]) == 0
    a, b = load_file(tmp_path / "ddp" / "last.safetensors"), load_file(tmp_path / "single" / "last.safetensors")
    w0 = load_file(init / "last.safetensors")
    moved = max((a[k].float() - w0[k].float()).abs().max().item() for k in a if "running" not in k)
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert moved > 1e-3  # the weights did change
    assert diff < 1e-5
    # rank 0 alone wrote the run: one metrics file with one record per logged step, val reduced over ranks
    import json

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["final"]["raw"]["n"] == 64


def test_demo_under_torchrun_reports_once_and_ddp_does_not_warn_on_channels_last(tmp_path, tiny_train_args):
    """Rank 1 used to go on after training like rank 0 (attention maps, summary, the final line twice),
    and every channels_last backward made DDP warn about the attention weight's gradient strides."""
    out = tmp_path / "demo"
    args = ["demo", *tiny_train_args[1:], "--max-steps", "3", "--time-budget", "120", "--attention-images", "2",
            "--set", "train.channels_last=true", "--batch-size", "16", "--output", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "botnet.cli",
           *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "2 process(es) x batch 16" in r.stdout
    assert r.stdout.count("demo: top-1") == 1
    assert "Grad strides do not match" not in r.stderr
    assert len(list((out / "attention").glob("*.png"))) == 2
    import json

    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
