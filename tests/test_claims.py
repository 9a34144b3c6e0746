"""parbp.claims: verdicts computed from the CSVs, and the README's copy of the generated table."""
from pathlib import Path

import pandas as pd
import pytest

from parbp import bench, claims, results, seed003

ROOT = Path(__file__).resolve().parent.parent
VERDICTS = set(claims.VERDICTS)


def seed003_table(acc: dict) -> pd.DataFrame:
    rows = [{"method": m, "mode": {"serial": "allreduce", "sync": "average"}.get(m, m), "processes": p, "lr": 0.1,
             "val_loss": 0.2, "val_acc": a, "test_loss": 0.2, "test_acc": a, "time_s": 10.0 * p}
            for (m, p), a in acc.items()]
    return pd.DataFrame(rows)


def by_claim(df):
    return df.set_index("claim")


def test_every_claim_gets_a_verdict_and_missing_csvs_say_what_makes_them(tmp_path):
    t = claims.table(tmp_path)
    assert len(t) == len(claims.CLAIMS) and set(t.verdict) <= VERDICTS
    missing = t[t.verdict == "not measured yet"]
    assert len(missing) > 10 and missing.why.str.contains("run (?:make study|python -m parbp)").all()
    # the network sizes come from the code, not a CSV
    sizes = t[t.claim.str.endswith(" parameters")]
    assert (sizes.verdict == "reproduced").all() and (sizes.ours > 8e5).all()
    # no GPU CSV: CUDA is not measurable here, with the command that would measure it
    cuda = by_claim(t).loc["CUDA implementation ≈ 20x speedup"]
    assert cuda.verdict == "not measurable here" and "--device gpu" in cuda.why


def test_seed003_rows_are_judged_with_the_tolerance(tmp_path):
    acc = {("serial", 1): 0.895, ("sync", 2): 0.85, ("async", 2): 0.90, ("async", 4): 0.86, ("allreduce", 2): 0.895}
    seed003_table(acc).to_csv(tmp_path / "06_seed003_table_full.csv", index=False)
    t = by_claim(claims.table(tmp_path))
    assert t.loc["serial x1: accuracy 0.8880 after 5 epochs"].verdict == "reproduced"       # |0.895-0.888| <= 0.02
    assert t.loc["sync x2: accuracy 0.9210 after 5 epochs"].verdict == "differs"            # 0.85 vs 0.921
    assert t.loc["sync x3: accuracy 0.9213 after 5 epochs"].verdict == "not measured yet"   # no row
    assert t.loc["async loses accuracy as processes are added"].verdict == "reproduced"
    assert t.loc["sync is slower than serial (communication overhead)"].verdict == "reproduced"  # 20 s > 10 s


@pytest.mark.parametrize("lockfree_acc, verdict", [(0.83, "reproduced"), (0.80, "differs")])
def test_parallel_accuracy_is_judged_on_the_version_that_can_lose_it(tmp_path, lockfree_acc, verdict):
    runs = [("synchronous (serial-blas)", 0.831, 1.0), ("Hogwild (2 workers)", lockfree_acc, 0.5),
            ("sequential microbatches (hogwild, 1 worker)", 0.831, 0.9)]
    pd.DataFrame([{"epoch": e, "run": r, "test_acc": a if e else 0.1, "seconds": s if e else 0.0}
                  for r, a, s in runs for e in range(3)]).to_csv(tmp_path / "03_hogwild.csv", index=False)
    t = by_claim(claims.table(tmp_path))
    assert t.loc["parallel training without significant loss of accuracy"].verdict == verdict
    locks = t.loc["within a machine, skip the locks: lock-free updates"]
    assert locks.verdict == "reproduced" and locks.ours == pytest.approx(2.0)


def test_the_paper_profile_file_wins(tmp_path):
    seed003_table({("serial", 1): 0.70}).to_csv(tmp_path / "06_seed003_table_full.csv", index=False)
    seed003_table({("serial", 1): 0.89}).to_csv(tmp_path / "06_seed003_table_paper.csv", index=False)
    row = by_claim(claims.table(tmp_path)).loc["serial x1: accuracy 0.8880 after 5 epochs"]
    assert row.verdict == "reproduced" and row.source == "figures/06_seed003_table_paper.csv"
    assert row.figure == "06_loss_curves_paper.png"


