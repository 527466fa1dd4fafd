"""The benchmark machinery: well-formed results from the CLI, interleaving, memory, equivalence."""
from __future__ import annotations

import json
import math

import torch

import botnet.cli
from botnet.bench.cases import attention_equivalence, build_step
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
    assert meta["attention_equivalence"]["max_abs_diff"] < 1e-10
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


def test_attention_equivalence_with_timm_is_sensitive():
    eq = attention_equivalence(size=5, dim=32, heads=2, batch=1)
    assert eq["max_abs_diff"] < 1e-10
    assert eq["max_abs_diff_without_position_term"] > 1e-4  # the check would see a wrong position term


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
