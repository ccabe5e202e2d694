"""Real Linux hosts for tests: systemd-nspawn containers on loopback.

Each host boots the rootfs that ``build_rootfs.sh`` makes, shares the
machine's network and runs its own sshd on its own loopback address
(127.0.0.2, 127.0.0.3, ...) on port 22, with freshly generated host keys
and a client key authorized for ``deploy``.

Several test runs may share the machine, so an address is leased with an
exclusive ``flock`` on ``/run/inforge-test-hosts/<address>.lock`` for as
long as its host runs, and each container gets cgroups of its own.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import paramiko


BUILD_SCRIPT = Path(__file__).with_name("build_rootfs.sh")
DEFAULT_ROOTFS = Path("/var/cache/inforge-action/rootfs")
LOCK_DIR = Path("/run/inforge-test-hosts")
CGROUP_HIERARCHIES = (
    Path("/sys/fs/cgroup/systemd"),
    Path("/sys/fs/cgroup/unified"),
)
CGROUP_GROUP = "inforge-test-hosts"
FIRST_OCTET = 2
LAST_OCTET = 254
SSH_PORT = 22
BOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 120.0
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_KEY_TYPES = ("ed25519", "rsa", "ecdsa")
CLIENT_KEY_TYPES = ("ed25519", "rsa", "ecdsa")

_running: set[TestHost] = set()
_running_lock = threading.Lock()


class HostBootError(RuntimeError):
    """A test host did not come up; the message holds its console tail."""


class RootCommandError(RuntimeError):
    """A command run as root inside a test host failed."""


@dataclass(frozen=True)
class ClientKey:
    """An SSH client key for ``deploy``, as a test would be handed it."""

    kind: str
    path: Path
    private_text: str
    public_line: str
    passphrase: str | None = None


@dataclass
class AddressLease:
    """A loopback address held with an exclusive lock until released."""

    address: str
    lock_file: int

    def release(self) -> None:
        if self.lock_file >= 0:
            os.close(self.lock_file)
            self.lock_file = -1


def build_rootfs() -> Path:
    """Build the rootfs if build_rootfs.sh changed since; return its path.

    ``INFORGE_TEST_ROOTFS`` moves it, as it does for the script.
    """
    rootfs = Path(os.environ.get("INFORGE_TEST_ROOTFS") or DEFAULT_ROOTFS)
    completed = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.splitlines()[-30:])
        raise HostBootError(
            f"{BUILD_SCRIPT.name} could not build {rootfs} (exit "
            f"{completed.returncode}):\n{tail}"
        )
    return rootfs


def lease_address() -> AddressLease:
    """Lease a free 127.0.0.N: its lock is ours and nothing answers on 22."""
    LOCK_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    for octet in range(FIRST_OCTET, LAST_OCTET + 1):
        address = f"127.0.0.{octet}"
        descriptor = os.open(
            LOCK_DIR / f"{address}.lock",
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o644,
        )
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue

        # A host left over by a killed run holds no lock but still answers.
        if is_accepting(address, SSH_PORT):
            os.close(descriptor)
            continue
        return AddressLease(address, descriptor)
    raise HostBootError(
        f"no free loopback address in 127.0.0.{FIRST_OCTET}-{LAST_OCTET}: "
        f"every one is locked in {LOCK_DIR} or answers on port {SSH_PORT}; "
        "stop leftover test containers (ps -ef | grep systemd-nspawn)"
    )


def is_accepting(address: str, port: int) -> bool:
    """Tell whether something accepts TCP connections on address:port."""
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False


def generate_client_key(
    directory: Path,
    kind: str = "ed25519",
    *,
    passphrase: str | None = None,
    pem: bool = False,
) -> ClientKey:
    """Generate a client key with ssh-keygen (OpenSSH or PEM format)."""
    if kind not in CLIENT_KEY_TYPES:
        raise ValueError(f"client key type {kind!r} not in {CLIENT_KEY_TYPES}")
    directory.mkdir(parents=True, exist_ok=True)
    suffix = secrets.token_hex(3)
    path = directory / f"client_{kind}_{suffix}"
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", passphrase or ""]
    argv += ["-C", f"inforge-test-{kind}", "-f", str(path)]
    if pem:
        argv += ["-m", "PEM"]
    subprocess.run(argv, check=True, capture_output=True)
    return ClientKey(
        kind=kind,
        path=path,
        private_text=path.read_text(),
        public_line=path.with_suffix(".pub").read_text().strip(),
        passphrase=passphrase,
    )


class TestHost:
    """One booted container: its address, keys and root-side helpers."""

    __test__ = False

    def __init__(
        self,
        *,
        lease: AddressLease,
        name: str,
        directory: Path,
        rootfs: Path,
        host_key_types: Sequence[str],
        client_keys: Sequence[ClientKey],
    ) -> None:
        self._lease = lease
        self.address = lease.address
        self.name = name
        self.directory = directory
        self.rootfs = rootfs
        self.host_key_types = tuple(host_key_types)
        self.client_keys = tuple(client_keys)
        self.client_key = self.client_keys[0]
        self.log_path = directory / "console.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._leader_pid: int | None = None
        self._rootfs_lock = -1
        self._cgroups = [
            root / CGROUP_GROUP / name
            for root in CGROUP_HIERARCHIES
            if (root / "cgroup.procs").exists()
        ]

    def __repr__(self) -> str:
        return f"TestHost({self.name!r}, {self.address!r})"

    @property
    def client_key_text(self) -> str:
        return self.client_key.private_text

    @property
    def host_public_keys(self) -> dict[str, str]:
        """The host's public keys by type, as "ssh-ed25519 AAAA..." lines."""
        keys = {}
        for kind in self.host_key_types:
            text = self._host_key_path(kind).with_suffix(".pub").read_text()
            keys[kind] = " ".join(text.split()[:2])
        return keys

    def known_hosts_line(self, kind: str | None = None) -> str:
        """The known_hosts entry for one host key type, or for all of them.

        Without ``kind`` the result has one line per host key.
        """
        keys = self.host_public_keys
        kinds = [kind] if kind else list(keys)
        return "\n".join(f"{self.address} {keys[k]}" for k in kinds) + "\n"

    @property
    def known_hosts_path(self) -> Path:
        return self.directory / "known_hosts"

    def ssh_options(self, key: ClientKey | None = None) -> list[str]:
        """Options for ssh/scp that trust this host and nothing else."""
        key = key or self.client_key
        return [
            "-F",
            "/dev/null",
            "-i",
            str(key.path),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts_path}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
        ]

    def ssh(
        self,
        argv: Sequence[str],
        *,
        key: ClientKey | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv as ``deploy`` with the OpenSSH client (never checked)."""
        command = [
            "ssh",
            *self.ssh_options(key),
            f"deploy@{self.address}",
            "--",
            shlex.join(argv),
        ]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )

    def run_root(
        self,
        argv: Sequence[str],
        *,
        input: bytes | str | None = None,
        check: bool = True,
        text: bool = True,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess:
        """Run argv as root inside the container, through its namespaces.

        It does not go over SSH, so it works whatever state sshd is in.
        """
        leader = self._require_leader()
        command = [
            "nsenter",
            f"--target={leader}",
            "--mount",
            "--uts",
            "--ipc",
            "--pid",
            "--root",
            "--wd",
            "--",
            "/usr/bin/env",
            "-i",
            f"PATH={CONTAINER_PATH}",
            "LANG=C.UTF-8",
            "HOME=/root",
            *argv,
        ]
        if text and isinstance(input, bytes):
            input = input.decode()
        if not text and isinstance(input, str):
            input = input.encode()
        completed = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=text,
            timeout=timeout,
            check=False,
        )
        if check and completed.returncode != 0:
            stderr = completed.stderr
            if isinstance(stderr, bytes):
                stderr = stderr.decode(errors="replace")
            raise RootCommandError(
                f"{self.name} ({self.address}): {shlex.join(argv)} exited "
                f"{completed.returncode}: {stderr.strip()[-2000:]}"
            )
        return completed

    def read_file(self, path: str) -> str:
        return self.run_root(["cat", "--", path]).stdout

    def read_bytes(self, path: str) -> bytes:
        return self.run_root(["cat", "--", path], text=False).stdout

    def write_file(
        self, path: str, content: str | bytes, *, mode: str = "0644"
    ) -> None:
        """Write a root-owned file inside the container."""
        script = 'cat > "$1" && chmod "$2" "$1"'
        self.run_root(
            ["sh", "-c", script, "sh", path, mode],
            input=content if isinstance(content, bytes) else content.encode(),
            text=False,
        )

    def install_unit(self, service: str, user: str | None) -> None:
        """Provision a service as inforge does: folder, descriptor, unit.

        The files are the product's own renderings (provision.py), put in
        place from the test side without SSH, so deploy tests need no
        provision run. The unit stays skipped by its ConditionPathExists
        until ``<folder>/run`` exists.
        """
        from inforge_action.descriptor import Target
        from inforge_action.provision import (
            render_descriptor,
            render_unit,
            service_dir,
        )

        target = Target(
            service=service,
            host_dns=self.address,
            folder=f"/srv/wardnet/{service}",
            unit=f"wardnet-{service}.service",
            user=user or "",
        )
        descriptor_dir = service_dir(service)
        self.run_root(
            ["install", "-d", "-m", "0755", target.folder, descriptor_dir]
        )
        self.write_file(
            f"{descriptor_dir}/descriptor.yaml",
            render_descriptor(target, "test"),
        )
        self.write_file(
            f"/etc/systemd/system/{target.unit}",
            render_unit(service, target.folder),
        )
        self.run_root(["systemctl", "daemon-reload"])
        self.run_root(["systemctl", "enable", "--now", "--quiet", target.unit])

    def start(self) -> None:
        """Start the container; `wait_until_ready` waits for its sshd."""
        self._write_host_files()
        self._rootfs_lock = lock_rootfs_shared(self.rootfs)
        for cgroup in self._cgroups:
            cgroup.mkdir(parents=True, exist_ok=True)

        # The shell moves itself, and so nspawn, into the container's own
        # cgroups: without that, concurrent containers would share the
        # machine's root cgroup and their systemds would manage each
        # other's processes.
        placement = (
            'while [ "$1" != -- ]; do echo $$ > "$1" || exit 1; shift; done;'
            ' shift; exec "$@"'
        )
        argv = ["sh", "-c", placement, "sh"]
        argv += [str(cgroup / "cgroup.procs") for cgroup in self._cgroups]
        argv += ["--", *self._nspawn_argv()]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": CONTAINER_PATH, "LANG": "C.UTF-8"},
                start_new_session=True,
            )
        with _running_lock:
            _running.add(self)

    def wait_until_ready(self, deadline: float) -> None:
        """Wait until this host's own sshd greets on address:22."""
        while True:
            if self._process is None or self._process.poll() is not None:
                raise HostBootError(self._describe_failure("exited early"))
            if self._leader_pid is None:
                self._leader_pid = find_container_leader(self._process.pid)
            banner_key = fetch_host_key(self.address)
            if banner_key is not None and self._leader_pid is not None:
                break
            if time.monotonic() > deadline:
                raise HostBootError(
                    self._describe_failure("no SSH banner in time")
                )
            time.sleep(0.2)

        # A container left by a killed run may have the address bound.
        if banner_key not in self.host_public_keys.values():
            raise HostBootError(
                self._describe_failure(
                    f"{self.address}:22 answers with a key that is not this "
                    "host's: another sshd owns the address"
                )
            )

    def stop(self) -> None:
        """Shut the container down (SIGTERM, then SIGKILL) and free it."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # Killing nspawn alone would orphan the container; killing
                # its init ends the whole PID namespace.
                if self._leader_pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self._leader_pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
        self._process = None
        self._leader_pid = None

        remove_cgroups(self._cgroups)
        if self._rootfs_lock >= 0:
            os.close(self._rootfs_lock)
            self._rootfs_lock = -1
        self._lease.release()
        with _running_lock:
            _running.discard(self)

    def _require_leader(self) -> int:
        if self._leader_pid is None:
            raise RootCommandError(f"{self.name} is not running")
        return self._leader_pid

    def _host_key_path(self, kind: str) -> Path:
        return self.directory / f"ssh_host_{kind}_key"

    def _write_host_files(self) -> None:
        if ":" in str(self.directory):
            raise HostBootError(
                f"host directory {self.directory} contains ':', which "
                "--bind-ro cannot express"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        for kind in self.host_key_types:
            path = self._host_key_path(kind)
            if not path.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", kind, "-N", ""]
                    + ["-C", f"root@{self.name}", "-f", str(path)],
                    check=True,
                    capture_output=True,
                )

        # sshd refuses group- or world-readable private host keys and
        # authorized_keys writable by others; root:root 0600/0644 pass.
        config = [
            f"ListenAddress {self.address}",
            *(
                f"HostKey /etc/ssh/ssh_host_{kind}_key"
                for kind in self.host_key_types
            ),
            "PasswordAuthentication no",
            "PermitRootLogin no",
        ]
        write_text(self.directory / "sshd.conf", "\n".join(config) + "\n")
        authorized = "".join(f"{k.public_line}\n" for k in self.client_keys)
        write_text(self.directory / "authorized_keys", authorized)
        hosts = f"127.0.0.1 localhost\n{self.address} {self.name}\n"
        write_text(self.directory / "hosts", hosts)
        write_text(self.known_hosts_path, self.known_hosts_line())

    def _nspawn_argv(self) -> list[str]:
        binds = {
            "sshd.conf": "/etc/ssh/sshd_config.d/inforge-host.conf",
            "authorized_keys": "/home/deploy/.ssh/authorized_keys",
            "hosts": "/etc/hosts",
        }
        for kind in self.host_key_types:
            binds[f"ssh_host_{kind}_key"] = f"/etc/ssh/ssh_host_{kind}_key"
            binds[f"ssh_host_{kind}_key.pub"] = (
                f"/etc/ssh/ssh_host_{kind}_key.pub"
            )
        argv = [
            "systemd-nspawn",
            f"--directory={self.rootfs}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            f"--machine={self.name}",
            "--console=read-only",
            "--quiet",
        ]
        argv += [
            f"--bind-ro={self.directory / source}:{target}"
            for source, target in binds.items()
        ]
        return argv

    def _describe_failure(self, reason: str) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        tail = "\n".join(lines[-30:]) or "(console log is empty)"
        return (
            f"test host {self.name} ({self.address}) did not boot: {reason}."
            f"\nLast console lines ({self.log_path}):\n{tail}"
        )


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


def lock_rootfs_shared(rootfs: Path) -> int:
    """Hold the rootfs's shared lock, so build_rootfs.sh won't swap it."""
    descriptor = os.open(
        f"{rootfs}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
    )
    fcntl.flock(descriptor, fcntl.LOCK_SH)
    return descriptor


def find_container_leader(nspawn_pid: int) -> int | None:
    """Find the container's init: a child of nspawn that is PID 1 inside."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(
            line.split(":\t", 1)
            for line in status.splitlines()
            if ":\t" in line
        )
        if fields.get("PPid", "").strip() != str(nspawn_pid):
            continue
        namespace_pids = fields.get("NSpid", "").split()
        if len(namespace_pids) >= 2 and namespace_pids[-1] == "1":
            return int(entry.name)
    return None


