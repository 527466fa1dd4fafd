"""benchmarks/onnx_attention_layer.py: its fused-kernel variant computes the same layer as the Scan
export (else its bound on a fused kernel would mean nothing), and it writes what it measured."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")


def _script():
    spec = importlib.util.spec_from_file_location(
        "onnx_attention_layer", Path(__file__).resolve().parents[2] / "benchmarks" / "onnx_attention_layer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_layer_benchmark_checks_the_fused_variant_and_writes_results(tmp_path, capsys):
    rc = _script().main(["--grid", "6", "--dim", "32", "--heads", "4", "--rounds", "3",
                         "--out", str(tmp_path), "--name", "layer"])
    assert rc == 0
    doc = json.loads((tmp_path / "layer.json").read_text())
    assert doc["grid"] == 6 and set(doc["ratio_to_scan"]) == {"scan", "mha-relative", "mha-plain"}
    assert doc["ratio_to_scan"]["scan"] == 1.0 and all(v > 0 for v in doc["median_ms"].values())
    # float32 throughout; without the position terms, or with a table flipped, the output moves by 1e-3 here
    assert doc["max_abs_diff"]["scan"] < 1e-5 and doc["max_abs_diff"]["mha-relative"] < 1e-5
    assert "| mha-relative |" in (tmp_path / "layer.md").read_text()


def test_layer_benchmark_rejects_bad_options(capsys):
    assert _script().main(["--dim", "30", "--heads", "4"]) == 2
    assert "divisible" in capsys.readouterr().err
