"""Checkpoint files: atomic writes, architecture check with the mismatching keys, exact state round trip."""
import os

import pytest
import torch

import botnet
from botnet.engine import checkpoint as ckpt
from botnet.io import atomic
from botnet.io.weights import CheckpointMismatchError


def _model(name="botnet_mini", **kw):
    return botnet.create_model(name, num_classes=10, in_chans=1, img_size=28, **kw)


def test_round_trip_weights_optimizer_and_rng(tmp_path):
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.randn(2, 1, 28, 28)).sum().backward()
    opt.step()
    torch.manual_seed(123)
    p = ckpt.save_checkpoint(tmp_path / "last", m, optimizer=opt, epoch=3, step=42, arch="botnet_mini",
                             model_kwargs={"num_classes": 10, "in_chans": 1, "img_size": 28}, class_names=list("abcdefghij"))
    expected_next = torch.rand(3)
    assert p.name == "last.safetensors" and (tmp_path / "last.state.safetensors").is_file()
    m2 = _model()
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(999)
    info = ckpt.load_checkpoint(p, m2, optimizer=opt2)
    assert torch.equal(torch.rand(3), expected_next)  # RNG restored
    assert info["step"] == 42 and info["epoch"] == 3
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["momentum_buffer"], s2[k]["momentum_buffer"]) for k in s1)
    meta = ckpt.read_metadata(p)
    assert meta["arch"] == "botnet_mini" and meta["class_names"] == list("abcdefghij")


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m = _model()
    p = ckpt.save_checkpoint(tmp_path / "last.safetensors", m, step=1, arch="botnet_mini")
    before = {n: (tmp_path / n).read_bytes() for n in ("last.safetensors", "last.state.safetensors")}
    with torch.no_grad():
        for q in m.parameters():
            q.add_(1.0)

    import safetensors.torch

    real_save = safetensors.torch.save_file

    def crash(tensors, filename, metadata=None):  # the state is written, then the weights crash half-way
        if os.path.basename(filename).startswith(".last.state."):
            return real_save(tensors, filename, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(p, m, step=2, arch="botnet_mini")
    monkeypatch.undo()
    # both files are untouched (nothing is renamed before both new files are written), no temp files are left,
    # and the previous pair still resumes (step 1)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    assert sorted(os.listdir(tmp_path)) == ["last.safetensors", "last.state.safetensors"]
    m2 = _model()
    assert ckpt.load_checkpoint(p, m2)["step"] == 1
    assert ckpt.read_metadata(p)["step"] == 1


def test_crash_inside_atomic_write_leaves_target(tmp_path):
    target = tmp_path / "x.bin"
    atomic.atomic_write_bytes(target, b"old")

    def bad_writer(tmp):
        with open(tmp, "wb") as f:
            f.write(b"new but incomplete")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic.atomic_write(target, bad_writer)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]


def test_other_architecture_is_refused_with_keys(tmp_path):
    p = ckpt.save_checkpoint(tmp_path / "m", _model(), arch="botnet_mini")
    other = botnet.create_model("botnet_mini", num_classes=5, in_chans=1, img_size=28, layers=(1, 1, 1, 2))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as e:
        ckpt.load_weights(other, p)
    msg = str(e.value)
    assert "layer3.1." in msg  # a block the other model does not have
    assert "fc.weight" in msg and "(10, 512)" in msg  # shape mismatch listed with both shapes
    assert any(k.startswith("layer3.1") for k in e.value.unexpected)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # nothing loaded


def test_written_files_get_the_umask_mode_not_mkstemp_private(tmp_path):
    """Checkpoints, JSON files and exports are for others to read: the mode open() would give, not 0600."""
    import os
    import stat

    from botnet.export import _write_atomic
    from botnet.io.atomic import atomic_write_bytes

    import tempfile

    from botnet.io.atomic import make_shareable

    old = os.umask(0o022)
    try:
        a = atomic_write_bytes(tmp_path / "summary.json", b"{}")
        b = _write_atomic(tmp_path / "model.onnx", lambda tmp: open(tmp, "wb").write(b"x"))
        folder = tempfile.mkdtemp(dir=tmp_path)  # a publish is built in one, then swapped into place
        make_shareable(folder)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(b).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755
