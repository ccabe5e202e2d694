"""Time HostSession.put against the OpenSSH scp client on one test host.

Boots one test host (needs root, systemd-nspawn and the test rootfs),
writes a random file and copies it to the host, alternating between
the methods so that noise hits them alike:

    scp            OpenSSH scp, its own connection each time
    ssh cat        OpenSSH ssh streaming into `cat > path` (reference)
    connect+put    inforge_action.ssh: connect, put, close
    put            HostSession.put on a session that is already open

Run from the repository root: python bench/bench_copy.py [--size-mb 50]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inforge_action import ssh  # noqa: E402
from tests.support.hosts import (  # noqa: E402
    TestHost,
    build_rootfs,
    running_hosts,
)


REMOTE_PATH = "/tmp/bench-copy.bin"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    rootfs = build_rootfs()
    with tempfile.TemporaryDirectory(prefix="bench-copy-") as scratch:
        directory = Path(scratch)
        source = directory / "payload.bin"
        source.write_bytes(os.urandom(args.size_mb << 20))
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        with running_hosts(rootfs, directory / "hosts", 1) as (host,):
            timings = measure(host, source, digest, args.repeat)
    report(timings, args.size_mb, args.repeat)
    return 0


def measure(
    host: TestHost, source: Path, digest: str, repeat: int
) -> dict[str, list[float]]:
    key = ssh.load_private_key(host.client_key_text, None)
    known_hosts = host.known_hosts_line()
    destination = f"deploy@{host.address}"

    def open_session() -> ssh.HostSession:
        return ssh.connect(
            host.address, user="deploy", pkey=key, known_hosts=known_hosts
        )

    def copy_with_scp() -> None:
        subprocess.run(
            ["scp", "-q", *host.ssh_options(), str(source)]
            + [f"{destination}:{REMOTE_PATH}"],
            check=True,
        )

    def copy_with_ssh_cat() -> None:
        with source.open("rb") as stdin:
            subprocess.run(
                ["ssh", *host.ssh_options(), destination]
                + [f"cat > {REMOTE_PATH}"],
                stdin=stdin,
                check=True,
            )

    def copy_with_connect_and_put() -> None:
        with open_session() as session:
            session.put(source, REMOTE_PATH)

    with open_session() as warm:
        methods: dict[str, Callable[[], None]] = {
            "scp": copy_with_scp,
            "ssh cat": copy_with_ssh_cat,
            "connect+put": copy_with_connect_and_put,
            "put": lambda: warm.put(source, REMOTE_PATH),
        }
        timings: dict[str, list[float]] = {name: [] for name in methods}

        # One unmeasured round first: page cache, sshd and tmpfs warm up.
        for run_copy in methods.values():
            run_copy()
        for _ in range(repeat):
            for name, run_copy in methods.items():
                started = time.perf_counter()
                run_copy()
                timings[name].append(time.perf_counter() - started)
                check_copy(warm, digest, name)
        cipher = warm.connection.transport.local_cipher
    print(f"paramiko cipher: {cipher}")
    return timings


def check_copy(session: ssh.HostSession, digest: str, method: str) -> None:
    result = session.run(["sha256sum", REMOTE_PATH])
    if result.stdout.split()[0] != digest:
        raise SystemExit(f"{method}: the copy on the host differs")


def report(timings: dict[str, list[float]], size_mb: int, repeat: int) -> None:
    print(f"{size_mb} MiB to one host, {repeat} rounds (seconds):")
    print(f"{'method':<12} {'median':>8} {'min':>8} {'max':>8} {'MiB/s':>8}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(
            f"{name:<12} {median:8.3f} {min(values):8.3f} "
            f"{max(values):8.3f} {size_mb / median:8.0f}"
        )
    scp = statistics.median(timings["scp"])
    for name in ("put", "connect+put"):
        ratio = statistics.median(timings[name]) / scp
        print(f"ratio {name} / scp (medians): {ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
