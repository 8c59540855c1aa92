"""The single server against the same model on Ray Serve (1 and 2 replicas), side by side.

    flock /tmp/rlhf-cpu.lock .venv/bin/python benchmarks/serve_ray.py [--rounds 5]
        [--duration-s 4] [--model DIR]

One `reward-service serve` process, and in this process a local Ray (`num_cpus` = the machine's
cores) with Serve's HTTP proxy and `reward-service serve --ray`'s application on the same model
folder (the default model unless --model): first one replica given every core, then two replicas
splitting them. In each phase the single server and the deployment take turns, the order
alternating by round, a closed loop of 32 clients sending 16-text and then 1-text requests of
seeded 20-60-word texts (REST, POST /v1/score) to one of them at a time; the other idles. Printed
per phase and request size: median texts/s, p50 and p99 over the rounds, and the median of the
per-round ratios Serve / single (target for one replica with 16-text requests: >= 0.85); then
the CPU each part took while it served (the single server; Serve's replicas, HTTP proxy and
Ray's other processes), from /proc, and the serving side's CPU milliseconds per text scored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_throughput import (  # noqa: E402
    describe_machine,
    drive,
    free_port,
    http_sender,
    make_texts,
    running_server,
)

CONCURRENCY = 32
REQUEST_SIZES = (16, 1)
SERVERS = ("single", "serve")
CPU_GROUPS = ("single server", "replicas", "Serve's proxy", "Ray's other processes")


def cpu_ticks(single_pid: int) -> dict[str, int]:
    """CPU ticks so far by what spends them: the single server, Serve's replicas, its HTTP proxy,
    and Ray's other processes (a Ray worker's title, or a Ray binary on the command line)."""
    ticks = dict.fromkeys(CPU_GROUPS, 0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        spent = int(fields[11]) + int(fields[12])  # utime + stime
        if int(entry.name) == single_pid:
            ticks["single server"] += spent
        elif command.startswith("ray::ServeReplica"):
            ticks["replicas"] += spent
        elif command.startswith("ray::ProxyActor"):
            ticks["Serve's proxy"] += spent
        elif command.startswith("ray::") or "/site-packages/ray/" in command:
            ticks["Ray's other processes"] += spent
    return ticks


def measure(url: str, bodies: list[bytes], size: int, duration_s: float, single_pid: int):
    """One turn: texts/s, p50, p99, texts per request, and each group's CPU over the turn as a
    share of one core."""
    before, started = cpu_ticks(single_pid), time.monotonic()
    rate, latencies, failed = asyncio.run(
        drive(http_sender(url), bodies, size, CONCURRENCY, duration_s)
    )
    after, elapsed = cpu_ticks(single_pid), time.monotonic() - started
    if failed:
        raise SystemExit(f"{failed} requests failed on {url}")
    p50, p99 = np.percentile(latencies, [50, 99])
    per_second = os.sysconf("SC_CLK_TCK")
    cpu = {group: (after[group] - before[group]) / per_second / elapsed for group in CPU_GROUPS}
    return rate, p50, p99, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="turns per server and size")
    parser.add_argument("--duration-s", type=float, default=4.0, help="measured seconds a turn")
    parser.add_argument("--model", type=Path, help="model folder (default: the default model)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions

    from reward_service.cache import default_cache_dir
    from reward_service.serving import ray_serve
    from reward_service.serving.settings import ServeSettings
    from reward_service.training.default_model import ensure_default_model

    folder = args.model or ensure_default_model(default_cache_dir())
    cores = os.cpu_count() or 1
    texts = make_texts(512)
    single_port, serve_port = free_port(), free_port()
    urls = {
        "single": f"http://127.0.0.1:{single_port}/v1/score",
        "serve": f"http://127.0.0.1:{serve_port}/v1/score",
    }
    results: dict[tuple[int, str, int], list[tuple[float, float, float]]] = {}
    command = [sys.executable, "-m", "reward_service.cli", "serve", "--port", str(single_port)]
    command += ["--grpc-port", "0", "--log-level", "warning", "--model", f"rm={folder}"]
    with contextlib.ExitStack() as stack:
        single_pid = stack.enter_context(running_server(command, single_port)).pid
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
        stack.callback(ray.shutdown)
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=serve_port))
        stack.callback(serve.shutdown)
        for replicas in args.replicas:
            settings = ServeSettings(
                models=[f"rm={folder}"],
                log_level="warning",
                ray_serve={"num_replicas": replicas, "num_cpus": cores / replicas},
            )
            # Deleted first: a rolling update starts a new replica before stopping an old one,
            # and the old one holds every core.
            serve.delete(ray_serve.APP_NAME)
            serve.run(ray_serve.application(settings, None), name=ray_serve.APP_NAME)
            for size in REQUEST_SIZES:
                chunks = [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]
                bodies = [json.dumps({"texts": chunk}).encode() for chunk in chunks]
                for round_index in range(args.rounds):
                    order = SERVERS if round_index % 2 == 0 else SERVERS[::-1]
                    for server in order:
                        row = measure(urls[server], bodies, size, args.duration_s, single_pid)
                        results.setdefault((replicas, server, size), []).append(row)
                        print(
                            f"  {replicas} replica(s) {server:6s} {size:2d} text(s): "
                            f"{row[0]:7.1f} texts/s, p50 {row[1] * 1e3:6.0f} ms, "
                            f"p99 {row[2] * 1e3:6.0f} ms",
                            file=sys.stderr,
                        )

    print(describe_machine(argparse.Namespace(device="cpu", dtype="auto")))
    print(f"model: {folder}; REST at c={CONCURRENCY}; {args.rounds} turns of {args.duration_s:g} s")
    print("\n| Serve replicas | texts/request | server | texts/s | p50 ms | p99 ms | / single |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    ratios = {}
    for replicas in args.replicas:
        for size in REQUEST_SIZES:
            per_round = [
                serve_row[0] / single_row[0]
                for serve_row, single_row in zip(
                    results[(replicas, "serve", size)],
                    results[(replicas, "single", size)],
                    strict=True,
                )
            ]
            ratios[(replicas, size)] = statistics.median(per_round)
            for server in SERVERS:
                rows = results[(replicas, server, size)]
                rate, p50, p99 = (statistics.median(row[i] for row in rows) for i in range(3))
                label = f"Ray Serve ({replicas})" if server == "serve" else "single server"
                ratio = f"{ratios[(replicas, size)]:.2f}" if server == "serve" else ""
                print(
                    f"| {replicas} | {size} | {label} | {rate:.1f} | {p50 * 1e3:.0f} | "
                    f"{p99 * 1e3:.0f} | {ratio} |"
                )
    print(
        "\nCPU while each served, as a share of one core (medians of the turns; cores: "
        f"{cores}), and the serving side's CPU per text scored"
    )
    print(
        "\n| Serve replicas | texts/request | server | "
        + " | ".join(CPU_GROUPS)
        + " | serving side, CPU ms per text |"
    )
    print("|---:|---:|---|" + "---:|" * (len(CPU_GROUPS) + 1))
    for replicas in args.replicas:
        for size in REQUEST_SIZES:
            for server in SERVERS:
                rows = results[(replicas, server, size)]
                shares = [statistics.median(row[3][group] for row in rows) for group in CPU_GROUPS]
                # The serving side's own CPU: the single server, or Serve's processes.
                serving = ("single server",) if server == "single" else CPU_GROUPS[1:]
                ms_per_text = statistics.median(
                    sum(row[3][group] for group in serving) / row[0] * 1000 for row in rows
                )
                cells = " | ".join(f"{share:.0%}" for share in shares)
                print(f"| {replicas} | {size} | {server} | {cells} | {ms_per_text:.2f} |")
    if (1, 16) not in ratios:
        return 0
    passed = ratios[(1, 16)] >= 0.85
    print(
        f"\n{'PASS' if passed else 'FAIL'}: one replica, 16-text requests, Serve / single "
        f"{ratios[(1, 16)]:.2f} (target >= 0.85)"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
