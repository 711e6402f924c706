"""Every benchmark script runs at a tiny size and writes its results (the real runs are in benchmarks/README.md).

learn2learn and higher are not installed here (they live in a separate venv): the peer code paths of
meta_step.py and l2l_agreement.py are exercised by the benchmark runs themselves, not by these tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BENCH, REPO, bench


def test_meta_step_benchmark_smoke(tmp_path):
    bench("meta_step.py", "--impls", "ours-maml", "ours-metaticket-topk", "--models",
          "mlp", "conv4", "--orders", "first", "--reps", "1", "--meta-batch", "2", "--results", str(tmp_path),
          "--name", "smoke", cwd=tmp_path)
    out = json.loads((tmp_path / "smoke.json").read_text())
    assert len(out["rows"]) == 4 and all(r["median_ms"] > 0 and r["peak_rss_mb"] > 0 for r in out["rows"])
    assert all(r["flops"] > 0 and r["dense_flops"] >= r["flops"] * 0.5 and 0 < r["fraction_fp32_peak"]
               and r["gflops"] > 0 and r["dense_equivalent_gflops"] > 0 for r in out["rows"])
    assert out["peak_gflops"]["fp32"] > 0 and out["peak_gflops"]["bf16"] > 0 and "flags" in out["cpu"]
    assert (tmp_path / "smoke.md").is_file() and (tmp_path / "smoke.png").is_file()


def test_meta_step_benchmark_grid_with_bfloat16_rows(tmp_path):
    bench("meta_step.py", "--impls", "ours-maml", "ours-maml-bf16", "--models", "mlp", "--orders", "first",
          "--reps", "1", "--meta-batch", "2", "3", "--queries", "1", "--results", str(tmp_path), "--name", "grid",
          cwd=tmp_path)
    out = json.loads((tmp_path / "grid.json").read_text())
    shapes = [(r["impl"], r["meta_batch"], r["queries"]) for r in out["rows"]]
    assert sorted(shapes) == sorted((i, b, 1) for i in ("ours-maml", "ours-maml-bf16") for b in (2, 3))
    assert "vs ours float32" in (tmp_path / "grid.md").read_text() and isinstance(out["cpu"]["flags"], list)


def test_e2e_speed_and_precision_benchmarks_smoke(tmp_path, data_root):
    bench("e2e_speed.py", "--cases", "quickstart", "--precisions", "float32", "bfloat16", "--steps", "6",
          "--results", str(tmp_path), cwd=tmp_path)
    rows = json.loads((tmp_path / "e2e_speed.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["float32", "bfloat16"]
    assert all(r["train_ms_per_step"] > 0 and r["validation_s"] > 0 and r["paper_budget_hours"] > 0 for r in rows)
    assert all(Path(r["code"]) == REPO for r in rows)  # this checkout's metaticket, not another install
    bench("precision.py", "gradients", "--widths", "0.25", "--meta-batch", "2", "--queries", "1", "--results",
          str(tmp_path), cwd=tmp_path)
    grads = json.loads((tmp_path / "precision.json").read_text())["gradients"]
    assert len(grads) == 4 and all(-1 <= g[k]["cosine"] < 1 for g in grads for k in ("bf16_vs_fp32",
                                                                                         "bf16_inner_too_vs_fp32"))


def test_precision_phases_rounds_one_phase_at_a_time(tmp_path, data_root):
    """Each variant rounds only its own products: the outer backward's barely move the meta-gradient, the support
    steps' forward products do (the reason ``precision: bfloat16`` leaves them in float32)."""
    bench("precision_phases.py", "--widths", "0.25", "--meta-batch", "2", "--results", str(tmp_path), cwd=tmp_path)
    rows = json.loads((tmp_path / "precision_phases.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["maml", "metaticket"]
    for r in rows:
        assert all(r[v]["relative_error"] > 0 for v in ("support:forward", "query:forward", "outer:forward"))
        assert r["outer:forward"]["relative_error"] < r["support:forward"]["relative_error"]
    assert "bf16 outer:input-gradient" in (tmp_path / "precision_phases.md").read_text()


def made_up_peaks(path: Path) -> None:
    """A benchmarks/peak.py result with known rates: matmul fp32 100 / bf16 400 GFLOP/s, elementwise 100 GB/s in
    cache and 25 GB/s from memory (measured ones move with the machine's load)."""
    rows = [{"op": "matmul", "dtype": "float32", "gflops": 100.0},
            {"op": "matmul", "dtype": "bfloat16", "gflops": 400.0},
            {"op": "triad 8 MB", "dtype": "float32", "gbytes_per_s": 100.0},
            {"op": "triad 256 MB", "dtype": "float32", "gbytes_per_s": 25.0}]
    path.write_text(json.dumps({"cpu": {"model": "test"}, "rows": [{"threads": 2, **r} for r in rows]}))


def test_e2e_speed_budget_at_the_roofline(tmp_path, data_root):
    """``--roofline``: a paper case's budget with the meta-step at its op-by-op roofline (validations and test as
    measured), at the cache and the memory rate of a peak file; refused for the quickstart and without a peak."""
    made_up_peaks(tmp_path / "peak.json")
    bench("e2e_speed.py", "--cases", "paper-w1-metaticket", "--steps", "4", "--roofline", "--peak",
          str(tmp_path / "peak.json"), "--results", str(tmp_path), cwd=tmp_path)
    (row,) = json.loads((tmp_path / "e2e_speed.json").read_text())["rows"]
    assert row["roof_impl"] == "ours-metaticket-threshold" and row["roof_cell"] == ["mlp", "second", 4, 1]
    assert 0 < row["roof_ms_cache"] < row["roof_ms_memory"] and row["roof_gflop"] > 0
    rest = row["paper_steps"] // row["paper_val_every"] * row["validation_s"] + row["test_s_estimate"]
    for where in ("cache", "memory"):
        hours = (row["paper_steps"] * row[f"roof_ms_{where}"] / 1000 + rest) / 3600
        assert row[f"roof_budget_hours_{where}"] == pytest.approx(hours, abs=2e-3)
    assert "budget at the roofline" in (tmp_path / "e2e_speed.md").read_text()
    for bad, says in ((["--cases", "quickstart", "--peak", str(tmp_path / "peak.json")], "paper cases only"),
                      (["--cases", "paper-w1-maml", "--peak", str(tmp_path / "none.json")], "no peak result")):
        proc = subprocess.run([sys.executable, str(BENCH / "e2e_speed.py"), "--roofline", *bad], cwd=tmp_path,
                              text=True, capture_output=True, timeout=120)
        assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr


def test_meta_step_roofline_of_the_2x_target():
    sys.path.insert(0, str(BENCH))
    import meta_step

    shape = {"model": "mlp-w8", "order": "second", "meta_batch": 16, "queries": 15}
    rows = [{"impl": "learn2learn", **shape, "median_ms": 100.0, "flops": 10 ** 9},
            {"impl": "ours-metaticket-threshold", **shape, "median_ms": 60.0, "flops": 2 * 10 ** 9},
            {"impl": "ours-metaticket-threshold-bf16", **shape, "median_ms": 50.0, "flops": 2 * 10 ** 9},
            {"impl": "ours-maml", **shape, "queries": 1, "median_ms": 10.0, "flops": 10 ** 8}]
    meta_step.roofline(rows, {"fp32": 100.0, "bf16": 400.0})
    # 2 GFLOP in 50 ms is 40 GFLOP/s: 40% of the fp32 peak, 10% of the bf16 one; no peer row of 1 query: no value
    assert [r.get("peak_fraction_for_2x") for r in rows] == [None, 0.4, 0.1, None]
    assert "| 40% |" in meta_step.table([r | {"peak_rss_mb": 1, "rss_before_mb": 1} for r in rows[:2]])


def test_meta_step_benchmark_names_a_missing_peers_venv(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "meta_step.py"), "--peers-python", str(tmp_path / "none")],
                          cwd=tmp_path, text=True, capture_output=True, timeout=120)
    assert proc.returncode != 0 and "no peers interpreter" in proc.stderr


