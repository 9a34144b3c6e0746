"""Data and model parallelism on engines against their throughput goals, in one run: serial, data parallel and
model parallel (plain, GPipe, 1F1B) side by side.

    env -u OPENBLAS_CORETYPE python -m parbp.ipp_bench              # Net-2h, MNIST, batch 1000, 2 MPI engines
    python -m parbp.ipp_bench --steps 5 --rounds 1 --subset 10000    # a quick look

The CSV (``--out``, default figures/07_goals.csv) has one row per configuration, all timed on the same engines
(``run_rounds``): throughput and its ratio to serial (the median of the rounds' ratios, min and max), the
pipeline's measured idle fraction against ``parbp.pipeline``'s prediction from the same steps' task times, the
activations each stage kept against the formula, each goal and whether it was met, and the machine.
``cpu_share`` (CPU over wall time per process) well below 1 means other work took cores, so the ratios are
unreliable; ``vs_serial_per_cpu_s`` divides it out (an estimate, never a goal). ``ceiling_vs_serial``: the most
a pipeline of this split can gain at that m before its bubble and messages (``ceilings``).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pandas as pd

from . import pipeline, trainers
from .data import load_first
from .distributed import data_arguments, leading
from .results import FIGURES, write_csv
from .timing import sample

GOAL_DP, GOAL_MP = 1.6, 1.3  # the goals: throughput over serial
IDLE_TOLERANCE = 0.05


def measure(net="2h", dataset="mnist", subset=None, batch_size=1000, micro_batches=(2, 4, 8), engines=2, steps=10,
            rounds=3, lr=0.1, relay=False, seed=0) -> pd.DataFrame:
    """Every configuration trained in interleaved rounds on the same engines: one row each, its goals checked."""
    from . import ipp as pipp

    ds = load_first(dataset, subset, seed)
    models, times, shares, extra, loads = run_rounds(
        ds, engines, lambda eng: _models(eng, ds, net, micro_batches, relay, seed), batch_size, lr, steps, rounds)
    ceiling = ceilings(ds, net, batch_size, sorted({1, *micro_batches}), engines, seed=seed)
    rows = []
    for key, model in models.items():
        (method, schedule, m), t = key, np.array(times[key])
        rows.append({"method": method, "schedule": schedule, "micro_batches": m,
                     "engines": 1 if method == "serial" else engines, "examples_per_s": float(np.median(t)),
                     "examples_per_s_min": float(t.min()), "examples_per_s_max": float(t.max()),
                     "cpu_share": float(np.median(shares[key])) if shares[key] else np.nan})
        if isinstance(model, pipp.ModelParallel):
            rows[-1].update(_pipeline_columns(model, batch_size, extra[key]), ceiling_vs_serial=ceiling[m])
    df = pd.DataFrame(rows)
    # over serial round by round (the rounds interleave every configuration): the median and its spread
    ratios = [np.array(times[key]) / np.array(times["serial", "-", 1]) for key in models]
    df["vs_serial"] = [float(np.median(r)) for r in ratios]
    df["vs_serial_min"], df["vs_serial_max"] = [float(r.min()) for r in ratios], [float(r.max()) for r in ratios]
    df["efficiency"] = df.vs_serial / df.engines
    # per CPU-second of each process instead of per wall-second: waiting ranks poll, so on an idle machine this
    # equals vs_serial; the goals use vs_serial
    per_cpu = df.examples_per_s / df.cpu_share
    df["vs_serial_per_cpu_s"] = per_cpu / per_cpu[df.method == "serial"].iloc[0]
    return leading(_goals(df, engines), machine(net, dataset, ds, batch_size, steps, rounds, models, loads))


def run_rounds(ds, engines: int, make_models, batch_size, lr, steps, rounds):
    """``make_models(eng)`` on fresh MPI engines, trained in interleaved rounds (``_rounds``): (models, throughputs,
    CPU shares, stashes, the load average before and after)."""
    from . import ipp as pipp

    before = os.getloadavg()[0]
    with pipp.Engines(n=engines) as eng:
        models = make_models(eng)
        measured = _rounds(models, len(ds.X_train) // batch_size, batch_size, lr, steps, rounds)
        return (models, *measured, (before, os.getloadavg()[0]))


def machine(net, dataset, ds, batch_size, steps, rounds, models, loads) -> dict:
    """The run and the machine, the first columns of a benchmark's CSV."""
    from . import envinfo

    env = envinfo.summary()
    serial = next(m for m in models.values() if m.name == "serial")
    return {"net": net if isinstance(net, str) else "-".join(map(str, net)), "dataset": dataset,
            "train_examples": len(ds.X_train), "batch_size": batch_size, "steps_per_round": steps, "rounds": rounds,
            "cpu": env["cpu"], "cores": env["cores_logical"], "blas": env["blas"],
            "openblas_coretype": env["openblas_coretype"], "impl": serial.impl,
            "loadavg_before": round(loads[0], 2), "loadavg_after": round(loads[1], 2)}


