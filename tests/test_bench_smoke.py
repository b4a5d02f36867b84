"""bench/ops.py on its tiny grid: the script runs, writes its JSON and chart, and every op that
has a CPU kernel agrees with its PyTorch baseline on the benchmark inputs (no timing asserted)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tetris_ext  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
OPS = ["select", "draft_cumprod", "tree_mask", "tree_mask_packed", "verify_greedy", "verify_sampling"]


def has_cpu_kernel(op: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"tetris::{op}", "CPU")


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    """bench/<script> in a subprocess that imports the tetris_ext under test; it must succeed."""
    package_root = str(Path(tetris_ext.__file__).parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_ops_bench_tiny_grid(tmp_path):
    prefix = tmp_path / "ops_smoke"
    proc = run_bench("ops.py", "--tiny", "--seconds-per-case", "0.02", "--out", str(prefix))
    assert "== speed goals" in proc.stdout
    result = json.loads(prefix.with_suffix(".json").read_text())
    assert result["meta"]["torch"] == torch.__version__
    by_op = {op: [r for r in result["rows"] if r["op"] == op] for op in OPS}
    for op, rows in by_op.items():
        assert rows, f"no case for {op}"
        for r in rows:
            if has_cpu_kernel(op):
                assert r["status"] == "ok", (op, r)
                assert r["ours_s"] > 0 and r["baseline_s"] > 0 and math.isfinite(r["ratio"])
            else:
                assert r["status"].startswith("unavailable"), (op, r)
    if any(has_cpu_kernel(op) for op in OPS):
        assert prefix.with_suffix(".png").stat().st_size > 0


def test_sim_bench_replays_the_committed_trace(tmp_path):
    """bench/sim.py on the committed Gemma trace and fitted cost model (no model needed)."""
    prefix = tmp_path / "sim_smoke"
    run_bench(
        "sim.py",
        "--requests",
        "12",
        "--batch-sizes",
        "1",
        "4",
        "--policies",
        "StandardSD(3)",
        "Tetris(3, 2)",
        "GoodputSD(6)",
        "--out",
        str(prefix),
    )
    rows = json.loads(prefix.with_suffix(".json").read_text())["rows"]
    # 3 policies x 2 batch sizes x 2 cost models
    assert len(rows) == 12
    assert all(r["requests"] == 12 and r["throughput_tokens_per_s"] > 0 for r in rows)
    # Tetris and StandardSD verify the same at batch 1 (one request's best k drafts are its first k)
    same = [r for r in rows if r["batch_size"] == 1 and r["policy"] in ("StandardSD(3)", "Tetris(3, 2)")]
    assert len({(r["verified_tokens"], r["accepted_tokens"]) for r in same}) == 1


def test_cost_fit_offline_replays_the_committed_logs(tmp_path):
    """bench/cost_fit_offline.py on two committed per-step logs of the tuning prompts (no model):
    one row per variant, and the knee test lowers the regret of the fit before it (as the
    committed results/cost_fit_offline.txt says)."""
    prefix = tmp_path / "fit_smoke"
    logs = [str(ROOT / "bench" / "results" / f"cost_aware_fit_log_bundled{s}.json") for s in ("", "_sd4")]
    run_bench(
        "cost_fit_offline.py",
        "--logs",
        *logs,
        "--forget",
        "0",
        "--knee-evidence",
        "0",
        "30",
        "--clip",
        "0",
        "--out",
        str(prefix),
    )
    rows = {r["knee_evidence"]: r for r in json.loads(prefix.with_suffix(".json").read_text())["rows"]}
    assert set(rows) == {0.0, 30.0}
    assert all(math.isfinite(r["median_abs_error_ms"]) and r["regret_pct"] >= 0 for r in rows.values())
    assert rows[30.0]["regret_pct"] < rows[0.0]["regret_pct"]


def test_caution_diagnosis_replays_the_tuning_trace(tmp_path):
    """bench/cost_aware_caution.py's replay part (no model): one row per group and policy, the
    cost-aware policy's floor inside (0, 1) and its steps on the flat line at most a fixed-k
    policy's worst, and the pooled fit of the committed live logs finite."""
    out = tmp_path / "caution"
    run_bench("cost_aware_caution.py", "--margins", "0.3", "--skip-calibration", "--out", str(out))
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["group"], r["policy"]): r for r in result["rows"]}
    for group in ("code", "chat-like", "all"):
        policy = rows[(group, "CostAware online, margin 0.3")]
        assert 0 < policy["floor_median"] < 1
        assert policy["runs_per_step"] >= 1
        assert policy["steps"] <= rows[(group, "StandardSD(2)")]["steps"]
    pooled = result["fit_logs"]["bundled"]["pooled"]
    assert all(math.isfinite(v) for v in pooled.values()) and pooled["token_ms"] > 0


