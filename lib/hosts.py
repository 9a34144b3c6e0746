"""Emulated hosts: N Linux network namespaces on a bridge, each link shaped, one MPI rank per namespace.

    with Hosts(3, rate_mbit=1000, delay_us=200) as h:    # 3 "machines", 1 Gbit/s, 200 µs each way
        h.mpiexec([sys.executable, "-m", "parbp.costmodel", "--out", "m.csv"], timeout=120)

Each host is a namespace ``<prefix>h<i>`` with one veth (``eth0`` inside) into a bridge with no uplink;
addresses come from the benchmarking range 198.18.0.0/15 (RFC 2544), one /24 per run, the bridge holding .1
so that ``mpiexec`` (in the root namespace) reaches its proxies. Traffic leaves a host through:

  delay line   iptables (NFQUEUE) queues every packet the host sends to 198.18.0.0/15 to a user-space process in the
               namespace (``python -m parbp.hosts delay``, netfilterqueue) that releases it ``delay_us``
               later: this kernel has no netem, and a delay inside MPI's own calls would not be a network.
  rate         a tbf qdisc on eth0 at ``rate_mbit`` (a token bucket of ~1 ms at the rate).

So a round trip carries 2·delay_us, and a message both the delay and its serialization at the rate. The
emulator is only as good as what ``measure_link`` gets back from it (configured against measured RTT and
rate): the delay line is Python, one packet at a time, and adds its own cost per packet.

MPI: MPICH's hydra starts each rank in its namespace through ``-launcher ssh -launcher-exec`` a script
that runs the command under ``ip netns exec HOST``; ``MPIR_CVAR_NOLOCAL=1`` and ``UCX_TLS=tcp`` keep the
ranks off shared memory (by default ranks of one kernel share it even across namespaces), so every byte
crosses the links.

Cleanup: names carry the creating process's id; ``close`` removes everything, links already gone or not,
and ``sweep`` (run when a ``Hosts`` starts) removes what a killed run left behind.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from .base import Closing
from .cli import Parser, run
from .distributed import genv, mpiexec, run_command

RANGE = "198.18.0.0/15"
PREFIX = "parbp"
QUEUE = 7  # the nfqueue number, one queue per namespace
# MPICH over TCP on the links: no shared memory between ranks, UCX restricted to TCP on eth0
MPI_ENV = {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH4_NETMOD": "ucx", "UCX_TLS": "tcp,self", "UCX_NET_DEVICES": "eth0",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
LAUNCHER = """#!/bin/sh
# hydra calls ssh as: [options] HOST COMMAND...; run COMMAND in the namespace named HOST instead.
while [ "${1#-}" != "$1" ]; do shift; done
host="$1"; shift
exec ip netns exec "$host" sh -c "$*"
"""


def unavailable() -> str | None:
    """Why the harness cannot run on this machine (one line), or None when it can."""
    if os.geteuid() != 0:
        return "emulated hosts need root (network namespaces, veth, qdiscs, iptables)"
    for tool, pkg in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"emulated hosts need the '{tool}' command (apt-get install {pkg})"
    for module, pkg in (("pyroute2", "pyroute2"), ("netfilterqueue", "NetfilterQueue (and libnetfilter-queue1)")):
        try:
            __import__(module)
        except ImportError as e:
            return f"emulated hosts need {pkg}: pip install 'parbp[hosts]' ({e})"
    if not Path("/proc/net/netfilter/nfnetlink_queue").exists():
        return "emulated hosts need the kernel's nfnetlink_queue (the delay line); /proc/net/netfilter has none"
    return None


def _orphaned(name: str) -> bool:
    """A name this module made (``parbp<pid>h<i>``, ``parbp<pid>br``) for a process that is gone."""
    digits = name[len(PREFIX):].split("h")[0].split("b")[0] if name.startswith(PREFIX) else ""
    return digits.isdigit() and not psutil.pid_exists(int(digits))


def sweep() -> list[str]:
    """Remove the namespaces and bridges of runs whose process is gone (killed tests); return their names."""
    from pyroute2 import IPRoute, netns

    namespaces = [name for name in netns.listnetns() if _orphaned(name)]
    with IPRoute() as ipr:
        links = [name for link in ipr.get_links() if _orphaned(name := link.get_attr("IFLA_IFNAME"))]
    _remove(namespaces, links)
    return namespaces + links


def _remove(namespaces, links) -> None:
    """Remove the namespaces, killing the processes left inside (only ours live there: delay lines, ranks),
    then the links. A namespace outlives its removal while its sockets still hold unsent data (a cut link):
    its veth pair would too, and the next hosts of this process could not take the same names."""
    from pyroute2 import IPRoute, netns
    from pyroute2.netlink.exceptions import NetlinkError

    for name in namespaces:
        for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split():
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        with suppress(OSError):
            netns.remove(name)
    with IPRoute() as ipr:
        for ifname in links:
            try:
                ipr.link("del", ifname=ifname)
            except NetlinkError as e:  # gone meanwhile: its namespace's teardown or its veth peer took it
                if e.code != errno.ENODEV:
                    raise


class Hosts(Closing):
    """N namespaces on a bridge with shaped links (see the module docstring). A context manager."""

    def __init__(self, n: int, rate_mbit: float | None = None, delay_us: float = 0.0, burst_bytes: int | None = None):
        if not isinstance(n, (int, np.integer)) or not 2 <= n <= 200:
            raise ValueError(f"hosts must be an integer from 2 to 200, got {n!r}")
        if rate_mbit is not None and not 0.1 <= rate_mbit <= 100_000:
            raise ValueError(f"rate_mbit must be from 0.1 to 100000 (Mbit/s) or None for unshaped, got {rate_mbit!r}")
        if not 0 <= delay_us <= 1_000_000:
            raise ValueError(f"delay_us must be from 0 to 1000000 (one way, µs), got {delay_us!r}")
        if why := unavailable():
            raise RuntimeError(why)
        self.n, self.rate_mbit, self.delay_us = int(n), rate_mbit, float(delay_us)
        # a token bucket of ~1 ms at the rate (at least 4 full frames): tbf needs burst >= one packet
        self.burst_bytes = burst_bytes or int(max(4 * 1514, (rate_mbit or 0) * 1e6 / 8 * 1e-3))
        pid = os.getpid()
        self.names = [f"{PREFIX}{pid}h{i}" for i in range(self.n)]
        self.bridge = f"{PREFIX}{pid}br"
        self.links = [f"{PREFIX}{pid}v{i}"[-15:] for i in range(self.n)]  # the host ends of the veth pairs
        self.net = f"198.{18 + (pid // 256) % 2}.{pid % 256}"  # one /24 of 198.18.0.0/15 per process
        self.addresses = [f"{self.net}.{10 + i}" for i in range(self.n)]
        self.gateway = f"{self.net}.1"
        self._delays: list[subprocess.Popen] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="parbp-hosts-")
        self.launcher = Path(self._tmp.name) / "netns-launch"
        self.launcher.write_text(LAUNCHER)
        self.launcher.chmod(0o755)
        sweep()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self):
        from pyroute2 import IPRoute, NetNS, netns

        with IPRoute() as ipr:
            ipr.link("add", ifname=self.bridge, kind="bridge", state="up")
            br = ipr.link_lookup(ifname=self.bridge)[0]
            ipr.addr("add", index=br, address=self.gateway, prefixlen=24)
            for name, host_end, address in zip(self.names, self.links, self.addresses):
                netns.create(name)
                ipr.link("add", ifname=host_end, kind="veth", peer={"ifname": "eth0", "net_ns_fd": name}, master=br,
                         state="up")
                with NetNS(name) as ns:
                    eth = ns.link_lookup(ifname="eth0")[0]
                    ns.link("set", ifname="lo", state="up")
                    ns.addr("add", index=eth, address=address, prefixlen=24)
                    ns.link("set", index=eth, state="up")
                    if self.rate_mbit is not None:  # latency: the most a packet waits for tokens, µs
                        ns.tc("add", "tbf", eth, handle="1:", rate=f"{int(self.rate_mbit * 1000)}kbit",
                              burst=self.burst_bytes, latency=200_000)
                if self.delay_us > 0:
                    self._start_delay(name)

    def _start_delay(self, name):
        # the xt NFQUEUE target (this kernel's nftables lacks the native queue expression)
        subprocess.run(["ip", "netns", "exec", name, "iptables", "-A", "OUTPUT", "-d", RANGE, "-j", "NFQUEUE",
                        "--queue-num", str(QUEUE)], check=True, capture_output=True)
        proc = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-m", "parbp.hosts", "delay",
                                 "--delay-us", str(self.delay_us), "--queue", str(QUEUE)],
                                stdout=subprocess.PIPE, text=True)
        self._delays.append(proc)
        if proc.stdout.readline().strip() != "ready":  # the queue is bound before any packet needs it
            raise RuntimeError(f"the delay line in {name} did not start (exit {proc.poll()})")

    def delay_line_cpu_s(self) -> float:
        """CPU seconds the delay lines have used so far (they share the cores with the ranks)."""
        # ``ip netns exec`` execs the delay line in the process it started
        return sum(t.user + t.system for t in (psutil.Process(proc.pid).cpu_times() for proc in self._delays))

    def close(self):
        for proc in self._delays:
            proc.kill()
            proc.wait()
        self._delays.clear()
        _remove(self.names, [*self.links, self.bridge])
        self._tmp.cleanup()

    def exec(self, i: int, cmd, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        """Run ``cmd`` (a list) inside host i; kills it past ``timeout``."""
        return subprocess.run(["ip", "netns", "exec", self.names[i], *cmd], capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def mpiexec_cmd(self, cmd, ranks: int | None = None) -> list[str]:
        """The command line of ``mpiexec``: one rank per host on the first ``ranks`` hosts (default: all)."""
        ranks = ranks or self.n
        if not 2 <= ranks <= self.n:
            raise ValueError(f"ranks must be from 2 to {self.n} (one per host), got {ranks}")
        return [mpiexec(), "-launcher", "ssh", "-launcher-exec", str(self.launcher), "-iface", self.bridge,
                "-hosts", ",".join(self.names[:ranks]), "-n", str(ranks), "-ppn", "1", *genv(MPI_ENV), *map(str, cmd)]

    def mpiexec(self, cmd, ranks: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``cmd`` with one MPI rank per host; raises with the ranks' output when it fails or overruns."""
        return run_command(self.mpiexec_cmd(cmd, ranks), timeout, "mpiexec on emulated hosts")


