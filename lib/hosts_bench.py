"""The cost model held against emulated hosts: measured step times of data parallelism, GPipe, 1F1B and
tensor parallelism over shaped links, beside the alpha-beta model's predictions.

    python -m parbp.hosts_bench --out figures/07_hosts_validation.csv     # the grid below, ~20 min
    python -m parbp.hosts_bench --quick --out /tmp/v.csv                  # 2 settings, 2 ranks

For each link setting (one-way delay, rate) it makes 4 hosts (``parbp.hosts``), measures the link itself
(configured against measured round trip and rate), and for 2, 3 and 4 ranks runs one MPI job that:

  1. ping-pongs between ranks 0 and 1 (``costmodel``'s measurement, 2 ranks only: the link is the same);
  2. times every axis's compute with all ranks computing at once and no messages, so the compute times
     carry the contention of p ranks on this machine's cores;
  3. runs each axis for a few steps over the links and times the steps.

The model of a step is that compute plus the messages as α + β·n each:

  data parallel   T = T_comp(B/p) + MPICH's all-reduce of the 4N-byte gradient (``costmodel.mpich_allreduce``)
  GPipe, 1F1B     T = the schedule simulated (``pipeline.simulate``) with the measured stage times and one
                  α + β·(B/m · width · 4) per boundary message, messages queueing on each link, plus the update
  tensor parallel T = T_comp + one all-reduce per activation exchange (``tensor_parallel.message_bytes``)

α and β: per setting from its own ping-pong ("own link"), and — the test — predicted for a setting from the
others ("held out"): α = α₀ + delay and 1/β = η·rate fitted by least squares on the fit settings only,
then the held-out settings' step times predicted from their configured delay and rate alone.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from . import costmodel, ipp, pipeline, tensor_parallel, trainers
from .cli import Parser, positive_int, run
from .data import random_batch
from .distributed import PackedGradients, allreduce_step
from .envinfo import cpu_name, machine_label
from .hosts import Hosts, measure_link, unavailable
from .nets import init_params, n_params
from .results import write_csv
from .timing import sample

NET = [784, 256, 256, 256, 10]  # 4 weight layers: a stage each for 4 ranks, two tensor-parallel pairs
BATCH, MICRO, STEPS = 512, 4, 5
AXES = ("data parallel", "gpipe", "1f1b", "tensor parallel")
# (one-way delay µs, rate Mbit/s); held out: one to three per rate, spread over the delays
SETTINGS = [(50, 100), (200, 100), (500, 100), (2000, 100), (100, 200), (200, 200), (1000, 200), (2000, 200),
            (50, 400), (500, 400), (1000, 400)]
HELD_OUT = {(200, 100), (100, 200), (2000, 200), (500, 400)}
# tensor parallelism moves B·Σwidths activations, data parallelism the 4N-byte gradient: which is less depends on B
CROSSOVER_SETTING, CROSSOVER_BATCHES = (500, 200), (64, 128, 256, 512, 1024, 2048)
PINGPONG_SIZES = (8, 1024, 16384, 131072, 524288, 1048576)
# tbf lets a message shorter than its bucket (burst_bytes, ~1 ms at the rate) pass at the veth's own speed;
# the messages a step sends are larger, so β is fitted on the sizes past the bucket (and α on the smallest)
FIT_FROM_BYTES = 131072


# ---- The MPI job (one rank per host) ---------------------------------------------------------------------


def _median_time(fn, repeat):
    return float(np.median([sample(fn, 1) for _ in range(repeat)]))


def worker(args) -> None:
    """One rank of the job: every axis's compute and measured step; rank 0 writes them all as JSON."""
    from mpi4py import MPI  # initializes MPI: only in the ranks

    world = MPI.COMM_WORLD
    out = {"p": world.size, "batch": args.batch}
    if args.pingpong:
        out["pingpong"] = costmodel._measure(PINGPONG_SIZES, 0.02)
    threadpool_limits(1)
    ipp._engine_init(60.0, mpi=True)
    comm = ipp._comm()  # every wait polled, yielding the core, with a deadline
    params = init_params(NET, 0)
    X, Y = random_batch(NET[0], NET[-1], args.batch * (args.steps + 2), 0)
    compute, measured = {}, {}
    for axis in (_data_parallel, _pipelines, _tensor_parallel):
        axis(comm, params, X, Y, args, compute, measured)
    out["ranks"] = world.gather({"compute": compute, "measured": measured}, root=0)
    if world.rank == 0:
        Path(args.worker_out).write_text(json.dumps(out))