def test_seed_tables_match_the_seed():
    assert len(seed003.SEED_RESULTS) == len(seed003.SEED_USAGE) == 7
    assert seed003.SEED_RESULTS.set_index(["method", "processes"]).accuracy[("serial", 1)] == 0.8880


def test_markdown_has_a_row_per_claim(tmp_path):
    md = claims.markdown(claims.table(tmp_path))
    assert md.count("\n| 0") == len(claims.CLAIMS)


def test_readme_shows_the_generated_table():
    generated = ROOT / "figures" / "10_against_the_seeds.md"
    if not generated.exists():
        pytest.skip("figures/10_against_the_seeds.md not generated yet (python -m parbp.study --only 10)")
    assert results.readme_block((ROOT / "README.md").read_text(), claims.README_SOURCE) == \
        generated.read_text().strip("\n"), \
        "README.md's against-the-seeds table differs from figures/10_against_the_seeds.md: python -m parbp.claims"


def test_sync_readme_copies_between_the_markers(tmp_path):
    readme, table = tmp_path / "README.md", tmp_path / "t.md"
    begin, end = results.readme_markers(claims.README_SOURCE)
    readme.write_text(f"# x\n{begin}\nold\n{end}\nafter\n")
    table.write_text("| a |\n")
    claims.sync_readme(readme, table)
    assert results.readme_block(readme.read_text(), claims.README_SOURCE) == "| a |"
    assert readme.read_text().endswith("after\n")