def test_stored_traces_hold_what_todays_ngram_drafter_drafts():
    """Every committed n-gram trace equals its redraft by today's NgramDrafter (sim.redraft): a
    change to the drafter must come with `python bench/redraft_traces.py`, or the replays, the
    prior's fit and the Brier figures would measure drafts the live loop no longer makes."""
    proc = run_bench("redraft_traces.py", "--check")
    assert "every n-gram trace is drafted by the current rule" in proc.stdout


def test_live_rows_carry_each_rounds_ratio_to_the_best_baseline(monkeypatch):
    """bench/cost_aware.py --live pairs rounds: a row's ratio to the best baseline is also given
    round by round (the same spell of the shared machine), so a median's spread shows."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from cost_aware import compare_live_rows

    def run(policy, cpu):
        return {
            "policy": policy,
            "flat": True,
            "tok_per_cpu_s": cpu,
            "tok_per_decode_cpu_s": cpu,
            "tok_per_wall_s": cpu,
        }

    rounds = {
        "StandardSD(3) [flat]": [run("StandardSD(3) [flat]", c) for c in (10.0, 12.0, 11.0)],
        "CostAwareTetris [flat]": [run("CostAwareTetris [flat]", c) for c in (9.0, 13.2, 11.0)],
    }
    rows = [runs[2] | {} for runs in rounds.values()]  # the median rounds
    compare_live_rows(rows, rounds)
    mine = rows[1]
    assert mine["vs_best_baseline_cpu"] == 1.0
    assert mine["vs_best_baseline_cpu_rounds"] == pytest.approx([0.9, 1.1, 1.0])
    assert mine["vs_best_baseline_cpu_range"] == "0.900-1.100"
    assert rows[0]["vs_best_baseline_cpu_range"] == "1.000-1.000"


def test_live_rounds_start_at_another_policy(monkeypatch):
    """bench/cost_aware.py --live: round 0 runs the policies as listed (the autoregressive
    reference first), and over the rounds no policy keeps its place in the round."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from cost_aware import round_order

    policies = ["AR", "SD3", "SD4", "SD5", "Tetris", "Threshold", "CostAware"]
    orders = [round_order(policies, r, 3) for r in range(3)]
    assert orders[0] == policies
    assert all(sorted(order) == sorted(policies) for order in orders)
    for policy in policies:
        assert len({order.index(policy) for order in orders}) == 3
    assert round_order(policies, 0, 1) == policies


