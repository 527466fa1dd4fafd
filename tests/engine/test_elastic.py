"""Training that outgrows one machine, on one machine: two torchrun agents (multi-node), a worker killed and
restarted (elastic), and a resume on another number of processes (docs/classification.md).

Every job trains the same tiny botnet_mini on 256 Fashion-MNIST images, 2 processes x batch 16, 3 epochs of 8
steps, a checkpoint every 3 steps, gloo on the CPU. The two-node launch is the command of
docs/classification.md, its address replaced by 127.0.0.1 and a free port, with flags appended that make the
run tiny. The reference is the same training under one agent (``--standalone``); its rank 0 is killed right
after the final checkpoint, so it also shows that a kill after training has finished ends cleanly.
"""
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import botnet
from botnet.data import fashion_mnist as fm

DOCS = Path(__file__).resolve().parents[2] / "docs" / "classification.md"
SRC = str(Path(botnet.__file__).resolve().parents[1])
TINY = ["--limit-train", "256", "--limit-val", "64", "--epochs", "3", "--batch-size", "16", "--save-every-steps", "3",
        "--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress", "--no-plots",
        "--eval-every", "0", "--set", "train.log_every=1", "--threads", "1", "--deterministic", "--device", "cpu"]
STEPS, SAVES = 24, 12  # step 0's save, 8 every 3 steps, 3 at the ends of epochs: the 12th is the last
needs_data = pytest.mark.skipif(fm._complete(fm.SYSTEM_DIR) is None, reason="Fashion-MNIST not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _doc_command() -> tuple[list[str], list[str]]:
    """The two-node command of docs/classification.md: (torchrun's options, the training command's arguments)."""
    text = DOCS.read_text()
    m = re.search(r"^torchrun --nnodes 2 .*?(?<!\\)$", text, re.M | re.S)
    assert m, "docs/classification.md shows no 'torchrun --nnodes 2' command"
    args = shlex.split(m.group(0).replace("\\\n", " "))
    cut = args.index("-m")
    assert args[cut + 1:cut + 3] == ["botnet.cli", "train"], args
    return args[1:cut], args[cut + 3:]


def _train_args(run: Path) -> list[str]:
    """The documented training command, made tiny, writing into ``run``."""
    _, train = _doc_command()
    i = train.index("--output")
    return [*train[:i], *train[i + 2:], *TINY, "--output", str(run)]


def _env(**more) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", **more}


class Job:
    """torchrun agents started together; every process group is killed if the test ends early."""

    def __init__(self, launches: list[list[str]], train: list[str], env: dict):
        self.agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launch, "-m", "botnet.cli",
                                         "train", *train], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True) for launch in launches]
        self.output = [""] * len(self.agents)
        self.readers = [threading.Thread(target=self._read, args=(i,), daemon=True) for i in range(len(self.agents))]
        for t in self.readers:
            t.start()

    def _read(self, i: int) -> None:
        self.output[i] = self.agents[i].stdout.read()

    def workers(self) -> dict[int, int]:
        """rank -> pid of the training processes (the agents' children; not their DataLoader workers)."""
        agents, found = {a.pid for a in self.agents}, {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            rank = [e[5:] for e in env if e.startswith(b"RANK=")]
            if ppid in agents and rank:
                found[int(rank[0])] = int(pid)
        return found

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [a.wait(timeout=max(deadline - time.monotonic(), 0.1)) for a in self.agents]
        finally:
            self.close()

    def close(self) -> None:
        for a in self.agents:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
                a.wait()
        for t in self.readers:
            t.join(timeout=10)

    @property
    def log(self) -> str:
        return "\n".join(self.output)


def _logged_step(run: Path) -> int:
    try:
        return max((json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines() if ln), default=0)
    except (OSError, ValueError, KeyError):
        return 0


def _kill_at(job: Job, run: Path, step: int, rank: int, timeout: float = 120) -> int:
    """SIGKILL the training process of ``rank`` once rank 0 has logged ``step``; returns the step logged then."""
    deadline, pid = time.monotonic() + timeout, None
    while time.monotonic() < deadline and all(a.poll() is None for a in job.agents):
        now = _logged_step(run)
        if pid is None and (run / "metrics.jsonl").is_file():
            pid = job.workers().get(rank)  # looked up once, before the step comes: the kill follows at once
        if pid is not None and now >= step:
            os.kill(pid, signal.SIGKILL)
            return now
        time.sleep(0.02)
    raise AssertionError(f"the job never reached step {step}:\n{job.log[-3000:]}")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "last.safetensors")


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One agent, two processes; rank 0 is killed right after the final checkpoint, before the final evaluation."""
    if fm._complete(fm.SYSTEM_DIR) is None:
        pytest.skip("Fashion-MNIST not installed")
    run = tmp_path_factory.mktemp("elastic") / "reference"
    job = Job([["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"]], _train_args(run),
              _env(BOTNET_FAULT_KILL_AT=f"done:{SAVES}"))
    rcs = job.wait(timeout=240)
    return run, rcs, job.log


@needs_data
def test_a_kill_after_training_finished_ends_cleanly(reference):
    """The restarted workers find every step done: they evaluate, write the summary and exit 0 together."""
    run, rcs, log = reference
    assert rcs == [0], log[-4000:]
    assert "exitcode: -9" in log and log.count("train.amp: auto -> none") == 2, log[-4000:]  # killed, restarted
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS and summary["world_size"] == 2
    assert summary["final"]["raw"]["n"] == 64
    assert not (run / ".botnet.lock").exists()


def _two_agents(run: Path) -> Job:
    launch, _ = _doc_command()
    endpoint = f"127.0.0.1:{_free_port()}"
    launch = [endpoint if a == "node0.example:29400" else a for a in launch]
    launch[launch.index("--rdzv_id") + 1] = f"test-{os.getpid()}-{run.name}"
    assert endpoint in launch
    return Job([launch, launch], _train_args(run), _env())


@needs_data
def test_two_agents_train_as_one_agent_with_two_processes(reference, tmp_path):
    ref = reference[0]
    job = _two_agents(tmp_path / "two")
    rcs = job.wait(timeout=240)
    assert rcs == [0, 0], job.log[-4000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    assert _max_diff(_weights(ref), _weights(tmp_path / "two")) <= 1e-5


@needs_data
@pytest.mark.parametrize("agents", [1, 2])
def test_a_worker_killed_mid_run_is_restarted_and_the_run_ends_bit_identical(reference, tmp_path, agents):
    """A SIGKILL of either rank at a random step: torchrun restarts the group, every rank continues from the last
    complete checkpoint (no flag: --resume auto is the default under --max-restarts), the steps after it are
    redone, and the weights equal the uninterrupted run's bit for bit (data order, each rank's RNG, schedule)."""
    ref = reference[0]
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    step, rank = rng.randrange(1, 17), rng.randrange(2)  # at step 1 or 2 no save has been made yet but step 0's
    run = tmp_path / "run"
    if agents == 1:
        job = Job([["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"]], _train_args(run), _env())
    else:
        job = _two_agents(run)
    try:
        at = _kill_at(job, run, step, rank)
    finally:
        rcs = job.wait(timeout=240)
    why = f"(seed {seed}: rank {rank} killed at step {at})\n{job.log[-4000:]}"
    assert rcs == [0] * agents, why
    resumed = [int(s) for s in re.findall(r"resumed from \S+: epoch \d+, step (\d+)", job.log)]
    # once, from a save (step 0's, or one every 3 steps), while steps were left to train
    assert len(resumed) == 1 and resumed[0] % 3 == 0 and resumed[0] < STEPS and at < STEPS, why
    assert json.loads((run / "summary.json").read_text())["steps"] == STEPS
    a, b = _weights(ref), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a), f"max diff {_max_diff(a, b)} {why}"


# ----------------------------------------------------------------------------- another number of processes
SAME_MATH = ["--limit-train", "256", "--limit-val", "64", "--epochs", "2", "--batch-size", "16",
             "--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress", "--no-plots",
             "--eval-every", "0", "--set", "train.log_every=1", "--threads", "1", "--device", "cpu",
             # BatchNorm statistics and per-rank augmentation differ with the split of a batch; nothing else does
             "--freeze-bn", "--set", "data.padding=0", "--set", "data.hflip=0"]


def _order(epoch: int, n: int = 256, seed: int = 0) -> list[int]:
    """An epoch's sample order as DistributedSampler defines it (a permutation seeded by seed + epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


