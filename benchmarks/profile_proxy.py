"""Where the proxy's time goes under pgbench: py-spy samples of the proxy process.

    python benchmarks/profile_proxy.py                  # the role chain, -M simple
    python benchmarks/profile_proxy.py --bare           # no middleware
    python benchmarks/profile_proxy.py --mode prepared --seconds 15

Starts a throwaway PostgreSQL, fills it with ``pgbench -i``, runs ``python -m
pgwire proxy`` (with ``bench_proxy.py``'s RoleRewrite + RoleGuard + Audit
configuration unless ``--bare``), and samples it with py-spy (``pip install
py-spy``) at ``--rate`` Hz while ``pgbench -S`` runs against it. Prints the TPS
and the proxy's CPU per transaction, the share of samples per thread, the
functions by self time, and pgwire's functions by inclusive time.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_proxy

from pgwire.testing.cluster import PostgresCluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0] if __doc__ else "")
    parser.add_argument("--mode", choices=bench_proxy.MODES, default="simple")
    parser.add_argument("--bare", action="store_true", help="no middleware")
    parser.add_argument("--seconds", type=int, default=12, help="pgbench's run (default 12)")
    parser.add_argument("--rate", type=int, default=200, help="samples per second (default 200)")
    parser.add_argument("--top", type=int, default=25, help="rows per table (default 25)")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is needed: pip install py-spy", file=sys.stderr)
        return 2
    with PostgresCluster(ssl=False, auth="scram-sha-256") as cluster, \
            tempfile.TemporaryDirectory(prefix="pgwire-profile-") as directory:
        program = bench_proxy.find_pgbench(cluster.bindir)
        if program is None:
            print("pgbench is needed (the PostgreSQL client programs)", file=sys.stderr)
            return 2
        bench = bench_proxy.Bench(program=program, user=cluster.superuser,
                                  password=cluster.superuser_password, clients=8, threads=2,
                                  seconds=args.seconds)
        bench.initialise(cluster.port, 1)
        config = Path(directory) / "pgwire.toml"
        config.write_text(
            f'upstream = "127.0.0.1:{cluster.port}"\n' if args.bare else
            bench_proxy.middleware_config(cluster.port, Path(directory) / "audit.jsonl"))
        command = [sys.executable, "-m", "pgwire", "proxy", "--config", str(config)]
        raw = Path(directory) / "samples.txt"
        with bench_proxy.running("pgwire proxy", bench_proxy.pgwire_argv(command, cluster.port)
                                 ) as port:
            sampler = subprocess.Popen(
                [spy, "record", "-p", str(getattr(port, "pid", 0)), "-d",
                 str(max(1, args.seconds - 3)), "-r", str(args.rate), "-f", "raw", "-o", str(raw),
                 "--threads"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            result = bench.run(port, args.mode)
            _, errors = sampler.communicate()
        if result.tps is None or not raw.exists():
            print(f"no profile: {result.failed or errors.decode(errors='replace')}",
                  file=sys.stderr)
            return 1
        cpu = f", {result.cpu_us:.1f} CPU-us per transaction" if result.cpu_us else ""
        print(f"pgbench -S -M {args.mode}, 8 clients: {result.tps:,.0f} TPS{cpu} "
              f"({'no middleware' if args.bare else 'RoleRewrite + RoleGuard + Audit'})")
        report(raw.read_text(), args.top)
    return 0


def report(samples: str, top: int) -> None:
    """Thread shares, self time and pgwire's inclusive time from py-spy's raw format."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in samples.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        threads[frames[0]] += n
        own[frames[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    if not total:
        print("no samples")
        return
    print(f"{total:,} samples")
    for name, n in threads.most_common():
        print(f"  {n / total:6.1%}  {name}")
    print("self time:")
    for name, n in own.most_common(top):
        print(f"  {n / total:6.1%}  {name}")
    print("inclusive, pgwire's functions:")
    shown = [(name, n) for name, n in inclusive.most_common() if "pgwire/" in name]
    for name, n in shown[:top]:
        print(f"  {n / total:6.1%}  {name}")


if __name__ == "__main__":
    sys.exit(main())