def test_vllm_paired_ratios_are_per_round(monkeypatch):
    """bench/vllm_paired.py (no engine): each configuration over the best built-in n-gram of the
    same set, round by round (best by median tok/s), and over any configuration named with
    --against; a name absent from the run is an error that names the argument."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # set on import; restored after
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from vllm_paired import ratios_to, summarize

    def row(config, round_, tps):
        return {
            "set": "code", "config": config, "round": round_, "tok_per_s": tps, "cpu_s": 1.0, "steps": 10,
            "verified_per_step": 2.0, "vsr": 0.5, "propose_share": 0.01, "tokens": [1, 2],
        }  # fmt: skip

    rounds = {"ngram 3": (10.0, 20.0, 10.0), "ngram 4": (9.0, 9.0, 9.0), "sd 3": (11.0, 22.0, 12.0)}
    rows = [row(c, r, t) for c, tps in rounds.items() for r, t in enumerate(tps)]
    by_config = {m["config"]: m for m in summarize(rows)}
    assert {m["best_builtin"] for m in by_config.values()} == {"ngram 3"}  # median 10 > 9
    assert by_config["sd 3"]["vs_best_builtin"] == pytest.approx(1.1)
    assert by_config["sd 3"]["vs_best_builtin_range"] == pytest.approx([1.1, 1.2])
    assert by_config["ngram 4"]["vs_best_builtin_range"] == pytest.approx([0.45, 0.9])
    lines = ratios_to(rows, "sd 3")
    assert any(ln.startswith("code  ngram 3") and "0.909x (0.833-0.909, 3 rounds)" in ln for ln in lines)
    with pytest.raises(ValueError, match="against='sd 9'.*ngram 3, ngram 4, sd 3"):
        ratios_to(rows, "sd 9")


def test_roofline_draws_counts_cells_and_draws_below_the_best_baseline(monkeypatch, tmp_path):
    """bench/roofline_draws.py: the cost-aware rows' ratio to the best baseline per held-out cell
    and draw, in draw order; below means by more than TIE; only batch 64-512 (the goal) counted."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from roofline_draws import cells, report

    def row(policy, batch, draw, ratio, workload="held-out pooled"):
        return {
            "workload": workload, "cost_model": "roofline-x", "batch_size": batch, "draw": draw,
            "policy": f"CostAwareTetris ({policy} cost) + NgramLogistic", "vs_best_baseline": ratio,
        }  # fmt: skip

    rows = [row("online", 64, 1, 0.99), row("online", 64, 0, 1.02), row("known", 64, 0, 1.0 - 1e-6)]
    rows += [row("online", 32, 0, 0.5), row("online", 64, 0, 0.5, workload="tuning pooled")]
    assert cells(rows)[("roofline-x", 64)] == {"online": [1.02, 0.99], "known": [1.0 - 1e-6]}
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"rows": rows}))
    summary = report([run])[-2:]
    assert summary[0].startswith(
        "online, batch 64-512: below the best baseline (by > 1e-05) in 1 of 2 cell-draws"
    )
    assert summary[1].startswith(
        "known, batch 64-512: below the best baseline (by > 1e-05) in 0 of 1 cell-draws"
    )
    assert [line.split("; ")[1] for line in summary] == ["in 0 of 1 cells by the mean over the draws"] * 2


def test_vllm_step_cost_log_passes_the_proposers_whole_call_through(monkeypatch):
    """bench/vllm_step_cost.py wraps DraftSelection.step to log each engine step: the wrapper must
    take the call the vLLM proposer makes (every argument, tokens left, output lengths and finished
    requests included; it once took six and failed in its first engine step) and log the steps."""
    import numpy as np

    from tetris_ext.vllm.config import ProposerOptions
    from tetris_ext.vllm.proposer import DraftSelection

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # set on import; restored after
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from vllm_step_cost import attach_step_log

    selection, log = DraftSelection(ProposerOptions("tetris", 3, 2), max_model_len=256), []
    attach_step_log(selection, log, ["tetris 3+2"])
    req_ids, pattern = ["a", "b"], [5, 6, 7, 8] * 40
    token_ids, num_tokens = np.zeros((2, 256), dtype=np.int32), np.array([12, 12], dtype=np.int32)
    token_ids[:, :160] = pattern
    drafts = [[], []]
    for _ in range(3):
        sampled = [[pattern[int(n)]] for n in num_tokens]
        num_tokens += 1
        verified = {rid: len(d) for rid, d in zip(req_ids, drafts)}
        left, output = np.array([50, 50]), num_tokens - 12
        drafts = selection.step(
            req_ids, sampled, num_tokens, token_ids, verified, 2 + sum(verified.values()), left, output, set()
        )
    assert log and all(entry["policy"] == "tetris 3+2" and entry["requests"] == 2 for entry in log)