def test_l2l_agreement_our_side_smoke(tmp_path, data_root):
    proc = bench("l2l_agreement.py", "--one", "ours", "--steps", "3", "--meta-batch", "2", cwd=tmp_path)
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["impl"] == "ours" and row["tasks"] == 600 and 0 <= row["accuracy"] <= 100 and row["ci95"] > 0


def test_iterand_cost_benchmark_smoke(tmp_path, data_root):
    bench("iterand_cost.py", "--widths", "0.125", "--full-epoch-widths", "--slice", "3", "--reps", "1",
          "--results", str(tmp_path), "--name", "smoke", cwd=tmp_path)
    out = json.loads((tmp_path / "smoke.json").read_text())
    row = out["decomposition"][0]
    assert row["rerandomize_ms"] > 0 and row["epoch_ratio_every300"] >= 1.0


def test_compare_methods_and_meta_run_smoke(tmp_path, data_root):
    """compare_methods.py runs meta_run.py's main once per method."""
    tag = f"smoke-{os.getpid()}"
    tiny = ["--set", "meta.steps=2", "--set", "meta.meta_batch=2", "--set", "eval.val_every=2", "--set",
            "eval.val_tasks=4", "--set", "meta.warmup_steps=1", "--tasks", "4"]
    try:
        config = str(REPO / "configs" / "omniglot" / "mlp_5w1s_{method}.yaml")
        bench("compare_methods.py", "--name", tag, "--config", config, "--methods", "maml", "metaticket",
              "--out", str(tmp_path), *tiny, cwd=tmp_path)
        assert len(json.loads((tmp_path / f"{tag}.json").read_text())["results"]) == 2
        assert json.loads((tmp_path / f"{tag}_maml.json").read_text())["test"]["tasks"] == 4  # meta_run's file
        assert (tmp_path / f"{tag}.png").is_file() and (tmp_path / f"{tag}_metaticket.png").is_file()
    finally:
        for d in (REPO / "runs" / "bench").glob(f"{tag}*"):
            shutil.rmtree(d)


