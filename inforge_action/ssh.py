"""SSH to hosts with fabric: strict host keys, quoted commands, fast copy.

A `HostSession` wraps one `fabric.Connection` that every step on a host
reuses. The runner's home never changes how it connects: no agent, no
``~/.ssh`` keys, no ``ssh_config``, and host keys come only from the
known-hosts text handed to `connect`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fabric
import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from inforge_action.errors import HostError, HostKeyError, InputError


LOGGER = logging.getLogger(__name__)

KEY_INPUT = "ssh-private-key"
PASSPHRASE_INPUT = "ssh-key-passphrase"
TAIL_LINES = 20
COPY_CHUNK = 4 << 20
READ_CHUNK = 1 << 16
EOF_GRACE_SECONDS = 2.0

# AES-GCM encrypts and authenticates a packet in one OpenSSL call, where
# paramiko's default AES-CTR adds an HMAC pass per packet: copies run about
# 1.5 times faster (bench/bench_copy.py). The others keep paramiko's order,
# so a server without GCM still gets its usual choice.
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)

# The host key types asked for first, when known-hosts pins them. paramiko
# offers a host's first pinned type first, so pinned keys are added in this
# order: a host with an ed25519 key presents it, and provisioning can
# encrypt a credential to the very key the connection verified.
HOST_KEY_PREFERENCE = ("ssh-ed25519", "ssh-rsa")

_KEY_CLASSES: tuple[tuple[type, type[paramiko.PKey]], ...] = (
    (ed25519.Ed25519PrivateKey, paramiko.Ed25519Key),
    (ec.EllipticCurvePrivateKey, paramiko.ECDSAKey),
    (rsa.RSAPrivateKey, paramiko.RSAKey),
)


@dataclass(frozen=True)
class Result:
    """What a remote command left: its exit code and decoded output."""

    exit_code: int
    stdout: str
    stderr: str


def load_private_key(text: str, passphrase: str | None) -> paramiko.PKey:
    """Load an ed25519, ecdsa or rsa private key pasted into a secret.

    OpenSSH and PEM formats are accepted, with CRLF line ends or literal
    ``\\n`` sequences. Errors name the input, never the key material.
    """
    data = normalize_key_text(text).encode()
    password = passphrase.encode() if passphrase else None
    loaded = _decode_private_key(data, password)

    key_class = next(
        (kind for base, kind in _KEY_CLASSES if isinstance(loaded, base)),
        None,
    )
    if key_class is None:
        raise InputError(
            f"{KEY_INPUT} holds a {type(loaded).__name__.lstrip('_')} key, "
            "which is not supported: use an ed25519 (preferred), ecdsa or "
            "rsa key."
        )

    # paramiko reads the OpenSSH format for every key type, so the key is
    # handed over in it, unencrypted and in memory only.
    openssh_text = loaded.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    try:
        return key_class.from_private_key(io.StringIO(openssh_text))
    except (paramiko.SSHException, ValueError) as error:
        raise InputError(
            f"{KEY_INPUT} was decoded but paramiko cannot use it as a "
            f"{key_class.__name__}; generate a fresh ed25519 key with "
            "ssh-keygen -t ed25519."
        ) from error


def normalize_key_text(text: str) -> str:
    """Undo what pasting into a GitHub secret does to a key's lines."""
    text = text.replace("\\r", "").replace("\\n", "\n")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.strip() for line in text.strip().split("\n")]
    return "\n".join(lines) + "\n"


def _decode_private_key(data: bytes, password: bytes | None):
    is_openssh = b"BEGIN OPENSSH PRIVATE KEY" in data
    load = (
        serialization.load_ssh_private_key
        if is_openssh
        else serialization.load_pem_private_key
    )
    unreadable = (
        f"{KEY_INPUT} is not a private key in OpenSSH or PEM format. Paste "
        "the whole key file, from its -----BEGIN line to its -----END line."
    )
    try:
        return load(data, password=password)
    except TypeError as error:
        if password is None:
            raise InputError(
                f"{KEY_INPUT} is encrypted and {PASSPHRASE_INPUT} is empty: "
                f"set {PASSPHRASE_INPUT} to the key's passphrase."
            ) from error
        # A passphrase given for a plain key is not needed; use the key.
        return _decode_private_key(data, None)
    except UnsupportedAlgorithm as error:
        raise InputError(
            f"{KEY_INPUT} uses a key type or cipher that is not supported: "
            "use an ed25519 (preferred), ecdsa or rsa key."
        ) from error
    except ValueError as error:
        if password is None:
            raise InputError(unreadable) from error
        if not _is_encrypted(data, load):
            raise InputError(unreadable) from error
        raise InputError(
            f"{PASSPHRASE_INPUT} does not decrypt {KEY_INPUT}: check that "
            "the passphrase belongs to this key."
        ) from error


