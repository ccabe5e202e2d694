"""inforge_action.ssh against real sshd hosts (see tests/support/hosts.py)."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from inforge_action import ssh
from inforge_action.errors import HostError, HostKeyError, InputError
from tests.support.hosts import ClientKey, TestHost, generate_client_key


pytestmark = pytest.mark.hosts

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def client_keys(tmp_path_factory) -> dict[str, ClientKey]:
    directory = tmp_path_factory.mktemp("client-keys")
    return {
        "ed25519": generate_client_key(directory, "ed25519"),
        "rsa-pem": generate_client_key(directory, "rsa", pem=True),
        "rsa-openssh": generate_client_key(directory, "rsa"),
        "ecdsa": generate_client_key(directory, "ecdsa"),
        "ecdsa-pem": generate_client_key(directory, "ecdsa", pem=True),
        "encrypted": generate_client_key(
            directory, "ed25519", passphrase=PASSPHRASE
        ),
        "encrypted-rsa-pem": generate_client_key(
            directory, "rsa", passphrase=PASSPHRASE, pem=True
        ),
    }


@pytest.fixture(scope="module")
def host(module_host_factory, client_keys) -> TestHost:
    (booted,) = module_host_factory(1, client_keys=list(client_keys.values()))
    return booted


@pytest.fixture(scope="module")
def stranger_key(tmp_path_factory) -> ClientKey:
    """An ed25519 key that no host trusts and no host has."""
    return generate_client_key(tmp_path_factory.mktemp("stranger"))


@pytest.fixture
def ssh_log(caplog) -> Iterator[pytest.LogCaptureFixture]:
    """Capture inforge_action.ssh warnings at their logger."""
    # cli.main points the package logger at a reporter and stops its
    # propagation, so the root handler of caplog may never see them.
    logger = logging.getLogger("inforge_action.ssh")
    caplog.set_level(logging.WARNING, logger=logger.name)
    propagate = logger.propagate
    logger.propagate = False
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.propagate = propagate


def open_session(host: TestHost, **overrides) -> ssh.HostSession:
    options = {
        "user": "deploy",
        "pkey": ssh.load_private_key(host.client_key_text, None),
        "known_hosts": host.known_hosts_line(),
    }
    options.update(overrides)
    return ssh.connect(host.address, **options)


def keygen_fingerprint(public_line: str) -> str:
    """The fingerprint as OpenSSH's own ssh-keygen prints it."""
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"],
        input=public_line + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()[1]


def accepted_logins(host: TestHost) -> int:
    journal = host.run_root(["journalctl", "-u", "ssh", "--no-pager", "-q"])
    return journal.stdout.count("Accepted publickey for deploy")


def test_runs_as_deploy_and_as_root_with_sudo(host):
    with open_session(host) as session:
        plain = session.run(["id", "-un"])
        elevated = session.run(["id", "-un"], sudo=True)

    assert plain == ssh.Result(0, "deploy\n", "")
    assert elevated == ssh.Result(0, "root\n", "")


@pytest.mark.parametrize(
    "argument",
    [
        pytest.param("two words", id="spaces"),
        pytest.param('it\'s "quoted" \\ back', id="quotes"),
        pytest.param("$(touch /tmp/pwned)", id="command-substitution"),
        pytest.param("`touch /tmp/pwned`", id="backticks"),
        pytest.param("x; touch /tmp/pwned", id="semicolon"),
        pytest.param("$HOME *", id="expansion-and-glob"),
        pytest.param("line\nbreak", id="newline"),
        pytest.param("", id="empty"),
        pytest.param("-n", id="dash"),
    ],
)
@pytest.mark.parametrize("sudo", [False, True], ids=["deploy", "sudo"])
def test_arguments_arrive_verbatim(host, argument, sudo):
    with open_session(host) as session:
        result = session.run(["printf", "%s|", argument, "end"], sudo=sudo)

    assert result.stdout == f"{argument}|end|"
    assert host.run_root(["test", "-e", "/tmp/pwned"], check=False).returncode
    assert result.exit_code == 0


def test_stdin_bytes_reach_the_command(host):
    payload = os.urandom(3 << 20) + b"\x00\r\n\xff"

    with open_session(host) as session:
        result = session.run(["sha256sum"], stdin=payload)

    assert result.stdout.split()[0] == hashlib.sha256(payload).hexdigest()