@needs_data
def test_a_run_saved_on_two_processes_continues_its_epoch_on_one(tmp_path, monkeypatch, capsys):
    """2 processes x batch 16 stop after 5 of the epoch's 8 steps; 1 process resumes: batch 16 x 2 accumulation
    steps keep the global batch of 32, it trains on exactly the 96 samples the epoch had left, each once, then on
    the next epoch, and it ends on the weights of one process with batch 32 throughout."""
    from botnet.cli import main
    from botnet.data.builder import ResumableSampler

    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "botnet.cli", "train", *SAME_MATH, "--max-steps", "5", "--output", str(run)],
                       env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    seen: dict[int, list[int]] = {}
    handed_out = ResumableSampler.__iter__

    def record(self):
        for i in handed_out(self):
            seen.setdefault(self.epoch, []).append(i)
            yield i

    monkeypatch.setattr(ResumableSampler, "__iter__", record)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=null"]) == 0
    assert "global batch 32 kept as 1 x batch 16 x 2 accumulation step(s)" in capsys.readouterr().out
    assert seen[0] == _order(0)[5 * 32:] and seen[1] == _order(1)
    monkeypatch.undo()
    assert main(["train", *SAME_MATH, "--batch-size", "32", "--output", str(tmp_path / "one")]) == 0
    a, b = _weights(run), _weights(tmp_path / "one")
    assert json.loads((run / "summary.json").read_text())["steps"] == 16
    assert _max_diff(a, b) <= 1e-5