def test_summary_plots_from_committed_results(tmp_path):
    for path in (BENCH / "results").glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    bench("summary.py", "--results", str(tmp_path), cwd=tmp_path)
    assert (tmp_path / "summary_meta_steps.png").stat().st_size > 10_000
    assert (tmp_path / "summary_width.png").stat().st_size > 10_000


def test_ideas_mlp_benchmark_smoke(tmp_path):
    bench("ideas_mlp.py", "--widths", "0.25", "--meta-batch", "2", "--queries", "1", "--reps", "1", "--results",
          str(tmp_path), cwd=tmp_path)
    row = json.loads((tmp_path / "ideas_mlp.json").read_text())["rows"][0]
    assert row["loop_ms"] > 0 and row["bmm_ms"] > 0 and row["gradient_relative_difference"] < 1e-3


@pytest.mark.slow
def test_ideas_conv4_benchmark_smoke(tmp_path):
    """Includes one real torch.compile of the tiny network (half a minute alone, two on a busy machine): slow."""
    bench("ideas_conv4.py", "--tasks", "2", "--channels", "4", "--reps", "1", "--results", str(tmp_path), cwd=tmp_path)
    out = json.loads((tmp_path / "ideas_conv4.json").read_text())
    assert out["first_order_eager_ms"] > 0 and out["first_order_compiled_ms"] > 0
    assert out["second_order_eager"] == "ok" and out["grouped_layer2"]["grouped_ms"] > 0


