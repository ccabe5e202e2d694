"""The test hosts themselves: SSH, sudo, identity and wardnet units."""

from __future__ import annotations

import time

import pyrage
import pytest

from tests.support.hosts import TestHost


pytestmark = pytest.mark.hosts

# The proof appears whole (mv), so a reader never sees it half written.
RUN_SCRIPT = """#!/bin/sh
{ id -un; pwd; } > /tmp/{service}.partial
mv /tmp/{service}.partial /tmp/{service}.proof
exec sleep infinity
"""


@pytest.fixture(scope="module")
def three_hosts(module_host_factory) -> list[TestHost]:
    return module_host_factory(3)


def wait_for_file(host: TestHost, path: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        probe = host.run_root(["cat", "--", path], check=False)
        if probe.returncode == 0 or time.monotonic() > deadline:
            return probe.stdout
        time.sleep(0.2)


def test_each_host_lets_deploy_in_with_the_client_key(three_hosts):
    results = [host.ssh(["id", "-un"]) for host in three_hosts]

    assert [r.returncode for r in results] == [0, 0, 0], results
    assert [r.stdout.strip() for r in results] == ["deploy"] * 3


def test_deploy_has_password_less_sudo(three_hosts):
    results = [host.ssh(["sudo", "-n", "id", "-un"]) for host in three_hosts]

    assert [r.stdout.strip() for r in results] == ["root"] * 3, results


def test_hosts_have_their_own_address_and_hostname(three_hosts):
    hostnames = [host.ssh(["hostname"]).stdout.strip() for host in three_hosts]

    assert len({host.address for host in three_hosts}) == 3
    assert hostnames == [host.name for host in three_hosts]
    assert len(set(hostnames)) == 3


def test_sshd_listens_only_on_the_host_address(three_hosts):
    host = three_hosts[0]

    effective = host.run_root(["sshd", "-T"]).stdout.splitlines()

    listen = [line for line in effective if line.startswith("listenaddress")]
    assert listen == [f"listenaddress {host.address}:22"]
    assert "passwordauthentication no" in effective
    assert "permitrootlogin no" in effective


def test_root_helpers_reach_inside_the_container(three_hosts):
    host = three_hosts[0]

    host.write_file("/tmp/marker", "inside\n")

    assert host.read_file("/tmp/marker") == "inside\n"
    assert host.run_root(["id", "-u"]).stdout.strip() == "0"
    assert host.run_root(["hostname"]).stdout.strip() == host.name


def test_unit_is_enabled_and_skipped_while_run_is_absent(three_hosts):
    host = three_hosts[1]

    host.install_unit("api", "api")

    unit = "wardnet-api.service"
    enabled = host.run_root(["systemctl", "is-enabled", unit])
    state = host.run_root(
        ["systemctl", "show", "--property=ActiveState,ConditionResult", unit]
    )
    folder = host.run_root(["stat", "-c", "%U %a", "/srv/wardnet/api"])
    assert enabled.stdout.strip() == "enabled"
    assert sorted(state.stdout.split()) == [
        "ActiveState=inactive",
        "ConditionResult=no",
    ]
    assert folder.stdout == "root 755\n"


def test_installed_unit_has_the_contract_shape(three_hosts):
    host = three_hosts[1]

    host.install_unit("web", "web")

    unit = host.read_file("/etc/systemd/system/wardnet-web.service")
    for line in (
        "ExecStart=/usr/local/bin/inforge-bootstrap /etc/wardnet/services/web",
        "WorkingDirectory=/srv/wardnet/web",
        "ConditionPathExists=/srv/wardnet/web/run",
        "Restart=always",
        "RestartSec=5",
        "StartLimitIntervalSec=0",
        "RuntimeDirectory=wardnet/web",
        "WantedBy=multi-user.target",
    ):
        assert line in unit.splitlines()


@pytest.mark.parametrize(
    ("service", "user", "expected_user"),
    [
        pytest.param("worker", "worker", "worker", id="run-as-user"),
        pytest.param("rootsvc", None, "root", id="no-user-runs-as-root"),
    ],
)
def test_unit_runs_run_as_its_user_after_restart(
    three_hosts, service, user, expected_user
):
    host = three_hosts[2]
    host.install_unit(service, user)
    folder = f"/srv/wardnet/{service}"
    host.write_file(
        f"{folder}/run", RUN_SCRIPT.replace("{service}", service), mode="0755"
    )

    host.run_root(["systemctl", "restart", f"wardnet-{service}.service"])

    proof = wait_for_file(host, f"/tmp/{service}.proof")
    active = host.run_root(
        ["systemctl", "is-active", f"wardnet-{service}.service"], check=False
    )
    main_pid = host.run_root(
        ["systemctl", "show", "--value", "--property=MainPID"]
        + [f"wardnet-{service}.service"]
    ).stdout.strip()
    owner = host.run_root(["stat", "-c", "%U", f"/proc/{main_pid}"])
    assert proof.splitlines() == [expected_user, folder]
    assert active.stdout.strip() == "active"
    assert owner.stdout.strip() == expected_user


@pytest.mark.parametrize(
    ("host_key_types", "kind"),
    [
        pytest.param(("ed25519", "rsa"), "ed25519", id="ed25519"),
        pytest.param(("rsa",), "rsa", id="rsa-only"),
    ],
)
def test_host_decrypts_age_sent_to_its_ssh_host_key(
    host_factory, host_key_types, kind
):
    (host,) = host_factory(1, host_key_types=host_key_types)
    recipient = pyrage.ssh.Recipient.from_str(host.host_public_keys[kind])
    secret = b"token=s3cr3t\n"
    host.write_file("/tmp/credential.age", pyrage.encrypt(secret, [recipient]))

    decrypted = host.run_root(
        ["age", "-d", "-i", f"/etc/ssh/ssh_host_{kind}_key"]
        + ["/tmp/credential.age"],
        text=False,
    )

    assert decrypted.stdout == secret


def test_ecdsa_only_host_has_only_an_ecdsa_key(host_factory):
    (host,) = host_factory(1, host_key_types=("ecdsa",))

    keys = host.run_root(["sh", "-c", "ls /etc/ssh/ssh_host_*_key"])

    assert list(host.host_public_keys) == ["ecdsa"]
    assert keys.stdout.split() == ["/etc/ssh/ssh_host_ecdsa_key"]