def _is_encrypted(data: bytes, load) -> bool:
    try:
        load(data, password=None)
    except TypeError:
        return True
    except (ValueError, UnsupportedAlgorithm):
        return False
    return False


def parse_known_hosts(text: str) -> paramiko.HostKeys:
    """Read known_hosts text (OpenSSH format) into paramiko's HostKeys.

    Hashed ``|1|`` names and ``[host]:port`` names are kept as they are.
    Comments, blank lines, marker lines (``@cert-authority``,
    ``@revoked``) and key types paramiko cannot use are skipped.
    """
    host_keys = paramiko.HostKeys()
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = " ".join(raw_line.split())
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            LOGGER.debug("known-hosts line %d: marker line skipped", number)
            continue

        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
        except (
            paramiko.hostkeys.InvalidHostKey,
            paramiko.SSHException,
            ValueError,
        ):
            entry = None
        if entry is None:
            LOGGER.warning(
                "known-hosts line %d skipped: it is not '<host> <key type> "
                "<base64 key>' with a key type paramiko supports",
                number,
            )
            continue

        for name in entry.hostnames:
            if any(mark in name for mark in "*?!"):
                LOGGER.warning(
                    "known-hosts line %d: host pattern %r skipped; "
                    "wildcards and negation are not supported, list the "
                    "host names instead",
                    number,
                    name,
                )
                continue
            host_keys.add(name, entry.key.get_name(), entry.key)
    return host_keys


def fingerprint(key: paramiko.PKey) -> str:
    """The OpenSSH-style SHA256 fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse unknown host keys, or accept them once with a warning."""

    def __init__(self, host: str, port: int, accept_new: bool) -> None:
        self._host = host
        self._port = port
        self._accept_new = accept_new

    def missing_host_key(self, client, hostname, key) -> None:
        if self._accept_new:
            LOGGER.warning(
                "%s: accepting unknown %s host key %s (accept-new). Pin it: "
                "add the line from `ssh-keyscan -t %s -p %d %s` to "
                "known-hosts after checking the fingerprint out of band.",
                self._host,
                key.get_name(),
                fingerprint(key),
                _keyscan_type(key),
                self._port,
                self._host,
            )
            return
        raise HostKeyError(
            self._host,
            "connect",
            f"the {key.get_name()} host key {fingerprint(key)} is not in "
            "known-hosts, so the host is not trusted. Check the fingerprint "
            "out of band (on the host: ssh-keygen -lf "
            "/etc/ssh/ssh_host_*_key.pub), then add the line from "
            f"`ssh-keyscan -t {_keyscan_type(key)} -p {self._port} "
            f"{self._host}` to known-hosts.",
        )


def _keyscan_type(key: paramiko.PKey) -> str:
    name = key.get_name()
    if name.startswith("ecdsa"):
        return "ecdsa"
    return name.removeprefix("ssh-")


def _changed_key_error(
    host: str, port: int, error: paramiko.BadHostKeyException
) -> HostKeyError:
    offered, expected = error.key, error.expected_key
    scan = f"`ssh-keyscan -t {_keyscan_type(offered)} -p {port} {host}`"
    if offered.get_name() != expected.get_name():
        detail = (
            f"the host offered a {offered.get_name()} host key "
            f"{fingerprint(offered)}, but known-hosts has only other key "
            f"types for it (such as {expected.get_name()}). Check the "
            f"offered key out of band, then add the line from {scan} to "
            "known-hosts."
        )
    else:
        detail = (
            f"the {offered.get_name()} host key changed: the host offered "
            f"{fingerprint(offered)}, known-hosts has "
            f"{fingerprint(expected)}. This can be an attack. If the host "
            "was rebuilt, check the new key out of band, then replace its "
            f"line in known-hosts with the one from {scan}."
        )
    return HostKeyError(host, "connect", detail)


