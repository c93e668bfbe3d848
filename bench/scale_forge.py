"""Benchmark: the scale forge's own CPU per answer (the fixture `bench.scale` measures the reconciler against).

    python -m bench.scale_forge [--projects 10000] [--warm 10000] [--cold 1000] [--connections 32]

Starts `python -m fixtures.forge.scale` as `bench.scale` does (its own process, loopback HTTP) and drives it
with a bare asyncio client (keep-alive, `--connections` at once; the client's cost is not measured):

- warm: `--warm` conditional GETs of run lists with their current ETag, as an unchanged reconcile pass sends
  them (the reconciler's usual headers), each answered 304;
- cold: for `--cold` repos, the run list without an ETag (30 runs in GitHub's full field set) and the job
  list of its newest run, as the first pass reads them.

Prints the forge process's user + system CPU per answer (from /proc) and the wall time of each phase.
To measure another checkout's forge (a before/after), run this module from that checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx2

from bench import bench_line
from bench.scale import _ForgeProcess

__all__ = ["ForgeCost", "main", "measure"]

_HEADERS = (
    "Host: 127.0.0.1\r\nAccept: application/vnd.github+json\r\nAccept-Encoding: gzip\r\n"
    "User-Agent: greenloop\r\nAuthorization: Bearer ghs_scalebench\r\nX-GitHub-Api-Version: 2022-11-28\r\n"
)


@dataclass
class ForgeCost:
    """The forge process's CPU (user + system seconds) and the wall time of each phase."""

    projects: int
    warm_requests: int
    warm_cpu: float
    warm_wall: float
    cold_repos: int
    cold_cpu: float
    cold_wall: float
    cold_bytes: int
    load_average: float


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length) if length else b""


async def _drive(port: int, jobs: list[int], connections: int, *, cold: bool) -> int:
    """Send every job's requests over `connections` keep-alive connections; the body bytes received."""
    queue = list(reversed(jobs))
    received = 0

    async def worker() -> None:
        nonlocal received
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                index = queue.pop()
                runs = f"/repos/bench/p{index:05d}/actions/runs"
                etag = "" if cold else f'If-None-Match: "r{index}-v29"\r\n'
                writer.write(f"GET {runs}?per_page=100 HTTP/1.1\r\n{_HEADERS}{etag}\r\n".encode())
                status, body = await _answer(reader)
                if status != (200 if cold else 304):
                    raise RuntimeError(f"{runs}: {status}")
                received += len(body)
                if cold:
                    jobs_path = f"{runs}/{index * 1000 + 29}/jobs?per_page=100"
                    writer.write(f"GET {jobs_path} HTTP/1.1\r\n{_HEADERS}\r\n".encode())
                    status, body = await _answer(reader)
                    if status != 200:
                        raise RuntimeError(f"{jobs_path}: {status}")
                    received += len(body)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return received


async def _measure(projects: int, warm: int, cold: int, connections: int) -> ForgeCost:
    forge = _ForgeProcess(projects)
    try:
        async with httpx2.AsyncClient(trust_env=False) as control:
            await forge.wait_ready(control)
        port = forge.port
        warm_jobs = [i % projects + 1 for i in range(warm)]
        cold_jobs = [i % projects + 1 for i in range(cold)]
        c0, t0 = forge.cpu_seconds(), time.perf_counter()
        await _drive(port, warm_jobs, connections, cold=False)
        c1, t1 = forge.cpu_seconds(), time.perf_counter()
        received = await _drive(port, cold_jobs, connections, cold=True)
        c2, t2 = forge.cpu_seconds(), time.perf_counter()
    finally:
        forge.stop()
    return ForgeCost(
        projects=projects,
        warm_requests=warm,
        warm_cpu=c1 - c0,
        warm_wall=t1 - t0,
        cold_repos=cold,
        cold_cpu=c2 - c1,
        cold_wall=t2 - t1,
        cold_bytes=received,
        load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
    )


def measure(projects: int, *, warm: int, cold: int, connections: int = 32) -> ForgeCost:
    """Start a scale forge with `projects` repos, drive both phases, stop it."""
    return asyncio.run(_measure(projects, warm, cold, connections))


def render(cost: ForgeCost) -> str:
    """One Markdown row per phase, then the BENCH line."""
    warm_us = cost.warm_cpu / cost.warm_requests * 1e6 if cost.warm_requests else float("nan")
    cold_ms = cost.cold_cpu / cost.cold_repos * 1e3 if cost.cold_repos else float("nan")
    return "\n".join(
        [
            f"| phase (N = {cost.projects:,} repos) | answers | forge CPU | per answer | wall |",
            "|---|---|---|---|---|",
            f"| warm: conditional GETs answered 304 | {cost.warm_requests:,} | {cost.warm_cpu:.2f} s "
            f"| {warm_us:,.0f} µs | {cost.warm_wall:.2f} s |",
            f"| cold: run list + job list per repo ({cost.cold_bytes / cost.cold_repos / 1024:,.0f} KiB) "
            f"| {cost.cold_repos:,} × 2 | {cost.cold_cpu:.2f} s | {cold_ms:,.2f} ms a repo | {cost.cold_wall:.2f} s |",
            "",
            f"1-minute load average {cost.load_average:.1f} on {os.cpu_count()} CPU(s).",
            "",
            bench_line(
                "scale_forge",
                {"n": cost.projects, "warm_cpu_us_per_304": warm_us, "cold_cpu_ms_per_repo": cold_ms},
            ),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale_forge", description=__doc__)
    parser.add_argument("--projects", type=int, default=10_000)
    parser.add_argument("--warm", type=int, default=10_000, help="conditional GETs answered 304")
    parser.add_argument("--cold", type=int, default=1_000, help="repos read without an ETag (run + job list)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections at once")
    args = parser.parse_args(argv)
    if args.cold > args.projects or args.projects < 1:
        parser.error("--cold must be at most --projects")
    print(render(measure(args.projects, warm=args.warm, cold=args.cold, connections=args.connections)))
    print(f"bench.scale_forge: done ({args.projects:,} repos)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
