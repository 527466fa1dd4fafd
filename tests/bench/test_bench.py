"""The benchmark machinery: well-formed results from the CLI, interleaving, memory."""
from __future__ import annotations

import json
import math

import pytest
import torch

import botnet.cli
from botnet.bench.cases import build_step
from botnet.bench.core import measure_peak_memory, time_interleaved


def test_cli_bench_writes_well_formed_results(tmp_path):
    rc = botnet.cli.main([
        "bench", "--suite", "attention", "--attn-sizes", "6:1", "--attn-dim", "32", "--attn-heads", "2",
        "--attn-modes", "fwd,fwdbwd", "--repeats", "2", "--warmup", "1", "--out", str(tmp_path), "--name", "tiny",
    ])
    assert rc == 0
    doc = json.loads((tmp_path / "tiny.json").read_text())
    meta = doc["meta"]
    for key in ("date_utc", "command", "machine", "warmup", "repeats", "load_before", "load_after"):
        assert key in meta, key
    assert meta["machine"]["logical_cpus"] >= 1 and meta["machine"]["torch"] == torch.__version__
    res = doc["results"]
    assert [r["name"] for r in res] == ["attn 6x6 b1 fwd", "attn 6x6 b1 fwdbwd"]
    for r in res:
        assert "error" not in r, r.get("error")
        assert r["ours"]["model"] == "attn:botnet" and r["baseline"]["model"] == "attn:timm"
        for who in ("ours", "baseline"):
            ts = r[who]["times_s"]
            assert len(ts) == 2 and all(t > 0 and math.isfinite(t) for t in ts)
            assert r[who]["median_s"] == sorted(ts)[0] + (sorted(ts)[1] - sorted(ts)[0]) / 2
            assert isinstance(r[who]["memory"]["peak_bytes"], int) and r[who]["memory"]["peak_bytes"] >= 0
        assert math.isclose(r["time_ratio"], r["ours"]["median_s"] / r["baseline"]["median_s"])
        assert "mem_ratio" in r or r["baseline"]["memory"]["peak_bytes"] == 0
    md = (tmp_path / "tiny.md").read_text()
    assert "| attention | attn 6x6 b1 fwd |" in md and meta["date_utc"] in md
    assert (tmp_path / "tiny.png").stat().st_size > 1000


