"""The benchmark tooling (benchmarks/: timing.py, records.py, programs.py, bench_grid.py, bench_unet.py).

Timing is checked on a fake clock with hand-worked figures; the grid's plan order, tables and
records on made-up lines; the timed train step (training's own) is checked to train (the loss
falls over repeated steps on one batch); and one real CPU run of the grid (slow)
measures the tiny model through the CLI, in child processes as on a GPU, into a temporary
results file, and checks every JSON line it wrote; bench_unet's JAX-only mode runs with torch
unimportable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the scripts import each other as top-level modules

import bench_grid  # noqa: E402
import records  # noqa: E402
import timing  # noqa: E402

pytestmark = pytest.mark.timeout(600)


class FakeClock:
    """time.perf_counter for timing.py: each call of a timed function advances it by its cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_timed_reports_milliseconds_per_call_over_windows_and_syncs_each(monkeypatch):
    clock, calls = FakeClock(), {"fn": 0, "sync": 0}
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    costs = iter([9.0, 9.0] + [0.002] * 5 + [0.004] * 5 + [0.003] * 5)  # 2 warm-up calls, 3 windows of 5

    def fn():
        calls["fn"] += 1
        clock.now += next(costs)

    def sync():
        calls["sync"] += 1

    t = timing.timed(fn, 3, warmup=2, iters=5, sync=sync)
    assert (calls["fn"], calls["sync"]) == (2 + 3 * 5, 1 + 3)  # after the warm-up, then once per window
    assert (t["ms"], t["ms_min"], t["ms_max"]) == pytest.approx((3.0, 2.0, 4.0))
    assert (t["repeats"], t["iters"]) == (3, 5)