# ---- The emulator measured -------------------------------------------------------------------------------


def measure_link(hosts: Hosts, seconds: float = 2.0) -> dict:
    """What the emulated link does, measured between hosts 0 and 1: the median round trip of small TCP
    messages and the rate of one bulk TCP stream (configured values beside them)."""
    server = subprocess.Popen(["ip", "netns", "exec", hosts.names[0], sys.executable, "-m", "parbp.hosts", "echo"],
                              stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the probe's echo server did not start")
        out = hosts.exec(1, [sys.executable, "-m", "parbp.hosts", "probe", "--peer", hosts.addresses[0],
                             "--seconds", str(seconds)], timeout=60 + 4 * seconds)
        if out.returncode != 0:
            raise RuntimeError(f"link probe failed: {out.stderr[-2000:]}")
        rtt, mbit = map(float, out.stdout.split())
    finally:
        server.kill()
        server.wait()
    return {"delay_us": hosts.delay_us, "rate_mbit": hosts.rate_mbit, "rtt_configured_us": 2 * hosts.delay_us,
            "rtt_measured_us": rtt * 1e6, "rate_measured_mbit": mbit}


PORT = 5201


def _echo():
    """Serve the probe: echo small messages back; swallow a bulk stream to its end, then acknowledge it."""
    s = socket.create_server(("0.0.0.0", PORT), reuse_port=True)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with c:
            if c.recv(1) == b"e":
                while (m := c.recv(64)):
                    c.sendall(m)
            else:
                while c.recv(1 << 20):
                    pass
                c.sendall(b"k")


def _probe(peer: str, seconds: float):
    c = socket.create_connection((peer, PORT), timeout=10)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b"e")
    rtts, end = [], time.perf_counter() + seconds / 2
    while time.perf_counter() < end or len(rtts) < 20:
        t0 = time.perf_counter()
        c.sendall(b"x" * 8)
        c.recv(8, socket.MSG_WAITALL)
        rtts.append(time.perf_counter() - t0)
    c.close()
    c = socket.create_connection((peer, PORT), timeout=60)
    c.sendall(b"b")
    chunk = b"\0" * (1 << 20)
    sent, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2:
        c.sendall(chunk)
        sent += len(chunk)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)  # the receiver has everything
    print(float(np.median(rtts[5:])), sent * 8 / (time.perf_counter() - t0) / 1e6)