def _data_parallel(comm, params, X, Y, args, compute, measured):
    """B/p examples' gradients, then one Allreduce of every parameter."""
    t = trainers.get(trainers.fastest_cpu(threaded=False))(net=NET, n_in=NET[0], n_out=NET[-1], seed=0)
    packed, B = PackedGradients(t), args.batch
    mine = np.array_split(np.arange(B), comm.size)[comm.rank]
    t.gradients(X[mine], Y[mine])  # warm-up
    comm.barrier("compute timing")
    compute["data parallel"] = _median_time(lambda: t.apply_gradients(t.gradients(X[mine], Y[mine])[1], 1e-6), 5)
    comm.barrier("data parallel")
    measured["data parallel"] = sample(lambda: allreduce_step(t, packed, X[mine], Y[mine], B, 1e-6, comm, comm),
                                       args.steps)


def _pipelines(comm, params, X, Y, args, compute, measured):
    """This rank's stage, forward and backward of one micro-batch, then each schedule over the links."""
    p, rank, B, mb = comm.size, comm.rank, args.batch, args.batch // MICRO  # mb: a micro-batch's examples
    layers = pipeline.split_layers(NET, p)[rank]
    st = pipeline.Stage([params[l] for l in layers], first=rank == 0, last=rank == p - 1)
    xb = X[:mb] if rank == 0 else np.random.default_rng(rank).uniform(0, 1, (mb, NET[layers[0]])).astype(np.float32)
    gout = np.full((mb, NET[layers[-1] + 1]), 1e-3, np.float32)

    def backward():
        acts = st.forward(xb)  # the backward needs a forward's activations; its time is subtracted below
        delta = st.output_delta(acts[-1], Y[:mb], B)[1] if rank == p - 1 else st.input_delta(gout.copy(), acts[-1])
        st.backward(acts, delta)

    backward()
    comm.barrier("compute timing")
    f = _median_time(lambda: st.forward(xb), 7)
    compute["stage"] = [f, _median_time(backward, 7) - f, _median_time(lambda: st.update(0.0), 3)]
    for schedule in ("gpipe", "1f1b"):
        key = f"pipe-{schedule}"
        ipp._mp_setup(key, [params[l] for l in layers], layers, NET, p, schedule, MICRO, X, Y, len(X), 0)
        ipp._mp_run(key, 0, B, 1e-6, 0, 1, False)  # warm-up step
        r = ipp._mp_run(key, 0, B, 1e-6, 1, args.steps, False)
        measured[schedule] = r["seconds"] / r["steps"]


def _tensor_parallel(comm, params, X, Y, args, compute, measured):
    """A step with its Allreduces skipped times the compute alone."""
    shard = tensor_parallel.Shard(params, comm.rank, comm.size)
    idx = np.arange(args.batch)
    shard.step(X[idx], Y[idx], 1e-6, lambda buf, what: None)
    comm.barrier("compute timing")
    compute["tensor parallel"] = _median_time(lambda: shard.step(X[idx], Y[idx], 1e-6, lambda buf, what: None), 5)
    r = tensor_parallel.train_steps(shard, X, Y, [idx] * (args.steps + 1), 1e-6, comm, comm)
    measured["tensor parallel"] = float(np.mean(r["step_s"][1:]))


# ---- The model -------------------------------------------------------------------------------------------


def predict(compute: list[dict], p: int, alpha: float, beta: float, batch: int = BATCH, micro: int = MICRO) -> dict:
    """Predicted step seconds per axis from each rank's compute times (``worker``'s) and one link's α, β."""
    link = costmodel.AlphaBeta(alpha, beta)
    out = {"data parallel": _compute_s(compute, "data parallel")
           + float(costmodel.mpich_allreduce(link, 4 * (n_params(NET) + 1), p))}
    f, b, u = zip(*(c["stage"] for c in compute))
    nbytes = batch // micro * np.mean([NET[layers[-1] + 1] for layers in pipeline.split_layers(NET, p)[:-1]]) * 4
    for schedule in ("gpipe", "1f1b"):
        out[schedule] = pipeline.simulate(schedule, micro, f, b, alpha, beta * nbytes)["span_s"] + max(u)
    msgs = tensor_parallel.message_bytes(NET, batch)
    each = float(costmodel.mpich_allreduce(link, msgs["payload_bytes"] / msgs["allreduces"], p))
    out["tensor parallel"] = _compute_s(compute, "tensor parallel") + msgs["allreduces"] * each
    return out