def test_replay_roofline_names_its_machine_and_engine(monkeypatch):
    """bench/cost_aware.py --roofline / --chunked-prefill: the machine asked for, its engine, and
    the names the committed results carry (4xH100-70B's chunked engine as before the flag)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from cost_aware import roofline

    assert roofline("4xH100-70B", True).name == "roofline-4xH100-70B-chunked-prefill"
    small = roofline("A100-8B", False)
    assert (small.name, small.gpus, small.chunked_prefill) == ("roofline-A100-8B", 1, False)
    assert roofline("A100-8B", True).chunked_prefill


def test_ngram_copy_bench_runs_on_a_trace(tmp_path):
    """bench/ngram_copy.py (offline, no model): each rule's accepted drafts on one trace; the
    overlapping copy never drafts less than the cut copy."""
    out = tmp_path / "ngram_copy"
    run_bench(
        "ngram_copy.py", "--traces", "traces/gemma3-270m-bf16_ngram_d8_t64.npz", "--k", "3", "--out", str(out)
    )
    (row,) = json.loads(out.with_suffix(".json").read_text())
    rules = row["rules"]
    assert row["positions"] > 0 and rules["recent, cut"]["accepted"] > 0
    assert rules["recent, overlapping copy"]["drafted"] >= rules["recent, cut"]["drafted"]


def test_every_bench_script_imports():
    """Each bench module imports (its main() not run) in this environment, the vLLM scripts'
    included (they import vLLM inside main): a refactor that removes what one imports fails
    here, not in a user's hands (bench/ngram_copy.py once failed at import, untested)."""
    modules = sorted((ROOT / "bench").glob("*.py"))
    scripts = [p.stem for p in modules if 'if __name__ == "__main__"' in p.read_text()]
    code = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'bench')!r})\n"
        f"for name in {[p.stem for p in modules]!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert name not in {scripts!r} or callable(getattr(module, 'main', None)), name\n"
    )
    package_root = str(Path(tetris_ext.__file__).parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )
    assert len(scripts) > 20 and proc.returncode == 0, proc.stdout + proc.stderr


def test_compare_runs_pairs_rows_by_cell_draw_and_policy(tmp_path):
    def row(policy, draw, throughput, decode):
        cell = {"workload": "tuning", "cost_model": "line", "batch_size": 8}
        return cell | {"draw": draw, "policy": policy, "throughput": throughput, "decode_throughput": decode}

    before = [row("SD", 0, 10.0, 20.0), row("SD", 1, 10.0, 20.0), row("AR", 0, 5.0, 5.0)]
    after = [
        row("SD", 0, 11.0, 24.0),
        row("SD", 1, 12.0, 20.0),
        row("AR", 0, 5.0, 5.0),
        row("New", 0, 1.0, 1.0),
    ]
    for name, rows in (("before", before), ("after", after)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"rows": rows}))
    text = run_bench("compare_runs.py", str(tmp_path / "before.json"), str(tmp_path / "after.json")).stdout
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith("  ")}
    assert lines["SD"] == ["1.1500", "(1.1000-1.2000)", "1.1000", "(1.0000-1.2000)"]
    assert lines["AR"][0] == "1.0000" and "New" not in lines  # a policy run only after: no pair


def test_compare_variants_pairs_each_variant_with_the_default_of_its_cost_and_cell(tmp_path):
    def row(policy, batch, draw, throughput):
        return {
            "cost_model": "line",
            "batch_size": batch,
            "draw": draw,
            "policy": policy,
            "throughput": throughput,
        }

    est = "NgramLogistic"
    rows = [
        row(f"CostAwareTetris (online cost) + {est}", 64, 0, 10.0),
        row(f"CostAwareTetris (online cost, end hazard 4) + {est}", 64, 0, 11.0),
        row(f"CostAwareTetris (known cost) + {est}", 64, 0, 20.0),
        row(f"CostAwareTetris (known cost, end hazard 4) + {est}", 64, 0, 19.0),
        row(f"CostAwareTetris (online cost) + {est}", 512, 0, 10.0),
        row(f"CostAwareTetris (online cost, end hazard 4) + {est}", 512, 0, 5.0),  # past 128: not summed
        row("Autoregressive", 64, 0, 1.0),
    ]
    (tmp_path / "run.json").write_text(json.dumps({"rows": rows}))
    text = run_bench("compare_variants.py", str(tmp_path / "run.json")).stdout
    assert "end hazard 4         online  line" in text
    assert "online  batch <= 128: mean 1.1000, worst 1.1000" in text
    assert "known   batch <= 128: mean 0.9500, worst 0.9500" in text
    assert "0.5000" in text  # the batch-512 cell is listed
    against = run_bench("compare_variants.py", str(tmp_path / "run.json"), "--against", "end hazard 4").stdout
    assert "online  batch <= 128: mean 0.9091" in against  # the default over the variant