def test_timed_alternating_interleaves_the_windows(monkeypatch):
    monkeypatch.setattr(timing.time, "perf_counter", FakeClock())
    order = []
    timing.timed_alternating({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 2, warmup=1)
    assert order == ["a", "b"] * 3
    order.clear()
    timing.timed_alternating({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 2, warmup=1, settle=1)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 2  # each timed call follows an untimed one of its own


def test_record_has_the_schema_and_derives_images_per_s():
    line = records.record("train_step", framework="jax", batch=32, timing={"ms": 80.0, "ms_min": 70.0, "ms_max": 90.0},
                          model="unet_tiny", variant="jit", precision="float32", device="GPU X", compile_s=3.0)
    assert line["images_per_s"] == pytest.approx(400.0)  # 32 images in 80 ms
    assert {"date", "device", "versions", "loadavg", "task", "model", "framework", "variant", "precision", "batch",
            "ms", "ms_min", "ms_max", "images_per_s"} <= set(line)
    assert len(line["loadavg"]) == 3 and line["versions"]["python"] and line["compile_s"] == 3.0
    failed = records.record("inference", framework="torch", batch=2, device="GPU X", error="boom")
    assert failed["images_per_s"] is None and failed["ms"] is None


def test_plan_puts_the_bf16_train_steps_first_and_torch_compile_last():
    models = ["unet_se_resnext50_32x4d", "unet_se_resnext101_32x4d"]
    plan = bench_grid.build_plan(models, [32, 64], ["float32", "bfloat16"], ["jax", "torch"],
                                 ["train_step", "inference"], ["native", "dense"], list(bench_grid.TORCH_VARIANTS))
    first = plan[:8]
    assert all((c.framework, c.task, c.precision) == ("jax", "train_step", "bfloat16") for c in first)
    # native and dense side by side per (model, batch): a deadline never leaves a pair half done
    assert [c.grouped_impl for c in first] == ["native", "dense"] * 4
    assert [(c.model, c.batch) for c in first[::2]] == [(models[0], 32), (models[0], 64), (models[1], 32), (models[1], 64)]
    assert all(c.variant == "compile" for c in plan[-8:])
    assert len(plan) == len(set(plan))
    # jax: train 2 precisions x 2 impls + inference 2 precisions; torch: 3 variants x 2 tasks; x 4 (model, batch)
    assert len(plan) == (4 + 2 + 6) * 4
    assert bench_grid.arch_of("50") == "unet_se_resnext50_32x4d"  # train.py's encoder aliases


def _line(framework, impl, ips, **extra):
    return {"device": "GPU X", "task": "train_step", "model": "unet_se_resnext50_32x4d", "framework": framework,
            "variant": "jit", "precision": "bfloat16", "batch": 32, "grouped_impl": impl, "images_per_s": ips,
            "date": "2026-01-01T00:00:00", "flops_per_image": 2e11, "tflops": 2e11 * (ips or 0) / 1e12,
            "frac_of_peak": 0.1, "peak_mem_gib": 3.0, **extra}


def test_recommendation_and_table_use_the_newest_line_per_configuration():
    lines = [_line("jax", "native", 100.0), _line("jax", "dense", 300.0), _line("jax", "native", 400.0)]
    text = bench_grid.recommendation(lines, "GPU X")
    assert "'native'" in text and "1/1" in text and "x1.33" in text
    table = bench_grid.render_table(lines + [_line("torch", None, None, error="RuntimeError: boom", variant="compile")])
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
        (workdir / "config.json").write_text(json.dumps({"pretrained": pretrained, "batch_size": 10}))
        (workdir / "metrics.jsonl").write_text(json.dumps({"val_map": 0.5, "images_per_s": 10.0}) + "\n")
        line = bench_grid.fold_record(workdir, "50", 0, wall_s=60.0, slices=1)
        assert line["encoder_init"] == expected and line["batch"] == 10 and line["images_per_s"] == 10.0
        assert f"| {expected} |" in bench_grid.render_table([line])


def test_xla_flops_counts_the_lowered_program_also_where_the_backend_refuses_to():
    """A (16, 32) @ (32, 8) matmul is 2 * 16 * 32 * 8 FLOPs by hand. The CUDA plugin (PJRT C API)
    raises NotImplementedError from Lowered.cost_analysis(); the fallback costs the same module on
    the CPU backend instead of the compiled GPU program, whose cuDNN calls count as zero."""
    import jax
    import jax.numpy as jnp
    import programs

    lowered = jax.jit(jnp.matmul).lower(jnp.ones((16, 32)), jnp.ones((32, 8)))
    program = programs.Program(lambda: None, lambda: None, 0.0, compiled=None, lowered=lowered)
    assert programs.xla_flops(program) == (2 * 16 * 32 * 8, "xla_lowered")

    class PluginLowered:  # what Lowered.cost_analysis() does on a PJRT C API backend
        _lowering = lowered._lowering

        def cost_analysis(self):
            raise NotImplementedError("Lowered.cost_analysis not implemented on platform 'cuda'")

    program.lowered = PluginLowered()
    assert programs.xla_flops(program) == (2 * 16 * 32 * 8, "xla_lowered")


def test_the_timed_train_step_trains():
    """programs.jax_train_step (training's own step, built by loop.build_trainer): repeated on one
    batch, the loss falls and the step counter counts the calls (the donated state is carried)."""
    import jax
    import programs

    images, masks = programs.synthetic_batch(4)
    program = programs.jax_train_step(programs.jax_model("tiny"), images, masks, augment=False)
    losses = []
    for _ in range(6):
        program.blocking()
        losses.append(float(program.last["out"]["loss"]))
    state = jax.tree.unflatten(program.last["tree"], program.last["state"])
    assert int(state["step"]) == 6
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def _run_grid(tmp_path: Path, *args: str) -> list[dict]:
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, "benchmarks/bench_grid.py", "--cpu", "--models", "tiny", "--batches", "2",
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
    lines = _run_grid(tmp_path, "--tasks", "inference", "--grouped-impls", "native")
    peak, *rows = lines
    assert peak["task"] == "matmul_peak" and peak["tflops"] > 0
    assert [(r["framework"], r["variant"]) for r in rows] == [("jax", "jit"), ("torch", "eager")]
    for r in rows:
        assert r.get("error") is None, r.get("error")
        assert (r["task"], r["model"], r["precision"], r["batch"]) == ("inference", "unet_tiny", "float32", 2)
        assert r["device"] == peak["device"] and r["device"].startswith("CPU")
        assert r["images_per_s"] == pytest.approx(2e3 / r["ms"]) and r["flops_per_image"] > 1e6
        assert r["tflops"] == pytest.approx(r["flops_per_image"] * r["images_per_s"] / 1e12)
        assert r["versions"]["jax"] and r["date"] and len(r["loadavg"]) == 3
    # The same model and task: both frameworks count the same convolutions, within 20%
    # (XLA also counts elementwise work; torch's counter only matmuls and convolutions).
    jax_flops, torch_flops = rows[0]["flops_per_image"], rows[1]["flops_per_image"]
    assert 0.8 < jax_flops / torch_flops < 1.25


def test_bench_unet_without_torch_never_imports_it(tmp_path):
    # `--no-torch` is how a Python without our CPU torch (3.12 here) times JAX alone: torch is
    # made unimportable in the child, so any import of it fails the run.
    results = tmp_path / "results.jsonl"
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.path.insert(0, 'benchmarks'); "
            "sys.argv = ['bench_unet.py', '--model', 'tiny', '--batch', '1', '--repeats', '1', "
            f"'--tasks', 'inference', '--no-torch', '--out', {str(results)!r}]; "
            "runpy.run_path('benchmarks/bench_unet.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=550)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [json.loads(text) for text in results.read_text().splitlines()]
    assert (line["framework"], line["model"], line["task"], line["batch"]) == ("jax", "unet_tiny", "inference", 1)
    assert line["ms"] > 0


def test_bench_unet_alternates_with_a_torch_worker_process(tmp_path):
    # The default: torch's calls run in a worker process of its own, alternating with JAX's.
    pytest.importorskip("torch", reason="torch is needed for the torch half of the benchmark")
    results = tmp_path / "results.jsonl"
    proc = subprocess.run([sys.executable, "benchmarks/bench_unet.py", "--model", "tiny", "--batch", "1", "--repeats", "1",
                           "--tasks", "inference", "--out", str(results)], cwd=REPO, capture_output=True, text=True,
                          timeout=550)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(text) for text in results.read_text().splitlines()]
    assert [(line["framework"], line["torch_process"]) for line in lines] == [("jax", "worker"), ("torch", "worker")]
    assert all(line["ms"] > 0 and line["task"] == "inference" for line in lines)
    assert lines[1]["device"].startswith("CPU") and lines[1]["compile_s"] >= 0


def test_pack_gpu_data_keeps_what_the_loader_reads(tmp_path):
    """The packed copy loads to the same arrays as the original; RGB images like the real ones."""
    from PIL import Image

    from salt_jax.data import load_train
    from salt_jax.data.synthetic import generate

    data = generate(tmp_path / "data", n_train=12, n_test=1)
    for path in (data / "train" / "images").glob("*.png"):  # the competition's PNGs are RGB
        Image.open(path).convert("RGB").save(path)
    script = REPO / "benchmarks" / "pack_gpu_data.py"
    subprocess.run([sys.executable, str(script), str(data)], cwd=tmp_path, check=True, capture_output=True)
    import tarfile

    with tarfile.open(tmp_path / ".gpudata" / "tgs.tar") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    original = load_train(data, cache_dir=tmp_path / "c1")
    packed = load_train(tmp_path / "unpacked" / "tgs_salt", cache_dir=tmp_path / "c2")
    for field in ("ids", "images", "masks", "depths"):
        np.testing.assert_array_equal(np.asarray(getattr(packed, field)), np.asarray(getattr(original, field)))

    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "nowhere")], cwd=tmp_path,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nowhere/train.csv" in bad.stderr