def fetch_host_key(address: str) -> str | None:
    """The host key sshd on address:22 offers, or None if none answers."""
    try:
        sock = socket.create_connection((address, SSH_PORT), timeout=2.0)
    except OSError:
        return None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=5.0)
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"
    except (paramiko.SSHException, OSError, EOFError):
        return None
    finally:
        transport.close()


def remove_cgroups(cgroups: Sequence[Path]) -> None:
    """Remove a stopped container's cgroup trees, deepest first."""
    for cgroup in cgroups:
        if not cgroup.exists():
            continue
        for directory, _, _ in sorted(
            os.walk(cgroup), key=lambda item: item[0].count("/"), reverse=True
        ):
            # A cgroup still holding processes stays; it is harmless.
            with contextlib.suppress(OSError):
                os.rmdir(directory)


def boot_hosts(
    rootfs: Path,
    directory: Path,
    count: int = 1,
    *,
    host_key_types: Sequence[str] = ("ed25519", "rsa"),
    client_keys: Sequence[ClientKey] | None = None,
    boot_timeout: float = BOOT_TIMEOUT,
) -> list[TestHost]:
    """Boot ``count`` hosts in parallel and wait until each greets on SSH.

    ``client_keys`` are all authorized for ``deploy``; the first is the
    host's ``client_key``. Without them one ed25519 key is generated.
    """
    unknown = set(host_key_types) - set(HOST_KEY_TYPES)
    if unknown or not host_key_types:
        raise ValueError(f"host key types must be some of {HOST_KEY_TYPES}")
    if not client_keys:
        client_keys = [generate_client_key(directory / "client")]

    hosts: list[TestHost] = []
    try:
        for _ in range(count):
            lease = lease_address()
            octet = lease.address.rsplit(".", 1)[1]
            name = f"inforge-{octet}-{secrets.token_hex(3)}"
            host = TestHost(
                lease=lease,
                name=name,
                directory=directory / name,
                rootfs=rootfs,
                host_key_types=host_key_types,
                client_keys=client_keys,
            )
            hosts.append(host)

        # Generating host keys takes a while too: start them all at once.
        with ThreadPoolExecutor(max_workers=len(hosts) or 1) as pool:
            list(pool.map(TestHost.start, hosts))
        deadline = time.monotonic() + boot_timeout
        for host in hosts:
            host.wait_until_ready(deadline)
    except BaseException:
        stop_hosts(hosts)
        raise
    return hosts


def stop_hosts(hosts: Sequence[TestHost]) -> None:
    """Stop hosts in parallel: each shutdown mostly waits on the guest."""
    threads = [threading.Thread(target=host.stop) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@contextlib.contextmanager
def running_hosts(
    rootfs: Path, directory: Path, count: int = 1, **options
) -> Iterator[list[TestHost]]:
    """Boot hosts for the duration of a ``with`` block."""
    hosts = boot_hosts(rootfs, directory, count, **options)
    try:
        yield hosts
    finally:
        stop_hosts(hosts)


@atexit.register
def _stop_leftover_hosts() -> None:
    with _running_lock:
        leftovers = list(_running)
    stop_hosts(leftovers)