def _is_transient(error: BaseException) -> bool:
    """Tell whether a connect failure may pass if tried again."""
    if isinstance(error, socket.gaierror):
        return False
    if isinstance(error, (OSError, EOFError)):
        return True
    if isinstance(
        error, (paramiko.AuthenticationException, paramiko.BadHostKeyException)
    ):
        return False
    # paramiko reports a banner that never came (server busy, reset) as a
    # bare SSHException raised while handling the socket error.
    if isinstance(error, paramiko.SSHException):
        cause = error.__cause__ or error.__context__
        banner_lost = str(error).startswith("Error reading SSH protocol")
        return banner_lost or isinstance(cause, (OSError, EOFError))
    return False


def describe_error(error: BaseException) -> str:
    """Say in a few words what a socket or paramiko error means."""
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, EOFError):
        return "the server closed the connection"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).rstrip(".") or type(error).__name__


def connect(
    host: str,
    *,
    user: str,
    port: int = 22,
    pkey: paramiko.PKey,
    known_hosts: paramiko.HostKeys | str,
    accept_new: bool = False,
    connect_timeout: float = 10,
    banner_timeout: float = 15,
    auth_timeout: float = 15,
    command_timeout: float | None = 600,
    attempts: int = 3,
    retry_delay: float = 1.0,
) -> HostSession:
    """Open one verified SSH connection to a host as ``user``.

    Refused, reset or timed-out connections are tried ``attempts`` times
    with a doubling delay; authentication and host-key failures are not.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    if isinstance(known_hosts, str):
        known_hosts = parse_known_hosts(known_hosts)

    for attempt in range(1, attempts + 1):
        connection = _new_connection(
            host,
            user=user,
            port=port,
            pkey=pkey,
            known_hosts=known_hosts,
            accept_new=accept_new,
            connect_timeout=connect_timeout,
            banner_timeout=banner_timeout,
            auth_timeout=auth_timeout,
        )
        try:
            connection.open()
        except HostKeyError:
            connection.close()
            raise
        except paramiko.BadHostKeyException as error:
            connection.close()
            raise _changed_key_error(host, port, error) from error
        except paramiko.AuthenticationException as error:
            connection.close()
            raise HostError(
                host,
                "connect",
                f"{user}@{host}:{port} rejected the SSH key "
                f"({pkey.get_name()} {fingerprint(pkey)}): "
                f"{describe_error(error)}. Add "
                f"its public key to ~{user}/.ssh/authorized_keys on the "
                f"host, or set {KEY_INPUT} to a key the host accepts.",
            ) from error
        except (OSError, EOFError, paramiko.SSHException) as error:
            connection.close()
            if not _is_transient(error):
                raise HostError(
                    host,
                    "connect",
                    f"cannot connect to {host}:{port}: "
                    f"{describe_error(error)}. Check the "
                    "host name and that sshd runs there.",
                ) from error
            if attempt == attempts:
                raise HostError(
                    host,
                    "connect",
                    f"cannot connect to {host}:{port} after {attempts} "
                    f"attempts: {describe_error(error)}. Check that "
                    f"the host is up, sshd listens on port {port} and no "
                    "firewall drops the runner's connections.",
                ) from error
            delay = retry_delay * 2 ** (attempt - 1)
            LOGGER.warning(
                "%s: connect attempt %d of %d failed (%s), next in %.1f s",
                host,
                attempt,
                attempts,
                describe_error(error),
                delay,
            )
            time.sleep(delay)
        else:
            return HostSession(host, connection, command_timeout)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _new_connection(
    host: str,
    *,
    user: str,
    port: int,
    pkey: paramiko.PKey,
    known_hosts: paramiko.HostKeys,
    accept_new: bool,
    connect_timeout: float,
    banner_timeout: float,
    auth_timeout: float,
) -> fabric.Connection:
    # An explicit, empty SSHConfig and a lazy Config keep fabric from
    # reading ssh_config, fabric.yml or the environment of the runner.
    config = fabric.Config(
        lazy=True,
        ssh_config=paramiko.SSHConfig(),
        overrides={"load_ssh_configs": False},
    )
    connection = fabric.Connection(
        host,
        user=user,
        port=port,
        config=config,
        gateway=False,
        forward_agent=False,
        # Given to paramiko directly: fabric would round it to whole
        # seconds, and a value under one second to no timeout at all.
        connect_kwargs={
            "timeout": connect_timeout,
            "pkey": pkey,
            "allow_agent": False,
            "look_for_keys": False,
            "banner_timeout": banner_timeout,
            "auth_timeout": auth_timeout,
            "transport_factory": _make_transport,
        },
    )

    # fabric trusts any new host key by default; only known_hosts counts.
    client = connection.client
    client.set_missing_host_key_policy(
        _KnownHostsPolicy(host, port, accept_new)
    )
    trusted = client.get_host_keys()
    for name in known_hosts.keys():
        pinned = known_hosts[name]
        for key_type in sorted(pinned.keys(), key=_host_key_rank):
            trusted.add(name, key_type, pinned[key_type])
    return connection


def _host_key_rank(key_type: str) -> int:
    if key_type in HOST_KEY_PREFERENCE:
        return HOST_KEY_PREFERENCE.index(key_type)
    return len(HOST_KEY_PREFERENCE)


def _make_transport(sock, disabled_algorithms=None, **kwargs):
    # Without TCP_NODELAY every short request waits out a delayed ACK:
    # about 40 ms per command instead of about 10 ms.
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(
        sock, disabled_algorithms=disabled_algorithms, **kwargs
    )
    options = transport.get_security_options()
    available = set(options.ciphers)
    preferred = [name for name in PREFERRED_CIPHERS if name in available]
    rest = [name for name in options.ciphers if name not in preferred]
    options.ciphers = tuple(preferred + rest)
    return transport


class HostSession:
    """One verified SSH connection to a host, reused for every step."""

    def __init__(
        self,
        host: str,
        connection: fabric.Connection,
        command_timeout: float | None,
    ) -> None:
        self.host = host
        self.connection = connection
        self.command_timeout = command_timeout

    def __enter__(self) -> HostSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()

    @property
    def host_key(self) -> paramiko.PKey:
        """The server's host key, as verified against known-hosts."""
        return self.connection.transport.get_remote_server_key()

    def run(
        self,
        argv: Sequence[str],
        *,
        sudo: bool = False,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
        phase: str = "command",
    ) -> Result:
        """Run argv on the host; with ``sudo``, as root via ``sudo -n``.

        The command line is argv quoted word by word. With ``check``, a
        non-zero exit raises `HostError` with the output's last lines.
        """
        command = build_command(argv, sudo=sudo)
        if timeout is None:
            timeout = self.command_timeout
        channel = self._open_channel(command, phase)
        exit_code, stdout, stderr, _ = self._exchange(
            channel, command, phase, stdin, timeout
        )
        result = Result(
            exit_code,
            stdout.decode(errors="replace"),
            stderr.decode(errors="replace"),
        )
        if check and exit_code != 0:
            raise HostError(
                self.host, phase, describe_failure(command, result)
            )
        return result

    def put(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        sudo: bool = False,
        phase: str = "copy",
    ) -> None:
        """Copy a local file to remote_path, streamed into ``cat``."""
        local_path = Path(local_path)
        argv = ["sh", "-c", 'exec cat > "$1"', "sh", remote_path]
        command = build_command(argv, sudo=sudo)
        try:
            source = local_path.open("rb")
        except OSError as error:
            raise HostError(
                self.host,
                phase,
                f"cannot read {local_path} to copy it to {remote_path}: "
                f"{error.strerror}",
            ) from error

        with source:
            channel = self._open_channel(command, phase)
            exit_code, stdout, stderr, send_error = self._exchange(
                channel, command, phase, source, self.command_timeout
            )
        if send_error is not None:
            raise HostError(
                self.host,
                phase,
                f"sending {local_path} to {remote_path} broke off: "
                f"{describe_error(send_error)}. Check the free space on "
                "the host, then run the step again.",
            ) from send_error
        if exit_code != 0:
            result = Result(
                exit_code,
                stdout.decode(errors="replace"),
                stderr.decode(errors="replace"),
            )
            raise HostError(
                self.host,
                phase,
                f"copying {local_path} to {remote_path} failed: "
                + describe_failure(command, result),
            )

    def _open_channel(self, command: str, phase: str) -> paramiko.Channel:
        try:
            channel = self.connection.create_session()
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise HostError(
                self.host,
                phase,
                f"cannot start `{command}` over SSH: "
                f"{describe_error(error)}. The "
                "connection to the host was lost; rerun when it is "
                "reachable.",
            ) from error
        return channel

    def _exchange(
        self,
        channel: paramiko.Channel,
        command: str,
        phase: str,
        stdin: bytes | io.BufferedIOBase | None,
        timeout: float | None,
    ) -> tuple[int, bytes, bytes, BaseException | None]:
        """Feed stdin and collect output until the command exits.

        Also returns why sending stdin broke off, if it did: a command may
        exit without reading all of it.
        """
        writer = _StdinWriter(channel, stdin)
        writer.start()
        stdout, stderr = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        exited_at: float | None = None
        try:
            while True:
                while channel.recv_ready():
                    stdout += channel.recv(READ_CHUNK)
                while channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(READ_CHUNK)
                # sshd may report the exit status before the last output
                # has arrived: the command is done only once EOF is in
                # too, or, for a command that left a child holding its
                # output open, once a short grace has passed.
                if channel.exit_status_ready():
                    if channel.recv_ready() or channel.recv_stderr_ready():
                        continue
                    if channel.eof_received or channel.closed:
                        break
                    if exited_at is None:
                        exited_at = time.monotonic()
                    elif time.monotonic() - exited_at > EOF_GRACE_SECONDS:
                        break
                wait = 1.0 if exited_at is None else 0.02
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise HostError(
                            self.host,
                            phase,
                            f"`{command}` did not finish within {timeout:g} "
                            "s and was abandoned; check on the host what "
                            "it is waiting for.",
                        )
                if channel.eof_received:
                    # Both buffers are closed and always "readable" now;
                    # only the exit status is still to come.
                    channel.status_event.wait(wait)
                else:
                    select.select([channel], [], [], wait)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise HostError(
                self.host,
                phase,
                f"the SSH connection failed while `{command}` ran: "
                f"{describe_error(error)}; rerun when the host is reachable.",
            ) from error
        finally:
            channel.close()
            writer.join()
        exit_code = channel.recv_exit_status()
        return exit_code, bytes(stdout), bytes(stderr), writer.error