def report_head(df) -> str:
    """The report's first line: the run and the machine."""
    r0 = df.iloc[0]
    return (f"Net-{r0.net}, {r0.dataset} ({r0.train_examples} examples), batch {r0.batch_size}, {r0.rounds} rounds x "
            f"{r0.steps_per_round} steps | {r0.cpu}, {r0.cores} cores | {r0.blas} | "
            f"OPENBLAS_CORETYPE={r0.openblas_coretype} | load {r0.loadavg_before} -> {r0.loadavg_after}")


def _models(eng, ds, net, micro_batches, relay, seed) -> dict:
    """(method, schedule, micro-batches) -> the model, every configuration of one run."""
    from . import ipp as pipp

    models = {("serial", "-", 1): pipp.Serial(ds, net=net, seed=seed),
              ("data parallel", "-", 1): pipp.DataParallel(eng, ds, net=net, seed=seed),
              ("model parallel", "plain", 1): pipp.ModelParallel(eng, ds, net=net, schedule="plain", seed=seed),
              **{("model parallel", schedule, m): pipp.ModelParallel(eng, ds, net=net, schedule=schedule,
                                                                     micro_batches=m, seed=seed)
                 for schedule in ("gpipe", "1f1b") for m in micro_batches}}
    if relay:
        from . import ipp_relay

        models[("data parallel (client relay)", "-", 1)] = ipp_relay.RelayDataParallel(eng, ds, net=net, seed=seed)
        models[("model parallel (client relay)", "gpipe", 4)] = ipp_relay.RelayModelParallel(
            eng, ds, net=net, micro_batches=4, seed=seed)
    return models


def _rounds(models, steps_per_epoch, batch_size, lr, steps, rounds):
    """Every model trains ``steps`` minibatches per round, timed on the client from submission to the last answer,
    interleaved so that a slow stretch of a shared machine hits them all; round 0 warms up. Per model: throughputs,
    CPU shares, and the pipeline's activation stash."""
    times, shares, extra = {k: [] for k in models}, {k: [] for k in models}, {k: {} for k in models}
    for r in range(rounds + 1):
        first = (r * steps) % max(steps_per_epoch - steps + 1, 1)
        for key, model in models.items():
            t0 = time.perf_counter()
            out = model.run_steps(0, batch_size, lr, first=first, count=steps)
            if r > 0:
                times[key].append(out["steps"] * batch_size / (time.perf_counter() - t0))
                shares[key] += [out["cpu_share"]] if "cpu_share" in out else []
                extra[key].update({k: v for k, v in out.items() if k.startswith("peak_stash_")})
    return times, shares, extra