def test_wrong_host_key_is_refused_before_anything_runs(host, stranger_key):
    logins_before = accepted_logins(host)
    impostor = f"{host.address} {stranger_key.public_line}\n"
    offered = keygen_fingerprint(host.host_public_keys["ed25519"])

    with pytest.raises(HostKeyError) as caught:
        open_session(host, known_hosts=impostor)

    message = str(caught.value)
    assert caught.value.host == host.address
    assert host.address in message
    assert offered in message
    assert keygen_fingerprint(stranger_key.public_line) in message
    assert "ssh-keyscan" in message
    assert accepted_logins(host) == logins_before


def test_changed_key_is_refused_even_with_accept_new(host, stranger_key):
    impostor = f"{host.address} {stranger_key.public_line}\n"

    with pytest.raises(HostKeyError):
        open_session(host, known_hosts=impostor, accept_new=True)


def test_unknown_host_is_refused_and_named(host):
    offered = keygen_fingerprint(host.host_public_keys["ed25519"])

    with pytest.raises(HostKeyError) as caught:
        open_session(host, known_hosts="# nothing pinned yet\n")

    message = str(caught.value)
    assert host.address in message
    assert f"ssh-ed25519 host key {offered}" in message
    assert f"ssh-keyscan -t ed25519 -p 22 {host.address}" in message


def test_accept_new_takes_an_unknown_key_and_warns(host, ssh_log):
    offered = keygen_fingerprint(host.host_public_keys["ed25519"])

    with open_session(host, known_hosts="", accept_new=True) as session:
        result = session.run(["true"])
        host_key = session.host_key

    assert result.exit_code == 0
    assert ssh.fingerprint(host_key) == offered
    warnings = [r for r in ssh_log.records if r.name == "inforge_action.ssh"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert offered in warnings[0].getMessage()
    assert host.address in warnings[0].getMessage()


def test_host_key_is_the_verified_server_key(host):
    with open_session(host) as session:
        host_key = session.host_key

    line = f"{host_key.get_name()} {host_key.get_base64()}"
    assert line == host.host_public_keys["ed25519"]


def test_an_rsa_only_entry_is_enough(host):
    with open_session(host, known_hosts=host.known_hosts_line("rsa")) as s:
        host_key = s.host_key

    assert host_key.get_name() == "ssh-rsa"


def test_hashed_known_hosts_entries_match(host, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(host.known_hosts_line())
    subprocess.run(
        ["ssh-keygen", "-H", "-f", str(known_hosts)],
        check=True,
        capture_output=True,
    )
    hashed = known_hosts.read_text()

    with open_session(host, known_hosts=hashed) as session:
        result = session.run(["true"])

    assert hashed.startswith("|1|")
    assert host.address not in hashed
    assert result.exit_code == 0


def test_known_hosts_with_ports_markers_and_junk_parse(host, stranger_key):
    text = "\n".join(
        [
            "# pinned by hand",
            "",
            f"[{host.address}]:2222 {stranger_key.public_line}",
            f"@cert-authority *.example.net {stranger_key.public_line}",
            f"@revoked {host.address} {stranger_key.public_line}",
            "garbage",
            f"{host.address} ssh-ed25519 !!!not-base64!!!",
            f"*.wild.example {stranger_key.public_line}",
            f"  {host.known_hosts_line('ed25519').strip()}  # trailing",
            "",
        ]
    )

    parsed = ssh.parse_known_hosts(text)
    with open_session(host, known_hosts=parsed) as session:
        result = session.run(["true"])

    assert parsed.lookup(f"[{host.address}]:2222") is not None
    assert parsed.lookup("*.wild.example") is None
    assert result.exit_code == 0


def test_runner_home_and_agent_change_nothing(host, tmp_path, monkeypatch):
    dot_ssh = tmp_path / ".ssh"
    dot_ssh.mkdir()
    (dot_ssh / "config").write_text(
        "Host *\n  HostName 127.0.0.1\n  Port 1\n  User nobody\n"
    )
    (dot_ssh / "known_hosts").write_text(f"{host.address} ssh-ed25519 AAAA\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "no-agent"))

    with open_session(host) as session:
        result = session.run(["id", "-un"])

    assert result.stdout == "deploy\n"


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda text: text.replace("\n", "\r\n"), id="crlf"),
        pytest.param(lambda text: text.replace("\n", "\\n"), id="literal-n"),
        pytest.param(
            lambda text: text.replace("\n", "\\r\\n"), id="literal-crlf"
        ),
        pytest.param(
            lambda text: "\n  " + text.replace("\n", "  \n") + "\n\n",
            id="padded",
        ),
    ],
)
def test_pasted_key_is_normalized(host, mangle):
    pkey = ssh.load_private_key(mangle(host.client_key_text), None)

    with open_session(host, pkey=pkey) as session:
        result = session.run(["id", "-un"])

    assert result.stdout == "deploy\n"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("rsa-pem", id="rsa-pem"),
        pytest.param("rsa-openssh", id="rsa-openssh"),
        pytest.param("ecdsa", id="ecdsa-openssh"),
        pytest.param("ecdsa-pem", id="ecdsa-pem"),
        pytest.param("encrypted", id="encrypted-ed25519"),
        pytest.param("encrypted-rsa-pem", id="encrypted-rsa-pem"),
    ],
)
def test_client_key_types_log_in(host, client_keys, name):
    key = client_keys[name]
    pkey = ssh.load_private_key(key.private_text, key.passphrase)

    with open_session(host, pkey=pkey) as session:
        result = session.run(["id", "-un"])

    assert result.stdout == "deploy\n"
    assert pkey.get_name().startswith(("ssh-", "ecdsa-"))


