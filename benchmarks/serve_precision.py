"""The service in float32 and in the precision its gate chose, side by side in one run.

    flock /tmp/rlhf-cpu.lock .venv/bin/python benchmarks/serve_precision.py [--rounds 7]
        [--duration-s 4] [--model DIR]

Two `reward-service serve` processes on the same model folder (the default model unless
--model): one `--dtype float32`, one `--dtype auto` (what `make serve` runs: the precision in the
folder's precision_gate.json where the CPU computes it natively). Both stay up; they take turns,
the order alternating by round, a closed loop of 32 clients sending 16-text and then 1-text
requests of seeded 20-60-word texts to one of them at a time (the other idles), so that a
neighbour's load slows both alike. Printed per request size: median texts/s, p50 and p99 over
the rounds, and the median of the per-round ratios auto / float32 (target for 16-text requests:
>= 2.5). The gate's own figures (Spearman with float32, pairwise accuracy) are printed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
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
DTYPES = ("float32", "auto")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="turns per server and size")
    parser.add_argument("--duration-s", type=float, default=4.0, help="measured seconds a turn")
    parser.add_argument("--model", type=Path, help="model folder (default: the default model)")
    args = parser.parse_args()

    from reward_service.cache import default_cache_dir
    from reward_service.model.precision import PRECISION_GATE_FILENAME, resolve_dtype
    from reward_service.training.default_model import ensure_default_model

    folder = args.model or ensure_default_model(default_cache_dir())
    auto_dtype = resolve_dtype("auto", folder, backend="torch", device="cpu")
    texts = make_texts(512)
    ports = {dtype: free_port() for dtype in DTYPES}
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    with contextlib.ExitStack() as servers:
        for dtype, port in ports.items():
            command = [sys.executable, "-m", "reward_service.cli", "serve", "--port", str(port)]
            command += ["--grpc-port", "0", "--log-level", "warning", "--dtype", dtype]
            command += ["--model", f"rm={folder}"]
            servers.enter_context(running_server(command, port))
        for size in REQUEST_SIZES:
            chunks = [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]
            bodies = [json.dumps({"texts": chunk}).encode() for chunk in chunks]
            for round_index in range(args.rounds):
                order = DTYPES if round_index % 2 == 0 else DTYPES[::-1]
                for dtype in order:
                    url = f"http://127.0.0.1:{ports[dtype]}/v1/score"
                    rate, latencies, failed = asyncio.run(
                        drive(http_sender(url), bodies, size, CONCURRENCY, args.duration_s)
                    )
                    if failed:
                        raise SystemExit(f"{failed} requests failed on the {dtype} server")
                    p50, p99 = np.percentile(latencies, [50, 99])
                    results.setdefault((dtype, size), []).append((rate, p50, p99))
                    print(
                        f"  {dtype:7s} {size:2d} text(s) c={CONCURRENCY}: {rate:7.1f} texts/s, "
                        f"p50 {p50 * 1e3:6.0f} ms, p99 {p99 * 1e3:6.0f} ms",
                        file=sys.stderr,
                    )

    print(describe_machine(argparse.Namespace(device="cpu", dtype="float32 vs auto")))
    print(f"model: {folder}; auto serves {auto_dtype}")
    gate_file = folder / PRECISION_GATE_FILENAME
    if gate_file.is_file():
        for verdict in json.loads(gate_file.read_text())["candidates"]:
            print(
                f"  gate: {verdict['dtype']} {'passed' if verdict['passed'] else 'refused'}, "
                f"Spearman with float32 {verdict['spearman_vs_float32']:.4f}, pairwise accuracy "
                f"{verdict['pairwise_accuracy']:.4f} vs float32's "
                f"{verdict['float32_pairwise_accuracy']:.4f}"
            )
    print(f"\n{args.rounds} turns each of {args.duration_s:g} s, c={CONCURRENCY}, medians\n")
    print("| texts/request | server | texts/s | p50 ms | p99 ms | auto / float32 |")
    print("|---|---|---:|---:|---:|---:|")
    ratios = {}
    for size in REQUEST_SIZES:
        per_round = [
            auto[0] / fp32[0]
            for auto, fp32 in zip(results[("auto", size)], results[("float32", size)], strict=True)
        ]
        ratios[size] = statistics.median(per_round)
        for dtype in DTYPES:
            rows = results[(dtype, size)]
            rate, p50, p99 = (statistics.median(row[i] for row in rows) for i in range(3))
            label = f"{dtype} ({auto_dtype})" if dtype == "auto" else dtype
            ratio = f"{ratios[size]:.2f}" if dtype == "auto" else ""
            print(
                f"| {size} | {label} | {rate:.1f} | {p50 * 1e3:.0f} | {p99 * 1e3:.0f} | {ratio} |"
            )
    passed = ratios[16] >= 2.5
    print(
        f"\n{'PASS' if passed else 'FAIL'}: 16-text requests, auto / float32 "
        f"{ratios[16]:.2f} (target >= 2.5)"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