def ceilings(ds, net, batch_size, micro_batches, engines, repeats=5, seed=0) -> dict[int, float]:
    """Per m: serial's step time over the slowest stage's work per minibatch (what a pipeline could reach with free
    messages and no bubble), both timed on one core here, interleaved so that a busy machine slows both alike."""
    from threadpoolctl import threadpool_limits

    X, Y = ds.X_train[:batch_size], ds.Y_train[:batch_size]
    serial = trainers.get(trainers.fastest_cpu(threaded=False))(net=net, n_in=ds.n_in, n_out=ds.n_out, seed=seed)
    params, split = serial.params, pipeline.split_layers(serial.sizes, engines)

    def stage_times(m):
        stages = [pipeline.Stage([params[l] for l in layers], s == 0, s == len(split) - 1)
                  for s, layers in enumerate(split)]
        last, busy = len(stages) - 1, [0.0] * len(stages)

        def on(s, work):  # ``work()`` on stage s, its time added to the stage's
            t0 = time.perf_counter()
            out = work()
            busy[s] += time.perf_counter() - t0
            return out

        for rows in np.array_split(np.arange(batch_size), m):
            acts, x = [], X[rows]
            for s, st in enumerate(stages):
                acts.append(on(s, lambda: st.forward(x)))
                x = acts[-1][-1]
            delta = on(last, lambda: stages[-1].output_delta(x, Y[rows], batch_size)[1])
            for s in range(last, -1, -1):
                if s < last:
                    delta = on(s, lambda: stages[s].input_delta(below, acts[s][-1]))
                below = on(s, lambda: stages[s].backward(acts[s], delta))
        for s, st in enumerate(stages):
            on(s, lambda: st.update(1e-9))
        return max(busy)

    with threadpool_limits(1):
        serial.step(X, Y, 1e-9), stage_times(max(micro_batches))  # warm-up
        samples = {m: [] for m in micro_batches}
        for _ in range(repeats):
            for m in micro_batches:
                samples[m].append(sample(lambda: serial.step(X, Y, 1e-9), 1) / stage_times(m))
    return {m: float(np.median(v)) for m, v in samples.items()}


def _pipeline_columns(model, B, extra) -> dict:
    """Idle fractions (measured, predicted, theory), per-stage task times, activations kept (measured, formula)."""
    steps = model.steps[-50:]  # the counted rounds' steps (warm-up excluded when there are enough)
    fwd, bwd = (np.mean([t[k] for t in steps], axis=0) for k in ("forward_s", "backward_s"))
    stage_s = model.m * (fwd + bwd)
    mem = model.activation_memory(B)
    return {"idle_measured": float(np.mean([t["idle_fraction"] for t in steps])),
            "idle_predicted": float(np.mean([t["idle_predicted"] for t in steps])),
            "idle_theory": pipeline.bubble_theory(model.workers, model.m),
            "stage_ms": ";".join(f"{1e3 * s:.1f}" for s in stage_s),
            "stage_imbalance": float(stage_s.max() / stage_s.min()),
            "stage_layers": ";".join("-".join(map(str, l)) for l in model.stages),
            "acts_kept_measured": ";".join(map(str, extra.get("peak_stash_micro_batches", []))),
            "acts_kept_formula": ";".join(map(str, mem.micro_batches_formula)),
            "acts_mib_measured": ";".join(f"{b / 2**20:.2f}" for b in extra.get("peak_stash_bytes", [])),
            "acts_mib_formula": ";".join(f"{b / 2**20:.2f}" for b in mem.bytes_formula)}