def test_seed_methods_collects_sweeps_into_a_table_and_plot(tmp_path):
    runs = tmp_path / "runs"
    names = ["cifar10_conv6_dense_5ep", "cifar10_conv6_dense_2ep", "cifar10_resnet18_dense_1ep"]
    names += [f"cifar10_conv6_{m}_s0.9{v}_5ep" for m, v in [("edgepopup", ""), ("edgepopup", "_lr0.1"),
                                                             ("edgepopup", "_scalefan"),
                                                             ("edgepopup", "_scalefan_lr0.1"),
                                                             ("iterand", "_scalefan"), ("iterand", "_scalefan_lr0.1")]]
    names += [f"cifar10_conv6_slot_k{k}_greedy_finetune_2ep" for k in (2, 8)]
    names += [f"cifar10_conv6_slot_k{k}_{s}_5ep" for k in (2, 8)
                                           for s in ("greedy", "sampled", "sampled_lr25")]
    for rule in ("uniform", "er", "erk", "balanced", "pyramidal"):
        names += [f"cifar10_conv6_randommask_{rule}_2ep", f"cifar10_resnet18_randommask_{rule}_1ep"]
    names += [f"cifar10_conv6_randommask_edgepopup_{rule}_5ep" for rule in ("erk", "balanced")]
    for i, name in enumerate(names):
        (runs / f"{name}-sweep").mkdir(parents=True)
        groups = [{"width": 0.25, "sparsity": s, "accuracy": 40.0 + i + s, "ci95": 1.0} for s in (0.5, 0.8)]
        (runs / f"{name}-sweep" / "sweep.json").write_text(json.dumps({"groups": groups}))
    # the edge-popup/IteRand sweep of issue 4: only its width-0.25 groups of each method are rows
    groups = [{"method": m, "width": w, "sparsity": 0.5, "accuracy": 48.0, "ci95": 1.0}
              for m in ("edgepopup", "iterand") for w in (0.25, 0.5)]
    (runs / "cifar10_conv6_5ep-sweep").mkdir()
    (runs / "cifar10_conv6_5ep-sweep" / "sweep.json").write_text(json.dumps({"groups": groups}))
    bench("seed_methods.py", "--runs", str(runs), "--results", str(tmp_path), "--time", "1", "--time-width",
          "0.0625", cwd=tmp_path)
    timed = json.loads((tmp_path / "cifar10_seed_methods_time.json").read_text())["rows"]
    assert len(timed) == 8 and all(r["ms_per_iter"] > 0 for r in timed)
    out = json.loads((tmp_path / "cifar10_seed_methods.json").read_text())
    assert len(out["rows"]) == 2 * len(names) + 2 and (tmp_path / "cifar10_seed_methods.png").is_file()
    shutil.rmtree(runs / f"{names[-1]}-sweep")
    proc = subprocess.run([sys.executable, str(BENCH / "seed_methods.py"), "--runs", str(runs), "--results",
                           str(tmp_path)], cwd=tmp_path, text=True, capture_output=True, timeout=120)
    assert proc.returncode != 0 and names[-1] in proc.stderr
    # --keep-missing: the missing sweep's rows come from the results file already there, marked as such
    bench("seed_methods.py", "--runs", str(runs), "--results", str(tmp_path), "--keep-missing", cwd=tmp_path)
    again = json.loads((tmp_path / "cifar10_seed_methods.json").read_text())["rows"]
    kept = [r for r in again if r["run"] == names[-1]]
    assert len(again) == len(out["rows"]) and len(kept) == 2
    assert all(r["source"] == "earlier results" for r in kept)
    assert all(r["source"].endswith("sweep.json") for r in again if r["run"] != names[-1])


def test_paper_protocol_trains_resumes_and_reports(tmp_path, data_root):
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = ["--widths", "1", "--steps", "3", "--runs", str(runs), "--out", str(out), "--test-tasks", "20",
            "--set", "eval.val_every=3",
            "--set", "eval.val_tasks=4", "--set", "run.log_every=3"]
    record = tmp_path / "runs.jsonl"
    lines = bench("paper_protocol.py", "train", *args, "--methods", "maml", "metaticket", "--record", str(record),
                  cwd=tmp_path).stdout
    assert [json.loads(x)["method"] for x in lines.splitlines()] == ["maml", "metaticket"]
    # one protocol line per finished run names what the table must not mix
    recorded = [json.loads(x) for x in record.read_text().splitlines()]
    assert [(r["method"], r["split"], r["score_grad"]) for r in recorded] == [
        ("maml", "vinyals", None), ("metaticket", "vinyals", "reference")]
    assert all(r["meta_steps"] == 3 and r["meta_batch"] == 4 and r["queries"] == 1 and r["checkpoint"] == "last"
               and r["cpu"]["model"] and r["commit"] for r in recorded)
    bench("paper_protocol.py", "table", "--record", str(record), "--out", str(out), cwd=tmp_path)
    rows = json.loads((out / "paper_protocol_v3.json").read_text())["rows"]
    assert {(r["method"], r["split"], r["meta_steps"]) for r in rows} >= {("maml", "vinyals", 3),
                                                                          ("metaticket", "vinyals", 3)}
    assert (out / "paper_protocol_v3.md").is_file() and (out / "paper_protocol_v3.png").stat().st_size > 0
    test = json.loads((runs / "mlp-w1_5w1s_maml_3x4_seed1" / "meta_test_last.json").read_text())
    assert test["queries"] == 1 and test["checkpoint"] == "last" and test["tasks"] == 20 and test["meta_batch"] == 4
    variant = bench("paper_protocol.py", "train", *args, "--methods", "maml", "--tag", "q2", "--set", "data.queries=2",
                    cwd=tmp_path).stdout
    assert json.loads(variant)["tag"] == "q2"
    assert json.loads((runs / "mlp-w1_5w1s_maml_q2_3x4_seed1" / "meta_test_last.json").read_text())["queries"] == 2
    bench("paper_protocol.py", "report", *args, cwd=tmp_path)
    report = json.loads((out / "paper_protocol_3.json").read_text())
    assert {(t["method"], t["width"], t["tag"]) for t in report["table"]} == {
        ("maml", 1, ""), ("metaticket", 1, ""), ("maml", 1, "q2")}
    assert (out / "paper_protocol_3.png").stat().st_size > 0


