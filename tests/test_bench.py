"""The benchmark harness (salt_jax.bench): plan order, timing windows, tables, and one real CPU run.

The real run measures the tiny model (batch 2, one timed iteration) through the CLI, in child
processes as on a GPU, into a temporary results file, and checks every JSON line it wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from salt_jax import bench

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[1]


def test_plan_puts_the_bf16_train_steps_first_and_torch_compile_last():
    plan = bench.build_plan(["50", "101"], [32, 64], ["f32", "bf16"], ["jax", "torch"],
                            ["train_step", "inference"], ["native", "dense"], list(bench.TORCH_VARIANTS))
    first = plan[:8]
    assert all((c.framework, c.task, c.precision) == ("jax", "train_step", "bf16") for c in first)
    # native and dense side by side per (model, batch): a deadline never leaves a pair half done
    assert [c.grouped_impl for c in first] == ["native", "dense"] * 4
    assert [(c.model, c.batch) for c in first[::2]] == [("50", 32), ("50", 64), ("101", 32), ("101", 64)]
    assert all(c.variant == "compile" for c in plan[-8:])
    assert len(plan) == len(set(plan))
    # jax: train 2 precisions x 2 impls + inference 2 precisions; torch: 3 variants x 2 tasks; x 4 (model, batch)
    assert len(plan) == (4 + 2 + 6) * 4


def test_time_windows_counts_images_over_each_window_and_syncs_each_one():
    calls = {"step": 0, "sync": 0}

    def step():
        calls["step"] += 1

    def sync():
        calls["sync"] += 1

    median, rates, iters = bench.time_windows(step, sync, batch=4, timing=bench.Timing(warmup=2, windows=3, iters=5))
    assert (iters, len(rates), calls["step"]) == (5, 3, 2 + 3 * 5)
    assert calls["sync"] == 1 + 3  # after the warm-up, then once per window
    assert median == sorted(rates)[1] and median > 0


def _record(framework, impl, ips, **extra):
    return {"device": "GPU X", "task": "train_step", "model": "50", "framework": framework, "variant": "jit",
            "precision": "bf16", "batch": 32, "grouped_impl": impl, "images_per_s": ips, "date": "2026-01-01T00:00:00",
            "flops_per_image": 2e11, "tflops": 2e11 * (ips or 0) / 1e12, "frac_of_peak": 0.1, "peak_mem_gib": 3.0,
            **extra}


def test_recommendation_and_table_use_the_newest_line_per_configuration():
    records = [_record("jax", "native", 100.0), _record("jax", "dense", 300.0), _record("jax", "native", 400.0)]
    line = bench.recommendation(records, "GPU X")
    assert "'native'" in line and "1/1" in line and "x1.33" in line
    table = bench.render_table(records + [_record("torch", None, None, error="RuntimeError: boom", variant="compile")])
    rows = [r for r in table.splitlines() if r.startswith("| GPU X")]
    assert len(rows) == 3  # native twice -> newest only; dense; the failed torch row
    assert any("| 400.0 |" in r and "| 80.0 |" in r for r in rows)  # images/s and ms/step = 32 / 400 s
    assert any("failed: RuntimeError: boom" in r for r in rows)


def test_fold_record_names_the_encoder_initialisation(tmp_path):
    """A fold trained without --pretrained is labelled "random"; with it, by the source weights."""
    imagenet = tmp_path / "imagenet"
    (imagenet / "state").mkdir(parents=True)
    (imagenet / "metadata.json").write_text(json.dumps({"arch": "se_resnext50_32x4d", "source_file": "/hub/se.pth"}))
    for pretrained, expected in ((None, "random"), (str(imagenet), "imagenet: /hub/se.pth")):
        workdir = tmp_path / f"run-{expected[:6]}"
        workdir.mkdir()
        (workdir / "config.json").write_text(json.dumps({"pretrained": pretrained}))
        (workdir / "metrics.jsonl").write_text(json.dumps({"val_map": 0.5, "images_per_s": 10.0}) + "\n")
        record = bench.fold_record(workdir, "50", 0, wall_s=60.0, slices=1)
        assert record["encoder_init"] == expected
        assert f"| {expected} |" in bench.render_table([record])


def _run_bench(tmp_path: Path, *args: str) -> list[dict]:
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "salt_jax.bench", "--cpu", "--models", "tiny", "--batches", "2",
           "--warmup", "1", "--windows", "1", "--iters", "1", "--matmul-n", "128",
           "--results", str(results), "--out", str(tmp_path / "out"), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=550)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "results.jsonl").read_text() == results.read_text()
    return [json.loads(line) for line in results.read_text().splitlines()]


@pytest.mark.slow  # ~3 min on the loaded 2-core CI box: tiny SaltUNet construction dominates
def test_cli_writes_well_formed_lines_for_the_tiny_model_in_jax_and_torch(tmp_path):
    pytest.importorskip("torch", reason="torch is needed for the torch half of the benchmark")
    from convert.reference import ReferenceUnavailable, cadene_senet

    try:
        cadene_senet()
    except ReferenceUnavailable as err:
        pytest.skip(f"torch UNet needs Cadene's senet.py: {err}")
    records = _run_bench(tmp_path, "--tasks", "inference", "--grouped-impls", "native")
    peak, *rows = records
    assert peak["task"] == "matmul_peak" and peak["tflops"] > 0
    assert [(r["framework"], r["variant"]) for r in rows] == [("jax", "jit"), ("torch", "eager")]
    for r in rows:
        assert r.get("error") is None, r.get("error")
        assert (r["task"], r["model"], r["precision"], r["batch"]) == ("inference", "tiny", "f32", 2)
        assert r["device"] == peak["device"] and r["device"].startswith("CPU")
        assert r["images_per_s"] > 0 and r["flops_per_image"] > 1e6
        assert r["tflops"] == pytest.approx(r["flops_per_image"] * r["images_per_s"] / 1e12)
        assert r["versions"]["jax"] and r["date"]
    # The same model and task: both frameworks count the same convolutions, within 20%
    # (XLA also counts elementwise work; torch's counter only matmuls and convolutions).
    jax_flops, torch_flops = rows[0]["flops_per_image"], rows[1]["flops_per_image"]
    assert 0.8 < jax_flops / torch_flops < 1.25