def test_timings_are_judged_on_their_interval():
    # two paper-profile runs measured blas-parallel against threads at 0.94x and 1.07x: both straddle, both
    # inconclusive, so the two runs give the same verdict
    assert claims.faster(1.07)[0] == claims.faster(0.94)[0] == "inconclusive"
    assert claims.faster(1.5)[0] == "reproduced" and "faster" in claims.faster(1.5)[1]
    assert claims.faster(0.5) == ("differs", claims.faster(0.5)[1]) and "other way" in claims.faster(0.5)[1]
    # a tight tie, measured in rounds, is not "faster"
    assert claims.faster(1.0, spread=claims.repeats([0.99, 1.0, 1.01]))[0] == "differs"
    # threads over the serial loop at 8.03x and 7.98x against "≈ 10 (±2)": one verdict for both
    assert claims.within(8.03, 10, 2, "x", noise=claims.NOISE)[0] == "inconclusive"
    assert claims.within(7.98, 10, 2, "x", noise=claims.NOISE)[0] == "inconclusive"
    assert claims.within(9.9, 10, 2, "x", spread=claims.repeats([9.5, 9.9, 10.3]))[0] == "reproduced"
    assert claims.within(5.0, 10, 2, "x", spread=claims.repeats([4.8, 5.0, 5.3]))[0] == "differs"
    assert claims.within(7.98, 10, 2, "x")[0] == "differs"  # not a timing: no interval
    iv = claims.repeats([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (iv.mid, iv.lo, iv.hi) == (3.0, 1.0, 5.0) and "5 rounds" in str(iv)


def example_threads(speedups, threads=2):
    return pd.DataFrame({"round": range(len(speedups)), "net": "2h", "batch": 1000, "threads": threads,
                         "s_serial": 0.4, "s_threads": [0.4 / s for s in speedups], "speedup": speedups,
                         "loadavg": 1.0, "cpu": "cpu", "cores": 2})


@pytest.mark.parametrize("speedups, verdict", [([1.8, 1.85, 1.9, 1.82, 1.88], "not measurable here"),
                                               ([1.1, 1.2, 1.15, 1.2, 1.1], "differs"),
                                               ([1.5, 1.7, 1.65, 1.55, 1.6], "inconclusive")])
def test_threads_10x_is_the_papers_design_like_for_like(tmp_path, speedups, verdict):
    example_threads(speedups).to_csv(tmp_path / "03_example_threads.csv", index=False)
    row = by_claim(claims.table(tmp_path)).loc["our implementation (threads): average speedup ≈ 10"]
    assert row.verdict == verdict and "Projection, not a measurement" in row.why
    assert row.ours == pytest.approx(pd.Series(speedups).median())


def test_async_differs_with_the_measured_reason(tmp_path):
    acc = {("serial", 1): 0.89, ("async", 2): 0.89, ("async", 3): 0.55, ("async", 4): 0.27}
    seed003_table(acc).to_csv(tmp_path / "06_seed003_table_paper.csv", index=False)
    pd.DataFrame({"method": "async", "processes": [3, 3], "staleness_mean": [1.0, 1.02], "lr0": 0.1}).to_csv(
        tmp_path / "06_seed003_runs_paper.csv", index=False)
    pd.DataFrame({"lr0": [0.1, 0.2, 0.3], "test_acc": [0.89, 0.549, 0.15]}).to_csv(
        tmp_path / "06_seed003_lr_grid_paper.csv", index=False)
    t = by_claim(claims.table(tmp_path))
    x3 = t.loc["async x3: accuracy 0.8426 after 5 epochs"]
    assert x3.verdict == "differs" and "staleness 1.02" in x3.why and "lr 0.2" in x3.why and "0.5490" in x3.why
    # ours is one worker and a server: not the seed's two workers
    assert t.loc["async x2 is faster than serial"].verdict == "not comparable"


def test_cpu_use_that_fills_two_cores_still_grows(tmp_path):
    usage = pd.DataFrame({"method": ["serial", "sync", "sync", "sync"], "processes": [1, 2, 3, 4],
                          "cpu_percent_of_machine": [50.0, 99.3, 99.3, 99.2],
                          "memory_percent_of_machine": [3.2, 5.5, 7.8, 10.1]})
    usage.to_csv(tmp_path / "06_seed003_usage_paper.csv", index=False)
    t = by_claim(claims.table(tmp_path))
    cpu = t.loc["CPU use grows with the process count (35-40 % -> 65-70 %)"]
    assert cpu.verdict == "reproduced" and "the CPU is full" in cpu.why
    usage.assign(cpu_percent_of_machine=[50.0, 99.3, 60.0, 99.0]).to_csv(tmp_path / "06_seed003_usage_paper.csv", index=False)
    assert by_claim(claims.table(tmp_path)).loc[cpu.name].verdict == "differs"  # a real drop
    md = claims.markdown(pd.DataFrame([{"seed": "000", "claim": "c", "setting": "seed: a; ours: b", "claimed": 10,
                                        "ours": 7.98, "tolerance": "±2x", "verdict": "inconclusive", "why": "x"}]))
    assert "| 000 | c | seed: a; ours: b | 10 | 7.98 | ±2x | inconclusive |" in md


def gpu_campaign_csv(path, rows, gpu="NVIDIA H200", cpu="Some CPU"):
    """A small bench_gpu.csv: (impl, device, net, batch, threads, ms_per_step, gflops) rows of one machine."""
    cols = ["impl", "device", "net", "batch", "threads", "ms_per_step", "gflops"]
    pd.DataFrame(rows, columns=cols).assign(env_gpu=gpu, env_cpu=cpu).to_csv(path / claims.GPU_CSV, index=False)


def test_cuda_20x_divides_by_the_serial_loop_of_the_same_run_not_the_largest_gpu_row(tmp_path):
    gpu_campaign_csv(tmp_path, [
        ("serial-example", "cpu", "1h", 100, 1, 100.0, 1.0), ("serial-example", "cpu", "1h", 1000, 1, 1000.0, 1.0),
        ("numba-cuda", "gpu", "1h", 100, 1, 8.0, 12.0), ("numba-cuda", "gpu", "1h", 1000, 1, 50.0, 20.0),
        ("numba-cuda", "gpu", "1h", 10000, 1, 0.5, 900.0),   # no serial row at 10,000: no speedup there
        ("cupy", "gpu", "1h", 100, 1, 0.1, 120.0),            # 1000x, but cuBLAS is not the paper's kernels
        ("threads", "cpu", "1h", 100, 16, 10.0, 10.0)])
    # another CSV with a GPU row and a "speedup" column must not leak in
    pd.DataFrame({"impl": ["numba-cuda"], "device": ["gpu"], "net": ["1h"], "batch": [100], "threads": [1],
                  "speedup": [500.0]}).to_csv(tmp_path / "05_speedup_batch_1h_mnist_full.csv", index=False)
    row = by_claim(claims.table(tmp_path)).loc["CUDA implementation ≈ 20x speedup"]
    assert row.ours == pytest.approx(1000 / 50) and row.verdict == "reproduced"
    assert "serial-example" in row.why and "per-example serial loop" in row.why and "NVIDIA H200" in row.why
    assert row.source == "figures/bench_gpu.csv"


@pytest.mark.parametrize("serial", [[], [("serial-example", "cpu", "1h", 1000, 1, 100.0, 1.0)]])  # none; another batch
def test_cuda_20x_without_its_baseline_is_not_measured_yet(tmp_path, serial):
    gpu_campaign_csv(tmp_path, [("numba-cuda", "gpu", "1h", 100, 1, 8.0, 12.0), *serial])
    row = by_claim(claims.table(tmp_path)).loc["CUDA implementation ≈ 20x speedup"]
    assert row.verdict == "not measured yet" and "serial-example" in row.why


@pytest.mark.parametrize("gain,verdict", [(40.0, "reproduced"), (3.0, "differs")])
def test_theano_cuda_batch_judges_theano_gpu_rows(tmp_path, gain, verdict):
    gpu_campaign_csv(tmp_path, [("theano", "gpu", "1h", 100, 1, 10.0, 5.0), ("theano", "gpu", "1h", 10000, 1, 10.0, 5.0 * gain),
                                ("numba-cuda", "gpu", "1h", 100, 1, 1.0, 50.0)])
    row = by_claim(claims.table(tmp_path)).loc["Theano CUDA scales very fast with batch size"]
    assert row.verdict == verdict and row.ours == pytest.approx(gain)


def test_theano_cuda_batch_without_theano_gpu_rows_says_why(tmp_path):
    gpu_campaign_csv(tmp_path, [("numba-cuda", "gpu", "1h", 100, 1, 1.0, 50.0), ("theano", "cpu", "1h", 100, 1, 1.0, 5.0)])
    row = by_claim(claims.table(tmp_path)).loc["Theano CUDA scales very fast with batch size"]
    assert row.verdict == "not measurable here" and "none for Theano" in row.why


def test_async_with_two_workers_is_explained_by_the_variant_that_puts_the_difference_back(tmp_path):
    seed003_table({("serial", 1): 0.89, ("async", 2): 0.89}).to_csv(tmp_path / "06_seed003_table_paper.csv", index=False)
    rows = [("reference", "serial", 1, 0.870), ("async", "delta", 2, 0.40), ("async", "staleness", 2, 0.885),
            ("async", "per_worker", 2, 0.70)]
    pd.DataFrame([{"experiment": e, "variant": v, "processes": p, "seed": s, "test_acc": a, "time_s": 10.0}
                  for e, v, p, a in rows for s in (0, 1)]).to_csv(tmp_path / "06_seed003_explain_paper.csv", index=False)
    t = by_claim(claims.table(tmp_path))
    row = t.loc["async x2: accuracy 0.9111 after 5 epochs"]
    # the seed's two workers gained 2.3 points over its serial run; 'staleness' gains 1.5 here: within 2 points
    assert row.verdict == "explained" and "'staleness'" in row.why and "06_seed003_explain_paper.csv" in row.source
    pd.DataFrame([{"experiment": e, "variant": v, "processes": p, "seed": 0, "test_acc": a, "time_s": 10.0}
                  for e, v, p, a in rows[:2]]).to_csv(tmp_path / "06_seed003_explain_paper.csv", index=False)
    assert by_claim(claims.table(tmp_path)).loc[row.name].verdict == "differs"  # nothing puts it back


def test_the_seeds_setup_explains_a_row_only_when_it_also_gives_the_seeds_serial_run(tmp_path):
    def setup(serial, sync2):
        pd.DataFrame({"variant": ["h100", "h100"], "processes": [1, 2], "test_acc": [serial, sync2]}).to_csv(
            tmp_path / "06_seed003_seed_setup.csv", index=False)
        return claims._seed_setup(claims.Figures(str(tmp_path)), "sync", 2, 0.02)

    explains, why = setup(0.94, 0.925)
    assert not explains and "explains neither" in why and "h100 x2 reaches 0.9250" in why
    explains, why = setup(0.89, 0.925)
    assert explains and "serial 0.8900 (the seed's 0.8880)" in why
    assert not setup(0.89, 0.80)[0]
    (tmp_path / "06_seed003_seed_setup.csv").unlink()
    assert claims._seed_setup(claims.Figures(str(tmp_path)), "sync", 2, 0.02) == (False, "")


def bench_csv(path, rows):
    """A notebook-05 CSV of serial-example rows: (batch, steps per epoch, ms of each round)."""
    pd.DataFrame([{"impl": "serial-example", "threads": 1, "batch": b, "ms_per_step": float(pd.Series(ms).median()),
                   "s_per_epoch": float(pd.Series(ms).median()) * k / 1e3, "ms_rounds": bench.rounds_text([m / 1e3 for m in ms])}
                  for b, k, ms in rows]).to_csv(path, index=False)


def test_bench_timings_are_judged_round_by_round(tmp_path):
    # a slow stretch (every other round twice as slow) hits both batch sizes alike: round by round the ratio is
    # 1.10 in every round, a clear "faster"; from the medians alone, +-20 % straddles the edge
    slow = [1, 2, 1, 2, 1]
    csv = tmp_path / "05_speedup_batch_2h_mnist_paper.csv"
    bench_csv(csv, [(10, 5000, [10 * x for x in slow]), (10000, 5, [11000 * x for x in slow])])
    row = by_claim(claims.table(tmp_path)).loc["training time decreases as minibatch size decreases"]
    assert row.verdict == "reproduced" and row.ours == pytest.approx(1.1) and "5 interleaved rounds" in row.why
    df = pd.read_csv(csv).drop(columns="ms_rounds")  # a CSV from before the rounds were kept: one run, +-20 %
    df.to_csv(csv, index=False)
    row = by_claim(claims.table(tmp_path)).loc["training time decreases as minibatch size decreases"]
    assert row.verdict == "inconclusive" and "one run" in row.why


def test_seed003_times_are_judged_on_repeated_runs(tmp_path):
    acc = {("serial", 1): 0.89, ("sync", 2): 0.85}
    seed003_table(acc).to_csv(tmp_path / "06_seed003_table_paper.csv", index=False)   # sync x2: 20 s, serial 10 s
    claim = "sync is slower than serial (communication overhead)"
    pd.DataFrame([{"method": m, "mode": m, "processes": p, "round": r, "time_s": t}
                  for r, (serial, sync) in enumerate([(10.0, 10.8), (12.0, 13.0), (9.0, 9.9)])
                  for m, p, t in (("serial", 1, serial), ("sync", 2, sync))]).to_csv(
        tmp_path / "06_seed003_times_paper.csv", index=False)
    row = by_claim(claims.table(tmp_path)).loc[claim]
    assert row.verdict == "reproduced" and "3 whole runs" in row.why and row.ours == pytest.approx(13 / 12)
    assert row.source == "figures/06_seed003_times_paper.csv"


@pytest.mark.parametrize("lo, verdict", [(1.1, "reproduced"), (0.9, "inconclusive")])
def test_schemes_are_judged_on_their_interleaved_rounds(tmp_path, lo, verdict):
    pd.DataFrame([dict(method="serial", schedule="-", micro_batches=1, engines=1, vs_serial=1.0, vs_serial_min=1.0,
                       vs_serial_max=1.0, rounds=5, net="2h", batch_size=1000),
                  dict(method="data parallel", schedule="-", micro_batches=1, engines=2, vs_serial=1.3, vs_serial_min=lo,
                       vs_serial_max=1.4, rounds=5, net="2h", batch_size=1000)]).to_csv(tmp_path / "07_goals.csv", index=False)
    row = by_claim(claims.table(tmp_path)).loc["data parallelism speeds training up over serial"]
    assert row.verdict == verdict and "5 interleaved rounds" in row.why


def test_two_runs_say_which_verdicts_moved(tmp_path):
    first = pd.DataFrame({"seed": ["000", "001"], "claim": ["a", "b"], "ours": [1.0, 2.0],
                          "verdict": ["reproduced", "differs"]})
    second = first.assign(ours=[1.1, 1.9], verdict=["reproduced", "inconclusive"])
    df = claims.two_runs(first, second)
    assert df.same.tolist() == [True, False] and df.verdict_second.tolist() == ["reproduced", "inconclusive"]
    (tmp_path / "run1").mkdir()
    first.to_csv(tmp_path / "run1" / "first.csv", index=False)
    pd.DataFrame({"notebook": ["(whole study)"], "machine": ["AMD EPYC, 2 cores"]}).to_csv(
        tmp_path / "run1" / "study_times_paper.csv", index=False)
    second.to_csv(tmp_path / "10_against_the_seeds.csv", index=False)
    assert claims.main(["--first", str(tmp_path / "run1" / "first.csv"),
                        "--table", str(tmp_path / "10_against_the_seeds.md"), "--out", str(tmp_path / "two.csv")]) == 0
    two = pd.read_csv(tmp_path / "two.csv", keep_default_na=False)
    assert two.same.tolist() == [True, False]
    assert two.machine_first.tolist() == ["AMD EPYC, 2 cores"] * 2 and two.machine_second.tolist() == ["", ""]