class _StdinWriter(threading.Thread):
    """Stream a command's stdin while its output is being read."""

    def __init__(
        self,
        channel: paramiko.Channel,
        source: bytes | io.BufferedIOBase | None,
    ) -> None:
        super().__init__(daemon=True)
        self._channel = channel
        self._source = source
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if isinstance(self._source, bytes):
                self._channel.sendall(self._source)
            elif self._source is not None:
                while chunk := self._source.read(COPY_CHUNK):
                    self._channel.sendall(chunk)
            self._channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as error:
            # Closing the channel on exit or timeout ends a send midway.
            self.error = error


def build_command(argv: Sequence[str], *, sudo: bool = False) -> str:
    """Quote argv into one shell command line, with ``sudo -n --``."""
    if not argv:
        raise ValueError("a remote command needs at least one word")
    words = ["sudo", "-n", "--", *argv] if sudo else list(argv)
    return shlex.join(words)


def describe_failure(command: str, result: Result) -> str:
    """Say which command failed, how, and the last lines it printed."""
    lines = [f"`{command}` exited {result.exit_code}."]
    if result.exit_code == -1:
        lines[0] += " (no exit status: killed by a signal or disconnected)"
    for name, text in (("stderr", result.stderr), ("stdout", result.stdout)):
        tail = text.rstrip("\n").splitlines()[-TAIL_LINES:]
        if tail:
            lines.append(f"Last lines of {name}:")
            lines.extend(f"    {line}" for line in tail)
    if len(lines) == 1:
        lines.append("It printed nothing.")
    lines.append("Fix the cause on the host, then run the step again.")
    return "\n".join(lines)