def fit_links(links: pd.DataFrame) -> tuple[float, float]:
    """α = α₀ + delay, 1/β = η·rate from the fit settings' ping-pongs: (α₀, η), each by least squares."""
    alpha0 = float(np.mean(links["alpha_s"] - links["delay_us"] * 1e-6))
    rate = links["rate_mbit"].to_numpy() * 1e6 / 8  # bytes/s
    bw = 1 / links["beta_s_per_byte"].to_numpy()
    return alpha0, float(np.dot(rate, bw) / np.dot(rate, rate))


# ---- The grid --------------------------------------------------------------------------------------------


@contextmanager
def cpu_lock(path):
    """The machine's exclusive CPU lock (a flock shared with other users of this machine), or nothing."""
    with open(path or os.devnull, "a") as fh:
        if path:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        yield


def run_setting(delay_us, rate_mbit, ranks=(2, 3, 4), steps=STEPS, lock=None, timeout=300,
                batches=(BATCH,)) -> tuple[dict, list[dict]]:
    """One setting's hosts: the link measured and fitted (the first job's ping-pong), one MPI job per ranks × batch."""
    with (cpu_lock(lock), Hosts(max(ranks), rate_mbit=rate_mbit, delay_us=delay_us) as h,
          tempfile.TemporaryDirectory() as tmp):
        load = os.getloadavg()[0]
        link = measure_link(h, seconds=2.0)
        jobs, out = [], Path(tmp) / "job.json"
        for p in ranks:
            for batch in batches:
                cpu0, t0 = h.delay_line_cpu_s(), time.perf_counter()
                h.mpiexec([sys.executable, "-m", "parbp.hosts_bench", "--worker-out", out, "--steps", steps,
                           "--batch", batch, *([] if jobs else ["--pingpong"])], ranks=p, timeout=timeout)
                job = json.loads(out.read_text())
                # how much of the machine's cores the delay lines took while this job ran
                job["delay_line_cores"] = (h.delay_line_cpu_s() - cpu0) / (time.perf_counter() - t0)
                jobs.append(job)
    pp = pd.DataFrame(jobs[0]["pingpong"]).query("op == 'pingpong'")
    ab = costmodel.fit(pp[(pp.bytes == pp.bytes.min()) | (pp.bytes >= FIT_FROM_BYTES)])
    link.update(alpha_s=ab.alpha, beta_s_per_byte=ab.beta, load=load)
    return link, jobs


def _compute_s(compute: list[dict], axis: str, micro: int = MICRO) -> float:
    """The slowest rank's compute per step (a pipeline stage: m forwards, m backwards, one update)."""
    if axis in ("gpipe", "1f1b"):
        return max(micro * (f + b) + u for f, b, u in (c["stage"] for c in compute))
    return max(c[axis] for c in compute)