def _delay_line(delay_us: float, queue: int):
    """Hold every queued packet ``delay_us``, in order, then let it go (one thread: select on the queue's
    socket until the oldest held packet is due). Packets are accepted by id, so only their first bytes are copied
    (retain needs some)."""
    import collections
    import select
    from netfilterqueue import COPY_PACKET, NetfilterQueue

    held = collections.deque()
    # real-time priority: the ranks spin while they wait for a message, and on shared cores a delay line
    # scheduled behind them would add their time slices to every packet's delay
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))

    def hold(pkt):
        pkt.retain()
        held.append((time.perf_counter() + delay_us * 1e-6, pkt))

    nfq = NetfilterQueue()
    nfq.bind(queue, hold, max_len=20_000, mode=COPY_PACKET, range=64)  # the kernel holds up to max_len packets
    print("ready", flush=True)
    while True:
        wait = max(held[0][0] - time.perf_counter(), 0.0) if held else 1.0
        if select.select([nfq.get_fd()], [], [], wait)[0]:
            nfq.run(block=False)
        now = time.perf_counter()
        while held and held[0][0] <= now:
            held.popleft()[1].accept()


def main(argv=None) -> int:
    p = Parser(prog="python -m parbp.hosts", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("delay", help="the delay line (runs inside a namespace)")
    d.add_argument("--delay-us", type=float, required=True)
    d.add_argument("--queue", type=int, default=QUEUE)
    sub.add_parser("echo", help="the link probe's server")
    pr = sub.add_parser("probe", help="the link probe's client")
    pr.add_argument("--peer", required=True)
    pr.add_argument("--seconds", type=float, default=2.0)
    m = sub.add_parser("measure", help="make N hosts with one link setting and measure the link")
    m.add_argument("--hosts", type=int, default=2)
    m.add_argument("--rate-mbit", type=float, default=None)
    m.add_argument("--delay-us", type=float, default=0.0)
    m.add_argument("--seconds", type=float, default=2.0)
    args = p.parse_args(argv)
    if args.what == "delay":
        _delay_line(args.delay_us, args.queue)
    elif args.what == "echo":
        _echo()
    elif args.what == "probe":
        _probe(args.peer, args.seconds)
    elif why := unavailable():
        print(why)
    else:
        with Hosts(args.hosts, rate_mbit=args.rate_mbit, delay_us=args.delay_us) as h:
            print(pd.Series(measure_link(h, args.seconds)).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(run(main, prog="python -m parbp.hosts"))