@pytest.mark.parametrize(
    ("name", "passphrase", "named_input"),
    [
        pytest.param(
            "encrypted", None, "ssh-key-passphrase", id="openssh-missing"
        ),
        pytest.param(
            "encrypted", "wrong", "ssh-key-passphrase", id="openssh-wrong"
        ),
        pytest.param(
            "encrypted-rsa-pem", None, "ssh-key-passphrase", id="pem-missing"
        ),
        pytest.param(
            "encrypted-rsa-pem", "wrong", "ssh-key-passphrase", id="pem-wrong"
        ),
    ],
)
def test_passphrase_problems_name_the_input(
    client_keys, name, passphrase, named_input
):
    key = client_keys[name]

    with pytest.raises(InputError) as caught:
        ssh.load_private_key(key.private_text, passphrase)

    message = str(caught.value)
    assert named_input in message
    assert PASSPHRASE not in message
    body = key.private_text.splitlines()[1:-1]
    assert not any(line in message for line in body if len(line) > 8)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("not a key at all", id="prose"),
        pytest.param(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n"
            "-----END OPENSSH PRIVATE KEY-----\n",
            id="truncated-openssh",
        ),
        pytest.param(
            "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LW1hdGVyaWFs\n"
            "-----END RSA PRIVATE KEY-----\n",
            id="broken-pem",
        ),
    ],
)
def test_unreadable_key_names_the_input_without_echoing(text):
    with pytest.raises(InputError) as caught:
        ssh.load_private_key(text, None)

    assert "ssh-private-key" in str(caught.value)
    assert "c2VjcmV0LW1hdGVyaWFs" not in str(caught.value)


def test_a_key_the_host_does_not_accept_fails_without_retry(
    host, stranger_key, ssh_log
):
    pkey = ssh.load_private_key(stranger_key.private_text, None)

    with pytest.raises(HostError) as caught:
        open_session(host, pkey=pkey)

    assert caught.value.phase == "connect"
    assert "authorized_keys" in str(caught.value)
    assert ssh.fingerprint(pkey) in str(caught.value)
    assert not ssh_log.records


def test_failed_command_carries_exit_code_and_output_tail(host):
    script = "for i in $(seq 1 30); do echo err$i >&2; done; echo out; exit 7"

    with open_session(host) as session:
        with pytest.raises(HostError) as caught:
            session.run(["sh", "-c", script], phase="restart")

    error = caught.value
    lines = str(error).splitlines()
    assert (error.host, error.phase) == (host.address, "restart")
    assert "exited 7" in lines[0]
    assert "sh -c" in lines[0]
    assert "    err30" in lines
    assert "    err11" in lines
    assert "    err10" not in lines
    assert "    out" in lines