def validate(settings=SETTINGS, held_out=HELD_OUT, ranks=(2, 3, 4), steps=STEPS, lock=None, batches=(BATCH,)):
    """Run every setting; returns (one row per setting × ranks × batch × axis, one row per link, (α₀, η))."""
    runs = []
    for delay_us, rate_mbit in settings:
        t0 = time.perf_counter()
        link, jobs = run_setting(delay_us, rate_mbit, ranks, steps, lock, batches=batches)
        link["held_out"] = (delay_us, rate_mbit) in held_out
        runs.append((link, jobs))
        print(f"delay {delay_us} us, rate {rate_mbit} Mbit/s: {time.perf_counter() - t0:.0f} s; "
              f"RTT {link['rtt_measured_us']:.0f} us (configured {2 * delay_us}), "
              f"{link['rate_measured_mbit']:.0f} Mbit/s; load {link['load']:.2f}", flush=True)
    links = pd.DataFrame([link for link, _ in runs])
    fit_on = links[~links.held_out]
    alpha0, eta = fit_links(fit_on if len(fit_on) else links)
    rows = []
    for link, jobs in runs:
        alpha = alpha0 + link["delay_us"] * 1e-6
        beta = 1 / (eta * link["rate_mbit"] * 1e6 / 8)
        for job in jobs:
            compute = [r["compute"] for r in job["ranks"]]
            own = predict(compute, job["p"], link["alpha_s"], link["beta_s_per_byte"], job["batch"])
            fitted = predict(compute, job["p"], alpha, beta, job["batch"])
            for a in AXES:
                rows.append({**{k: link[k] for k in LINK_COLUMNS}, "ranks": job["p"], "batch": job["batch"], "axis": a,
                             "measured_s": max(r["measured"][a] for r in job["ranks"]),
                             "predicted_s": fitted[a], "predicted_own_link_s": own[a],
                             "compute_s": _compute_s(compute, a), "alpha_model_s": alpha, "beta_model_s_per_byte": beta,
                             "delay_line_cores": job["delay_line_cores"]})
    df = pd.DataFrame(rows)
    df["rel_error"] = (df.predicted_s - df.measured_s) / df.measured_s
    df["rel_error_own_link"] = (df.predicted_own_link_s - df.measured_s) / df.measured_s
    return df, links, (alpha0, eta)


LINK_COLUMNS = ("delay_us", "rate_mbit", "held_out", "rtt_configured_us", "rtt_measured_us", "rate_measured_mbit",
                "alpha_s", "beta_s_per_byte", "load")


def goals(df: pd.DataFrame) -> pd.DataFrame:
    """Per axis, on the held-out settings: median and largest |relative error| against 15 % and 35 %."""
    held = df[df.held_out]
    g = held.assign(err=held.rel_error.abs()).groupby("axis", sort=False)["err"]
    out = pd.DataFrame({"median_abs_rel_error": g.median(), "max_abs_rel_error": g.max(), "cases": g.size()})
    return out.assign(median_ok=out.median_abs_rel_error <= 0.15, max_ok=out.max_abs_rel_error <= 0.35).reset_index()


def main(argv=None) -> int:
    ap = Parser(prog="python -m parbp.hosts_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="CSV of every measurement and prediction (with the machine in every row)")
    ap.add_argument("--quick", action="store_true", help="2 settings (1 held out), 2 ranks: a smoke run")
    ap.add_argument("--crossover", action="store_true",
                    help=f"one setting {CROSSOVER_SETTING}, 2 ranks, batches {CROSSOVER_BATCHES}: where tensor "
                         f"parallelism overtakes data parallelism")
    ap.add_argument("--steps", type=positive_int, default=STEPS)
    ap.add_argument("--settings", type=int, default=len(SETTINGS), help="the first N link settings of the grid")
    ap.add_argument("--lock", default=None, help="a file to flock exclusively while each setting runs")
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--pingpong", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_out:
        worker(args)
        return 0
    if why := unavailable():
        print(why)
        return 0
    if not 2 <= args.settings <= len(SETTINGS):
        ap.error(f"--settings must be from 2 to {len(SETTINGS)}, got {args.settings}")
    settings = SETTINGS[:args.settings]
    ranks, batches = (2, 3, 4), (args.batch,)
    if args.quick:
        settings, ranks = [(500, 100), (200, 100)], (2,)
    if args.crossover:
        settings, ranks, batches = [CROSSOVER_SETTING], (2,), CROSSOVER_BATCHES
    df, links, (alpha0, eta) = validate(settings, HELD_OUT, ranks, args.steps, args.lock, batches)
    df = df.assign(cpu=cpu_name(), machine=machine_label(), alpha0_s=alpha0, rate_efficiency=eta)
    if args.out:
        write_csv(df, args.out)
    pd.set_option("display.width", 200)
    print(f"link model from the fit settings: alpha = {alpha0 * 1e6:.0f} us + delay, bandwidth = {eta:.2f} x rate")
    print(df[["rel_error", "rel_error_own_link"]].abs().groupby([df.axis, df.held_out]).median().to_string())
    if not args.crossover:
        print(goals(df).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(run(main, prog="python -m parbp.hosts_bench"))