@pytest.mark.parametrize("was, now", [(2, 1), (2, 4), (4, 2), (1, 8)])
def test_the_rest_of_an_epoch_splits_over_any_number_of_processes(was, now):
    """After k steps of a global batch G on `was` processes, `now` processes skipping k x G / now samples each
    take exactly the samples the epoch has left: none twice, none left out, and no rank with more steps."""
    from torch.utils.data import TensorDataset

    from botnet.data.builder import ResumableSampler
    from botnet.engine.trainer import fit_global_batch

    n, g, k = 200, 32, 3
    ds = TensorDataset(torch.arange(n))
    order = _order(7, n)
    done = []
    for r in range(was):
        s = ResumableSampler(ds, num_replicas=was, rank=r, shuffle=True, seed=0, drop_last=True)
        s.set_epoch(7)
        done += list(s)[: k * g // was]
    assert sorted(done) == sorted(order[: k * g])
    batch, accum = fit_global_batch(g, now, 16)
    rest = []
    for r in range(now):
        s = ResumableSampler(ds, num_replicas=now, rank=r, shuffle=True, seed=0, drop_last=True)
        s.set_epoch(7)
        s.skip(k * g // now)
        mine = list(s)
        assert len(mine) // (batch * accum) == n // g - k  # the same number of steps on every rank
        rest += mine[: (n // g - k) * batch * accum]
    assert sorted(done + rest) == sorted(order[: (n // g) * g])


def test_the_global_batch_is_kept_by_accumulation_or_refused_in_one_line():
    from botnet.engine.trainer import fit_global_batch
    from botnet.errors import ConfigError

    assert fit_global_batch(32, 1, 16) == (16, 2)
    assert fit_global_batch(32, 4, 16) == (8, 1)
    assert fit_global_batch(48, 1, 20) == (16, 3)  # never above the batch a process was given
    assert fit_global_batch(24, 1, 7) == (6, 4)
    with pytest.raises(ConfigError, match=r"global batch of 32 does not split evenly over them; use 1, 2, 4, 8, 16, "
                                          r"32 processes"):
        fit_global_batch(32, 3, 16)


# ----------------------------------------------------------------------------- the pieces
def test_each_worker_generation_agrees_on_a_fresh_key_prefix():
    """The store outlives the workers and keeps the last generation's keys; a new generation whose rank 0 comes
    last must not take the old token (that is what sent restarted workers to dead peers)."""
    import datetime

    import torch.distributed as dist

    from botnet.engine.distributed import _agree_on_token

    timeout = datetime.timedelta(seconds=30)
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timeout)

    def generation(n: int, rank0_delay: float) -> list[str]:
        tokens = [""] * n

        def worker(r: int) -> None:
            if r == 0:
                time.sleep(rank0_delay)
            client = dist.TCPStore("127.0.0.1", server.port, is_master=False, timeout=timeout)
            tokens[r] = _agree_on_token(client, r, n, 30)

        threads = [threading.Thread(target=worker, args=(r,)) for r in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return tokens

    first = generation(3, 0.0)
    second = generation(3, 0.5)
    assert len(set(first)) == 1 and len(set(second)) == 1 and all(first + second)
    assert first[0] != second[0]


@needs_data
def test_an_elastic_job_saves_before_it_writes_anything_else(tmp_path, monkeypatch):
    """A job restarted before its first save must find a checkpoint of its own, not a folder holding a run
    (config.json, metrics), which a new run refuses: under --max-restarts a run saves at step 0 first."""
    from botnet.cli import main
    from botnet.engine import checkpoint as ckpt
    from botnet.engine.run_folder import existing_run_files
    from botnet.io import atomic

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    run, at_saves = tmp_path / "r", []
    monkeypatch.setattr(atomic, "fault_hook", lambda point: point == "done" and at_saves.append(
        (ckpt.read_metadata(run / "last.safetensors")["step"], existing_run_files(run))))
    assert main(["train", *SAME_MATH, "--max-steps", "2", "--output", str(run)]) == 0
    assert at_saves[0] == (0, ["last.safetensors", "last.state.safetensors"])
    assert at_saves[-1][0] == 2


@needs_data
def test_overwrite_is_refused_under_an_elastic_launch(tmp_path, monkeypatch, capsys):
    """A restarted worker would replace the run it is to continue."""
    from helpers import assert_one_line_error, run

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    rc, _, err = run(capsys, ["train", *SAME_MATH, "--overwrite", "--output", tmp_path / "r"])
    assert_one_line_error(rc, err, "--overwrite cannot be used under torchrun --max-restarts")
    assert not (tmp_path / "r").exists()
