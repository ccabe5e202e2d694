"""Pytest fixtures for real test hosts (see hosts.py).

tests/conftest.py loads them with
``pytest_plugins = ("tests.support.host_fixtures",)``.

- ``rootfs`` (session): builds the rootfs when build_rootfs.sh changed;
  while it lives, SIGTERM interrupts pytest like Ctrl-C, so hosts stop.
- ``host_factory`` / ``module_host_factory``: ``boot(count, **options)``
  boots hosts in parallel and stops them when the test / module ends,
  failed or interrupted; options are those of `boot_hosts`.
- ``idle_address``: a loopback address leased like a host's, with nothing
  booted on it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.hosts import (
    TestHost,
    boot_hosts,
    build_rootfs,
    lease_address,
    stop_hosts,
)


HostFactory = Callable[..., list[TestHost]]


@pytest.fixture(scope="session")
def rootfs() -> Iterator[Path]:
    path = build_rootfs()

    # pytest tears fixtures down after Ctrl-C but dies at once on SIGTERM,
    # which would leave containers running; make SIGTERM an interrupt.
    previous = signal.getsignal(signal.SIGTERM)
    replace = previous is signal.SIG_DFL
    if replace:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield path
    finally:
        if replace:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def host_factory(
    rootfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostFactory]:
    yield from _boot_and_stop(rootfs, tmp_path_factory)


@pytest.fixture(scope="module")
def module_host_factory(
    rootfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostFactory]:
    yield from _boot_and_stop(rootfs, tmp_path_factory)


@pytest.fixture
def idle_address() -> Iterator[str]:
    lease = lease_address()
    try:
        yield lease.address
    finally:
        lease.release()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _boot_and_stop(
    rootfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostFactory]:
    booted: list[TestHost] = []

    def boot(count: int = 1, **options) -> list[TestHost]:
        directory = tmp_path_factory.mktemp("hosts")
        hosts = boot_hosts(rootfs, directory, count, **options)
        booted.extend(hosts)
        return hosts

    try:
        yield boot
    finally:
        stop_hosts(booted)