def test_peak_benchmark_measures_each_dtype_and_op(tmp_path):
    bench("peak.py", "--threads", "1", "--reps", "2", "--n", "128", "--results", str(tmp_path), "--name", "p",
          cwd=tmp_path)
    out = json.loads((tmp_path / "p.json").read_text())
    assert {(r["op"], r["dtype"]) for r in out["rows"]} == {("matmul", "float32"), ("matmul", "bfloat16"),
                                                            ("conv3x3", "float32"), ("conv3x3", "bfloat16"),
                                                            ("triad 8 MB", "float32"), ("triad 256 MB", "float32")}
    assert all(r.get("gflops", r.get("gbytes_per_s", 0)) > 0 for r in out["rows"]) and "flags" in out["cpu"]


def test_meta_step_measures_exactly_the_cells_named(tmp_path):
    bench("meta_step.py", "--impls", "ours-maml", "--cells", "mlp:first:2:1", "mlp:second:3:2", "--reps", "1",
          "--results", str(tmp_path), "--name", "cells", cwd=tmp_path)
    out = json.loads((tmp_path / "cells.json").read_text())
    assert [(r["model"], r["order"], r["meta_batch"], r["queries"]) for r in out["rows"]] == [
        ("mlp", "first", 2, 1), ("mlp", "second", 3, 2)]
    assert out["settings"]["cells"] == ["mlp:first:2:1", "mlp:second:3:2"]
    # refused before the peers are looked for (this machine may have no peers venv)
    proc = subprocess.run([sys.executable, str(BENCH / "meta_step.py"), "--cells", "mlp:third:2:1", "--peers-python",
                           str(tmp_path / "none")], cwd=tmp_path, text=True, capture_output=True, timeout=120)
    assert proc.returncode != 0 and "MODEL:ORDER:B:Q" in proc.stderr and "Traceback" not in proc.stderr


def test_roofline_counts_each_op_and_sets_it_against_learn2learn(tmp_path):
    """The op census of a real meta-step (FLOPs of its products, bytes of every op), its roofline times, and the
    ratio to half of learn2learn's time, here computed on rows made up so the expected numbers are known. The
    peaks are made up too (peak.py has its own test): measured on a busy machine, the cache rate of a tiny run
    came out below the memory rate, and the cache roofline above the memory one."""
    made_up_peaks(tmp_path / "peak.json")
    bench("roofline.py", "--cells", "mlp:first:2:1", "--impls", "ours-metaticket-threshold", "ours-maml",
          "--peak", str(tmp_path / "peak.json"), "--times", str(tmp_path / "none.json"), "--results", str(tmp_path),
          "--name", "roof", cwd=tmp_path)
    out = json.loads((tmp_path / "roof.json").read_text())
    assert [r["impl"] for r in out["rows"]] == ["ours-metaticket-threshold", "ours-maml"]
    for r in out["rows"]:
        assert r["gflop"] > 0 and r["gbytes"] > r["gbytes_outside_products"] > 0 and r["bf16_share"] == 0
        assert 0 < r["roof_ms_cache"] <= r["roof_ms_memory"] and r["measured_ms"] is None
    sys.path.insert(0, str(BENCH))
    import roofline

    peak = {"fp32": 100.0, "bf16": 400.0}
    ops = {"aten.mm": {"op_rows": [(2e9, 1e6, False), (4e9, 1e6, True)]}, "aten.add": {"op_rows": [(0, 2e9, False)]}}
    # 2e9 / 100 GFLOP/s + 4e9 / 400 GFLOP/s (both compute-bound) + 2e9 bytes / 50 GB/s
    assert roofline.roof_ms(ops, peak, 50.0) == pytest.approx(20 + 10 + 40)
    rows = [{"impl": "ours-maml", "model": "m", "order": "first", "meta_batch": 2, "queries": 1,
             "roof_ms_cache": 30.0, "roof_ms_memory": 60.0},
            {"impl": "learn2learn", "model": "m", "order": "first", "meta_batch": 2, "queries": 1,
             "roof_ms_cache": 1.0, "roof_ms_memory": 1.0, "measured_ms": 100.0}]
    roofline.against_learn2learn(rows)
    assert rows[0]["roof_vs_half_learn2learn"] == 0.6 and rows[0]["roof_vs_half_learn2learn_memory"] == 1.2


