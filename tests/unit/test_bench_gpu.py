"""The GPU benchmark's harness, run on the tiny models on the CPU: it must keep working where no GPU is lent, so
that it runs unchanged on the first CUDA machine that is."""

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_gpu_benchmark_harness_runs_on_the_tiny_models(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import gpu
    finally:
        sys.path.remove(str(BENCH))
    assert gpu.main(["--tiny", "--device", "cpu", "--json", str(tmp_path / "out.json"), "--cache",
                     str(tmp_path / "cache")]) == 0
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert {r["pipeline"] for r in rows} == {"SDXL", "SVD-XT"}
    assert all(r["seconds"] > 0 and r["max_abs_diff"] is not None for r in rows)
    sdpa = [r for r in rows if r["variant"] == "fp16 + SDPA"]
    assert all(r["max_abs_diff"] == 0 for r in sdpa)
    # the compiled runner's LoRA slot and IP-Adapter, rendered at rest through its own prepare: not a pixel changes
    [slots] = [r for r in rows if r["variant"] == "fp16 + SDPA + LoRA slot r128 + IP-Adapter, at rest"]
    assert slots["max_abs_diff"] == 0
    assert "| SDXL | fp16 + SDPA |" in capsys.readouterr().out


def test_gpu_benchmark_measures_batch_sizes_with_the_runner_settings(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import gpu
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "out.json"
    assert gpu.main(["--tiny", "--device", "cpu", "--pipelines", "", "--batches", "1,2", "--json", str(out),
                     "--cache", str(tmp_path / "cache")]) == 0
    figures = json.loads(out.read_text())
    assert figures["rows"] == []
    assert [b["batch"] for b in figures["batches"]] == [1, 2]
    assert figures["batches"][0]["speedup_vs_batch_1"] == 1.0
    assert all(b["images_per_s"] > 0 for b in figures["batches"])
    assert "| 2 |" in capsys.readouterr().out


def test_gpu_benchmark_measures_a_cold_start_through_the_runners_loading_code(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import gpu
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "out.json"
    assert gpu.main(["--tiny", "--device", "cpu", "--cold-start", "eager", "--json", str(out),
                     "--cache", str(tmp_path / "cache")]) == 0
    [row] = json.loads(out.read_text())["cold_starts"]
    assert row["scenario"] == "eager" and row["seconds_to_first_image"] > 0
    assert {"device", "load", "warmup"} <= set(row["phases"]) and row["artifacts"] == "not compiling"
    assert row["acceleration"]["compile"] == "off"
    assert "| eager |" in capsys.readouterr().out
    # the real-card scenarios (fp8 needs compute capability >= 8.9) are skipped here, never faked
    assert gpu.main(["--tiny", "--device", "cpu", "--cold-start", "fp8-regional-saved", "--json", str(out),
                     "--cache", str(tmp_path / "cache")]) == 0
    assert json.loads(out.read_text())["cold_starts"] == []