def test_check_false_returns_the_failure(host):
    with open_session(host) as session:
        result = session.run(["sh", "-c", "echo no >&2; exit 3"], check=False)

    assert result == ssh.Result(3, "", "no\n")


def test_a_command_over_its_timeout_is_abandoned(host):
    with open_session(host) as session:
        with pytest.raises(HostError) as caught:
            session.run(["sleep", "30"], timeout=0.5)
        after = session.run(["echo", "still usable"])

    assert "did not finish within 0.5 s" in str(caught.value)
    assert after.stdout == "still usable\n"


def test_refused_connection_is_retried_then_fails(
    idle_address, stranger_key, ssh_log
):
    pkey = ssh.load_private_key(stranger_key.private_text, None)

    with pytest.raises(HostError) as caught:
        ssh.connect(
            idle_address,
            user="deploy",
            pkey=pkey,
            known_hosts="",
            attempts=3,
            retry_delay=0.05,
        )

    retries = [r for r in ssh_log.records if "connect attempt" in r.message]
    assert caught.value.phase == "connect"
    assert f"{idle_address}:22 after 3 attempts" in str(caught.value)
    assert len(retries) == 2


@pytest.mark.parametrize(
    ("size", "sudo", "remote_path"),
    [
        pytest.param(5 << 20, False, "/tmp/put.bin", id="deploy"),
        pytest.param(
            (1 << 20) + 7, True, "/srv/wardnet/put.bin", id="sudo-root-dir"
        ),
        pytest.param(0, False, "/tmp/empty.bin", id="empty"),
    ],
)
def test_put_round_trips_bytes(host, tmp_path, size, sudo, remote_path):
    local = tmp_path / "payload.bin"
    local.write_bytes(os.urandom(size))

    with open_session(host) as session:
        session.put(local, remote_path, sudo=sudo)
        remote = session.run(["sha256sum", remote_path], sudo=sudo)

    local_digest = hashlib.sha256(local.read_bytes()).hexdigest()
    assert remote.stdout.split()[0] == local_digest


def test_put_into_a_forbidden_path_fails_clearly(host, tmp_path):
    local = tmp_path / "payload.bin"
    local.write_bytes(b"x")

    with open_session(host) as session:
        with pytest.raises(HostError) as caught:
            session.put(local, "/srv/wardnet/no-sudo.bin")

    assert caught.value.phase == "copy"
    assert "Permission denied" in str(caught.value)


def test_put_of_a_missing_file_names_it(host, tmp_path):
    missing = Path(tmp_path / "absent.bin")

    with open_session(host) as session:
        with pytest.raises(HostError) as caught:
            session.put(missing, "/tmp/absent.bin")

    assert str(missing) in str(caught.value)


def test_ecdsa_only_host_offers_ecdsa(module_host_factory, host):
    (ecdsa_host,) = module_host_factory(1, host_key_types=("ecdsa",))
    borrowed = host.known_hosts_line("ed25519").split(" ", 1)[1]
    mismatched = f"{ecdsa_host.address} {borrowed}"
    offered = keygen_fingerprint(ecdsa_host.host_public_keys["ecdsa"])

    with pytest.raises(HostKeyError) as caught:
        open_session(ecdsa_host, known_hosts=mismatched)
    with open_session(ecdsa_host) as session:
        host_key = session.host_key

    assert "ecdsa-sha2-nistp256" in str(caught.value)
    assert offered in str(caught.value)
    assert host_key.get_name() == "ecdsa-sha2-nistp256"


def test_no_output_is_lost_when_the_exit_status_comes_first(host):
    # sshd may send the exit status before the last stderr bytes; before
    # the fix about one run in twenty lost the tail.
    script = "for i in $(seq 1 30); do echo err$i >&2; done; echo out; exit 7"

    with open_session(host) as session:
        results = [
            session.run(["sh", "-c", script], check=False) for _ in range(150)
        ]

    short = [r for r in results if not r.stderr.endswith("err30\n")]
    assert short == []
    assert {(r.exit_code, r.stdout) for r in results} == {(7, "out\n")}