def test_reference_grid_records_regression_and_5_shot_runs_with_their_protocol(tmp_path, data_root):
    runs, out, record = tmp_path / "runs", tmp_path / "out", tmp_path / "grid.jsonl"
    tiny = ["--steps", "4", "--set", "eval.val_every=2", "--set", "eval.val_tasks=4", "--set", "eval.test_tasks=6",
            "--set", "run.log_every=2", "--set", "meta.warmup_steps=1", "--runs", str(runs), "--record", str(record)]
    bench("reference_grid.py", "train", "sinusoid/mlp_5shot_maml", *tiny, cwd=tmp_path)
    bench("reference_grid.py", "train", "omniglot/paper/mlp-w1_5w1s_metaticket", "--tag", "5w5s", "--set",
          "data.shots=5", "--set", "data.queries=5", *tiny, cwd=tmp_path)
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert [(r["dataset"], r["metric"], r["shots"], r["split"], r["score_grad"]) for r in lines] == [
        ("sinusoid", "mse", 5, None, None), ("omniglot", "accuracy", 5, "vinyals", "reference")]
    assert all(r["meta_steps"] == 4 and r["tasks"] == 6 and r["checkpoint"] == "last" and r["cpu"]["model"]
               and r["value"] > 0 for r in lines)
    bench("reference_grid.py", "train", "sinusoid/mlp_5shot_maml", *tiny, cwd=tmp_path)  # finished: not run again
    assert len(record.read_text().splitlines()) == 2
    bench("reference_grid.py", "table", "--record", str(record), "--out", str(out), cwd=tmp_path)
    table = (out / "reference_grid.md").read_text()
    assert "sinusoid" in table and " MSE" in table and "omniglot 5w5s" in table and "vinyals / reference" in table