def test_time_interleaved_alternates_and_counts():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_interleaved(steps, warmup=1, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_peak_memory_sees_the_materialised_logits():
    # timm builds (B*heads, N, N) logits: 2*2*1024^2 floats = 16 MiB each; the fused layer does not.
    cfg = dict(mode="fwd", size=32, batch=2, dim=32, heads=2)
    theirs = measure_peak_memory(dict(cfg, model="attn:timm"))
    ours = measure_peak_memory(dict(cfg, model="attn:botnet"))
    assert theirs["peak_bytes"] >= 16 * 2**20, theirs
    assert ours["peak_bytes"] < theirs["peak_bytes"] / 4, (ours, theirs)


def test_build_step_modes_run():
    for cfg in (dict(model="attn:botnet", mode="fwdbwd", size=4, batch=1, dim=16, heads=2),
                dict(model="botnet:botnet_mini", mode="train", size=28, batch=2, model_kwargs={"in_chans": 3}),
                dict(model="botnet:botnet_mini", mode="infer", size=28, batch=2, channels_last=True, bf16=True)):
        build_step(cfg)()


# --------------------------------------------------------------------------- devices and the GPU plan
def _bench_args(argv):
    import argparse

    from botnet.cli import cmd_bench

    parser = argparse.ArgumentParser()
    cmd_bench.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_gpu_plan_covers_every_gpu_table():
    from botnet.bench.gpu_plan import PLAN, bench_args
    from botnet.cli.cmd_bench import _comparisons

    names, configs = {}, []
    for section, args in PLAN:
        parsed = _bench_args(bench_args(section, args, "out"))
        assert parsed.device == "cuda" and parsed.preset == "gpu" and parsed.name == f"gpu-{section}"
        comps, _ = _comparisons(parsed, "cuda")
        names[section] = [c.name for c in comps]
        configs += [c.ours for c in comps] + [c.baseline for c in comps]
    assert {c["device"] for c in configs} == {"cuda"}
    attn = names["attention-bf16"]
    for size in ("14x14 b128", "32x32 b32", "64x64 b8", "50x84 b4", "72x72 b4"):
        for mode in ("fwd", "fwdbwd"):
            for impl in ("auto", "sdpa", "explicit"):
                assert f"attn {size} {mode} [{impl}]" in attn
                assert mode == "fwd" or f"attn {size} {mode} [{impl}]" in names["attention-fp32"]
    assert {"train 224px b128", "train 1024px b8"} <= set(names["backbone"])
    assert {"T3@224 vs B3@300 train b32", "T5@256 vs B5@456 train b32", "T7@384 vs B7@600 train b32"} <= set(
        names["efficientnet"])
    assert "train step 1024px b2 (same builder)" in names["maskrcnn"]
    assert names["attention-flex"] == ["attn 64x64 b8 fwdbwd [flex]", "attn 50x84 b4 fwdbwd [flex]"]


def test_gpu_plan_summary_lists_rows_and_skipped_sections(tmp_path):
    from botnet.bench.gpu_plan import summarize

    rc = botnet.cli.main(["bench", "--attn-sizes", "3x4:1", "--attn-dim", "16", "--attn-heads", "2", "--attn-modes",
                          "fwd", "--attn-impl", "sdpa,explicit", "--repeats", "1", "--no-memory", "--out", str(tmp_path),
                          "--name", "gpu-attention-bf16"])
    assert rc == 0
    md = summarize(tmp_path, ["attention-bf16", "backbone"], ["backbone"], [], 12.0).read_text()
    assert "| attention | attn 3x4 b1 fwd [sdpa] |" in md and "| attn 3x4 b1 fwd [explicit] |" in md
    assert "skipped (budget spent): backbone" in md
    doc = json.loads((tmp_path / "gpu-summary.json").read_text())
    assert [r["section"] for r in doc["results"]] == ["attention-bf16"] * 2 and doc["meta"]["skipped_sections"] == ["backbone"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_script_and_plan_fail_cleanly_without_cuda(tmp_path, capsys):
    import subprocess
    from pathlib import Path

    from botnet.bench.gpu_plan import main

    assert main([str(tmp_path / "out")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.sh"
    proc = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bench_reports_synchronised_times_and_cuda_peak_memory(tmp_path):
    rc = botnet.cli.main(["bench", "--device", "cuda", "--attn-sizes", "16:2", "--attn-dim", "64", "--attn-heads", "2",
                          "--repeats", "2", "--bf16", "--out", str(tmp_path), "--name", "cuda"])
    assert rc == 0
    doc = json.loads((tmp_path / "cuda.json").read_text())
    assert doc["meta"]["device"] == "cuda" and doc["meta"]["machine"]["gpu_used"]
    for r in doc["results"]:
        assert "max_memory_allocated" in r["ours"]["memory"]["method"] and r["ours"]["memory"]["peak_bytes"] > 0


def test_non_square_attention_step_runs_each_impl():
    for impl in ("sdpa", "explicit"):
        build_step(dict(model="attn:botnet", impl=impl, mode="fwdbwd", size=[3, 5], batch=1, dim=16, heads=2))()
    build_step(dict(model="attn:timm", mode="fwdbwd", size=[3, 5], batch=1, dim=16, heads=2))()


def test_data_suite_reports_images_per_second_per_core(tmp_path):
    rc = botnet.cli.main(["bench", "--suite", "data", "--data-images", "8", "--repeats", "1", "--warmup", "0",
                          "--out", str(tmp_path), "--name", "data"])
    assert rc == 0
    doc = json.loads((tmp_path / "data.json").read_text())
    rows = {r["name"]: r for r in doc["results"]}
    assert len(rows) == 3 and not any("error" in r for r in rows.values())
    for r in rows.values():
        for who in ("ours", "baseline"):
            assert r[who]["images"] == 8 and math.isclose(r[who]["images_per_s"], 8 / r[who]["median_s"])
    assert {r["baseline"]["model"] for r in rows.values()} == {"data:folder", "data:timm-wds"}
    md = (tmp_path / "data.md").read_text()
    assert "Images per second per CPU core" in md and "| shards (botnet) |" in md


def test_data_suite_refuses_a_set_the_batches_do_not_cover():
    from botnet.bench.data import build_data_step

    step = build_data_step(dict(model="data:folder", mode="train", images=40, batch=32, size=32))
    with pytest.raises(ValueError, match="loaded 32 of 40 images"):
        step()


# --------------------------------------------------------------------------- the export suite (ONNX Runtime)
def _tiny_onnx(path, quadratic: bool):
    """images (B, 3, S, S) -> (B,); with ``quadratic`` the run also builds a (3S^2, 3S^2) tensor, as an
    export that materialises N x N logits would."""
    import numpy as np

    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["images", "axes"], ["out"], keepdims=0)]
    consts = [numpy_helper.from_array(np.array([1, 2, 3]), "axes")]
    if quadratic:  # (B, 3S^2)^T @ (B, 3S^2)
        consts.append(numpy_helper.from_array(np.array([0, -1]), "flat"))
        nodes = [helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=0),
                 helper.make_node("Reshape", ["images", "flat"], ["x2"]),
                 helper.make_node("Transpose", ["x2"], ["x2t"]),
                 helper.make_node("MatMul", ["x2t", "x2"], ["big"]),
                 helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
                 helper.make_node("Add", ["mean", "total"], ["out"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, "h", "w"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return str(path)


def test_onnx_memory_is_the_first_run_above_the_loaded_session(tmp_path):
    # 2 images of 3x32x32 -> a (3072, 3072) float32 intermediate: 36 MiB, which the first run holds
    cfg = dict(mode="infer", size=32, batch=2, threads=1, measure_first_step=True)
    big = measure_peak_memory(dict(cfg, model="onnx:tiny", onnx_path=_tiny_onnx(tmp_path / "q.onnx", True)))
    small = measure_peak_memory(dict(cfg, model="onnx:tiny", onnx_path=_tiny_onnx(tmp_path / "l.onnx", False)))
    assert big["peak_bytes"] >= 3072 * 3072 * 4, big
    assert small["peak_bytes"] < 3072 * 3072, small


def test_export_suite_compares_botnet50_with_resnet50_in_onnx_runtime(tmp_path, monkeypatch):
    from botnet.bench import cases
    from botnet.bench.runner import run_comparisons

    exported = []

    def fake_export(names, *, attention, opset):  # the real export is tested in tests/export
        exported.append((tuple(names), attention, opset))
        return {n: _tiny_onnx(tmp_path / f"{n}.onnx", n == "botnet50") for n in names}

    monkeypatch.setattr(cases, "export_onnx_files", fake_export)
    comps = cases.make_suite("export")
    assert exported == [(("botnet50", "resnet50"), "scan", None)]
    assert [c.name for c in comps] == ["control: 224px b8", "224px b8", "640px b1", "1024px b1"]
    assert [c.targets for c in comps] == [{}, {"time": 1.05}, {}, {"time": 1.25, "mem": 1.3}]
    assert comps[0].ours["model"] == comps[0].baseline["model"] == "onnx:resnet50" and not comps[0].memory
    for c in comps[1:]:
        assert (c.ours["model"], c.baseline["model"]) == ("onnx:botnet50", "onnx:resnet50")
        assert c.ours["measure_first_step"] and c.ours["threads"] == torch.get_num_threads()
    # another route has no targets (they are set for the scan export)
    assert all(not c.targets for c in cases.make_suite("export", attention="sdpa", opset=23))
    # the steps run (memory: previous test)
    res = run_comparisons(cases.make_suite("export", cases=((32, 2, {"time": 5.0}),)), warmup=1, repeats=2,
                          memory=False, log=lambda *_: None)
    assert [r["name"] for r in res] == ["control: 32px b2", "32px b2"] and all("error" not in r for r in res)
    assert res[1]["target_met"] == {"time": res[1]["time_ratio"] <= 5.0} and len(res[1]["ours"]["times_s"]) == 2


def test_cli_bench_refuses_an_opset_the_exporter_cannot_write(tmp_path, capsys):
    rc = botnet.cli.main(["bench", "--suite", "export", "--onnx-opset", "30", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--onnx-opset 30" in err[0] and not any(tmp_path.iterdir())


def test_cli_export_suite_writes_results_without_the_temporary_folder(tmp_path, monkeypatch):
    from botnet.bench import cases

    monkeypatch.setattr(cases, "export_onnx_files",
                        lambda names, **_: {n: _tiny_onnx(tmp_path / f"{n}.onnx", False) for n in names})
    rc = botnet.cli.main(["bench", "--suite", "export", "--repeats", "1", "--warmup", "0", "--no-memory",
                          "--out", str(tmp_path / "out"), "--name", "export"])
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "export.json").read_text())
    assert [r["name"] for r in doc["results"]] == ["control: 224px b8", "224px b8", "640px b1", "1024px b1"]
    assert {r[w]["onnx_path"] for r in doc["results"] for w in ("ours", "baseline")} == {"botnet50.onnx", "resnet50.onnx"}
    assert "| export (ONNX Runtime) | 1024px b1 | botnet50 (ONNX Runtime" in (tmp_path / "out" / "export.md").read_text()