def test_gpu_env_seeds_a_fresh_machines_results_with_the_tracked_lines(tmp_path):
    """gpu_env.sh under the scripts' pipefail: --resume must see what earlier leases measured."""
    machine = tmp_path / "gpu" / "results.jsonl"  # absent, as on a fresh machine
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "GPU_RESULTS": str(machine)}
    for _ in range(2):  # the second call (a warm machine) must not duplicate lines
        subprocess.run(["bash", "-c", "set -uo pipefail; source benchmarks/gpu_env.sh"], cwd=REPO, env=env,
                       check=True, capture_output=True)
        tracked = [ln for ln in (REPO / "benchmarks" / "results.jsonl").read_text().splitlines() if ln.strip()]
        assert machine.read_text().splitlines() == list(dict.fromkeys(tracked))


def test_profile_unet_names_gpu_library_calls():
    """Hand-written HLO lines of the kinds a GPU program holds: cuDNN convolutions, a cuBLAS gemm."""
    import profile_unet

    hlo = "\n".join([
        "ENTRY %main {",
        '  %fwd = (bf16[10,64,64,128]{3,2,1,0}, u8[0]{0}) custom-call(%x, %k), window={size=3x3 pad=1_1x1_1}, '
        'feature_group_count=32, custom_call_target="__cudnn$convForward"',
        '  %dx = (bf16[10,128,128,128]{3,2,1,0}, u8[0]{0}) custom-call(%dy, %k), window={size=3x3 pad=1_1x1_1}, '
        'custom_call_target="__cudnn$convBackwardInput"',
        '  %dw = (bf16[3,3,4,128]{3,2,1,0}, u8[0]{0}) custom-call(%x, %dy), window={size=3x3}, '
        'feature_group_count=32, custom_call_target="__cudnn$convBackwardFilter"',
        '  ROOT %mm = (f32[64,64]{1,0}, s8[0]{0}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul"',
        "}",
    ])
    instrs, roots = profile_unet.parse_hlo(hlo)
    assert [profile_unet.category(n, instrs, roots) for n in ("fwd", "dx", "dw", "mm")] == [
        "conv (cuDNN) grouped forward", "conv (cuDNN) input grad", "conv (cuDNN) grouped kernel grad", "matmul (cuBLAS)"]


@pytest.mark.slow
def test_profile_unet_accounts_for_the_traced_operations():
    """A real (CPU) profile of the tiny forward: operations found, shares adding up to 100%."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "profile_unet.py"), "--model", "tiny",
                          "--tasks", "inference", "--top", "3"], capture_output=True, text=True, check=True).stdout
    n_ops = int(out.split(" operations")[0].rsplit(" ", 1)[1])
    shares = [float(line.split("|")[3].strip().rstrip("%")) for line in out.splitlines()
              if line.startswith("| ") and line.rstrip().endswith("|") and "%" in line]
    assert n_ops > 50 and abs(sum(shares) - 100) < 0.5, out