def test_reference_grid_adds_the_cross_domain_test_to_the_line(tmp_path, data_root):
    runs, out, record = tmp_path / "runs", tmp_path / "out", tmp_path / "grid.jsonl"
    args = ["tinyimagenet/conv4_5w1s_metaticket", "--tag", "32px", "--cross-domain", "cifar10", "--steps", "2",
            "--set", "data.image_size=32", "--set", "data.queries=1", "--set", "model.width=0.125",
            "--set", "eval.val_every=2", "--set", "eval.val_tasks=2", "--set", "eval.test_tasks=5",
            "--set", "meta.warmup_steps=1", "--runs", str(runs), "--record", str(record)]
    bench("reference_grid.py", "train", *args, cwd=tmp_path)
    (line,) = [json.loads(x) for x in record.read_text().splitlines()]
    assert line["dataset"] == "tinyimagenet" and line["tasks"] == 5
    assert line["cross_domain"]["dataset"] == "cifar10" and line["cross_domain"]["tasks"] == 5
    assert 0 <= line["cross_domain"]["value"] <= 100 and line["cross_domain"]["ci95"] >= 0
    bench("reference_grid.py", "table", "--record", str(record), "--out", str(out), cwd=tmp_path)
    assert "cifar10 " in (out / "reference_grid.md").read_text()
    bad = subprocess.run([sys.executable, str(BENCH / "reference_grid.py"), "train",
                          "sinusoid/mlp_5shot_maml", "--cross-domain", "nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--cross-domain nope" in bad.stderr


def test_auto_rules_benchmark_names_the_choice_and_the_cpu(tmp_path):
    bench("auto_rules.py", "--cases", "0", "--reps", "1", "--rounds", "1", "--threads", "1", "--results",
          str(tmp_path), "--name", "a", cwd=tmp_path)
    out = json.loads((tmp_path / "a.json").read_text())
    (row,) = out["rows"]
    assert row["rule"] == "vmap_wins" and row["auto"] == "vmap" and set(row["ms"]) == {"vmap", "loop"}
    assert row["auto_over_fastest"] >= 1.0 and isinstance(row["auto_right"], bool) and out["cpu"]["model"]
    assert "| vmap_wins |" in (tmp_path / "a.md").read_text()


@pytest.mark.parametrize("script, cell, slow, fast, header", [
    ("score_grad_cost.py", "mlp:first:2:1", "reference_ms", "start_ms", "reference / start"),
    ("rounded_start.py", "mlp:second:2:1", "casts_ms", "rounded_ms", "rounded start ms"),
])
def test_interleaved_comparisons_time_both_learners(tmp_path, script, cell, slow, fast, header):
    """score_grad_cost (reference vs start formulation) and rounded_start (the bfloat16 start vs the casts
    before it) time two learners in turn and report both medians and their ratio."""
    bench(script, "--cells", cell, "--steps", "1", "--rounds", "2", "--results", str(tmp_path), "--name", "cmp",
          cwd=tmp_path)
    out = json.loads((tmp_path / "cmp.json").read_text())
    (row,) = out["rows"]
    assert row["path"] == "factored" and row["steps"] == 2 and row[slow] > 0 and row[fast] > 0
    assert row["ratio"] == pytest.approx(row[slow] / row[fast], rel=1e-2)
    assert header in (tmp_path / "cmp.md").read_text() and "flags" in out["cpu"]
    if script == "rounded_start.py":  # the learners differ: only one start hands over rounded copies
        assert row["rounded_layers"] == 4 and row["casts_rounded_layers"] == 0  # the MLP's four masked layers


def test_step_levers_times_every_variant_and_restores_the_start(tmp_path):
    """step_levers times the built step against MAML, the free-start ceiling, the compiled start (or says why it
    could not compile) and half the meta-batch on one thread, in turn, and leaves the fused start as it was."""
    bench("step_levers.py", "--cell", "mlp:second:2:1", "--steps", "1", "--rounds", "2", "--results", str(tmp_path),
          "--name", "levers", cwd=tmp_path)
    out = json.loads((tmp_path / "levers.json").read_text())
    rows = {r["variant"]: r for r in out["rows"]}
    assert set(rows) | set(out["skipped"]) == {"built", "maml", "free-start", "compiled-start", "half-batch-1-thread"}
    assert set(out["skipped"]) <= {"compiled-start"} and all(r["ms"] > 0 for r in rows.values())
    assert rows["half-batch-1-thread"]["meta_batch"] == 1 and rows["half-batch-1-thread"]["threads"] == 1
    assert rows["built"]["saved_ms"] == 0 and "flags" in out["cpu"] and out["steps"] == 2
    # the stand-ins really ran (4 masked layers, 3 warm-up + 2 timed steps; the compiled one once more to build)
    assert rows["free-start"]["stand_in_calls"] == 4 * 5 and rows["built"]["stand_in_calls"] is None
    assert rows.get("compiled-start", {"stand_in_calls": 24})["stand_in_calls"] == 4 * 6
    assert "free-start" in (tmp_path / "levers.md").read_text()


def test_step_levers_free_start_is_a_ceiling_not_a_step():
    """The free-start stand-in hands back its first outputs again and a zero scores' gradient; the real start
    computes a new mask from new scores, so the stand-in must not be mistaken for the step."""
    import torch

    sys.path.insert(0, str(BENCH))
    from step_levers import _starts

    from metaticket.core.supermask import _MaskedStart

    starts = _starts()
    assert starts["real"] is _MaskedStart
    scores, weight = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)
    free = starts["free-start"].apply(scores, weight, torch.tensor(0.0), 2, None)
    with torch.no_grad():
        scores.neg_()  # new scores: the real start's mask changes, the stand-in's does not
    again = starts["free-start"].apply(scores, weight, torch.tensor(0.0), 2, None)
    real = _MaskedStart.apply(scores, weight, torch.tensor(0.0), 2, None)
    assert torch.equal(again[1], free[1]) and not torch.equal(real[1], free[1])
    again[0].sum().backward()
    assert torch.count_nonzero(scores.grad) == 0