def _goals(df, p) -> pd.DataFrame:
    """Three goals, each in its own pair of columns (goal text, met): throughput (data parallel, and the best
    schedule at m = 8), the bubble against its prediction, and the activations each stage kept."""
    df = df.copy()
    for g in ("throughput", "idle", "memory"):
        df[f"goal_{g}"], df[f"met_{g}"] = "", pd.NA
    dp = df.method == "data parallel"
    df.loc[dp, "goal_throughput"] = f">= {GOAL_DP}x serial"
    df.loc[dp, "met_throughput"] = df.loc[dp, "vs_serial"] >= GOAL_DP
    mp8 = (df.method == "model parallel") & (df.micro_batches == 8)
    if mp8.any():
        best = df[mp8].vs_serial.idxmax()
        df.loc[best, "goal_throughput"] = f"best schedule at m=8: >= {GOAL_MP}x serial"
        df.loc[best, "met_throughput"] = df.loc[best, "vs_serial"] >= GOAL_MP
    for i in df[(df.method == "model parallel") & df.schedule.isin(["gpipe", "1f1b"])].index:
        r = df.loc[i]
        df.loc[i, "goal_idle"] = f"|measured - predicted| <= {IDLE_TOLERANCE}"
        df.loc[i, "met_idle"] = abs(r.idle_measured - r.idle_predicted) <= IDLE_TOLERANCE
        kept = [int(k) for k in str(r.acts_kept_measured).split(";") if k]
        limit, name = (p, "p") if r.schedule == "1f1b" else (r.micro_batches, "m")
        df.loc[i, "goal_memory"] = (f"activations kept per stage <= {name} = {limit} "
                                    f"and = formula ({r.acts_kept_formula})")
        df.loc[i, "met_memory"] = bool(kept) and max(kept) <= limit and ";".join(map(str, kept)) == r.acts_kept_formula
    return df


def report(df) -> str:
    """The table and every goal, met or missed."""
    cols = ["method", "schedule", "micro_batches", "examples_per_s", "vs_serial", "efficiency", "cpu_share",
            "vs_serial_per_cpu_s", "ceiling_vs_serial", "idle_measured", "idle_predicted", "idle_theory", "stage_ms",
            "acts_kept_measured", "acts_mib_measured", "acts_mib_formula"]
    body = df[[c for c in cols if c in df]].to_string(index=False, float_format=lambda v: f"{v:.3f}")
    lines = []
    for r in df.itertuples():
        for g in ("throughput", "idle", "memory"):
            goal, met = getattr(r, f"goal_{g}"), getattr(r, f"met_{g}")
            if goal:
                value = {"throughput": f"x{r.vs_serial:.2f} serial",
                         "idle": f"measured {r.idle_measured:.3f}, predicted {r.idle_predicted:.3f}",
                         "memory": f"kept {r.acts_kept_measured}"}[g]
                lines.append(f"  {'MET   ' if met else 'MISSED'} {r.method} {r.schedule} m={r.micro_batches}: "
                             f"{goal} ({value})")
    return f"{report_head(df)}\n{body}\ngoals:\n" + "\n".join(lines)


def parser(prog: str, doc: str, rounds: int, out: str):
    """The options both engine benchmarks take (the data, the engines, the rounds, the CSV)."""
    from .cli import Parser, positive_int

    p = Parser(prog=f"python -m {prog}", description=doc.split("\n\n")[0])
    data_arguments(p)
    p.add_argument("--engines", type=positive_int, default=2)
    p.add_argument("--steps", type=positive_int, default=10, help="minibatches per configuration and round")
    p.add_argument("--rounds", type=positive_int, default=rounds)
    p.add_argument("--out", default=str(FIGURES / out))
    return p


def publish(args, measure, report) -> int:
    """Measure with the command line's options, write the CSV (``--out``), print the report and the path."""
    df = measure(**{k: v for k, v in vars(args).items() if k != "out"})
    path = write_csv(df, args.out)
    print(report(df))
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    from .cli import positive_int

    p = parser("parbp.ipp_bench", __doc__, rounds=3, out="07_goals.csv")
    p.add_argument("--micro-batches", type=positive_int, nargs="+", default=[2, 4, 8])
    p.add_argument("--relay", action="store_true", help="also time the client-relay versions (parbp.ipp_relay)")
    args = p.parse_args(argv)
    if any(m > args.batch_size for m in args.micro_batches):
        p.error(f"--micro-batches must be between 1 and the batch size ({args.batch_size})")
    return publish(args, measure, report)


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main, prog="python -m parbp.ipp_bench"))
