"""Time whole deploys against each other and against OpenSSH scp.

Boots four test hosts (root, systemd-nspawn and the test rootfs), starts
SeaweedFS, pushes 50 MB releases of a sample service, then measures in
one process, alternating so that noise hits every kind alike:

    scp 1 host      OpenSSH scp of the same tarball to one host
    deploy 1 host   a full deploy (download, copy, switch, verify)
    deploy 4 hosts  the same to four hosts
    rollback        back to a release still on the host: no transfer

and prints the ratios the project holds itself to: four hosts take at
most 1.5 times one host, our copy at most 1.2 times scp (see also
bench_copy.py), a rollback at most a fifth of a full deploy.

The verify window (``--verify-seconds``, 1 by default) is a fixed wait
that every deploy and rollback spends watching the unit; the ratios are
printed with it and without it.

Run from the repository root: python bench/bench_deploy.py
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inforge_action.cli import execute  # noqa: E402
from tests.support.hosts import build_rootfs, running_hosts  # noqa: E402
from tests.support.seaweed import start_seaweed, stop_seaweed  # noqa: E402
from tests.support.world import (  # noqa: E402
    host_inputs,
    make_world,
    publish_stack,
    target_for,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--verify-seconds", type=float, default=1.0)
    args = parser.parse_args()

    rootfs = build_rootfs()
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as scratch:
        root = Path(scratch)
        server = start_seaweed(root / "seaweed")
        try:
            with running_hosts(rootfs, root / "hosts", 4) as hosts:
                timings = measure(root, server, list(hosts), args)
        finally:
            stop_seaweed(server)
    report(timings, args)
    return 0


def measure(root: Path, server, hosts, args) -> dict[str, list[float]]:
    worlds = {}
    for name, count in (("one", 1), ("four", 4)):
        for host in hosts[:count]:
            host.install_unit(name, "api")
        world = make_world(root / name, server, service=name)
        publish_stack(
            world, "prd", [target_for(h, name) for h in hosts[:count]]
        )
        worlds[name] = world
    ssh = {**host_inputs(hosts), "verify_seconds": str(args.verify_seconds)}
    payload = os.urandom(args.size_mb << 20)
    timings: dict[str, list[float]] = {
        "scp 1 host": [],
        "deploy 1 host": [],
        "deploy 4 hosts": [],
        "rollback": [],
    }

    for round_number in range(args.repeat):
        for world in worlds.values():
            for step in ("a", "b"):
                sha = f"r{round_number}{step}"
                (world.service_repo / "dist").mkdir(exist_ok=True)
                (world.service_repo / "dist" / "blob").write_bytes(payload)
                world.write_payload(sha)
                assert run(world, "push", sha=sha) == 0

        tarball = root / "one" / "probe.tar.gz"
        client = server.client()
        client.download_file(
            worlds["one"].bucket, f"one/r{round_number}a.tar.gz", str(tarball)
        )
        started = time.perf_counter()
        subprocess.run(
            ["scp", "-q", *hosts[0].ssh_options(), str(tarball),
             f"deploy@{hosts[0].address}:/tmp/bench.tar.gz"],
            check=True,
        )  # fmt: skip
        timings["scp 1 host"].append(time.perf_counter() - started)

        for label, name in (
            ("deploy 1 host", "one"),
            ("deploy 4 hosts", "four"),
        ):
            for step in ("a", "b"):
                started = time.perf_counter()
                code = run(
                    worlds[name], "deploy", environment="prd",
                    sha=f"r{round_number}{step}", **ssh,
                )  # fmt: skip
                elapsed = time.perf_counter() - started
                assert code == 0, f"{label} failed"
                if step == "b":
                    timings[label].append(elapsed)

        started = time.perf_counter()
        code = run(worlds["one"], "rollback", environment="prd", **ssh)
        timings["rollback"].append(time.perf_counter() - started)
        assert code == 0, "rollback failed"
    return timings


def run(world, command: str, **inputs: str) -> int:
    code, _ = execute([command], world.environ(**inputs), io.StringIO())
    return code


def report(timings: dict[str, list[float]], args) -> None:
    medians = {name: statistics.median(v) for name, v in timings.items()}
    wait = args.verify_seconds
    print(f"{args.size_mb} MiB release, {args.repeat} rounds, verify window "
          f"{wait:g} s (seconds):")  # fmt: skip
    print(f"{'what':16} {'median':>8} {'min':>8} {'max':>8}")
    for name, values in timings.items():
        print(
            f"{name:16} {medians[name]:8.3f} {min(values):8.3f} "
            f"{max(values):8.3f}"
        )

    def ratio(a: str, b: str, minus: float = 0.0) -> float:
        return (medians[a] - minus) / (medians[b] - minus)

    print()
    print("ratio                          with window   without   target")
    rows = [
        ("deploy 4 hosts / 1 host", "deploy 4 hosts", "deploy 1 host", 1.5),
        ("rollback / deploy 1 host", "rollback", "deploy 1 host", 0.2),
    ]
    for label, a, b, target in rows:
        print(
            f"{label:30} {ratio(a, b):11.2f} {ratio(a, b, wait):9.2f} "
            f"{target:8.2f}"
        )
    versus_scp = ratio("deploy 1 host", "scp 1 host")
    print(
        f"{'deploy 1 host / scp':30} {versus_scp:11.2f}           (a whole "
        "deploy against a bare copy; the copy alone: bench_copy.py)"
    )


if __name__ == "__main__":
    sys.exit(main())
