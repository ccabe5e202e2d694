"""provision end to end, on real systemd hosts over real SSH.

The hosts are booted bare: provisioning alone gives them the folder, the
unit, the descriptor and the credential that a deploy then relies on.
"""

import secrets

import pytest
import yaml

from inforge_action.provision import render_unit
from inforge_action.report import REDACTED
from tests.support.world import (
    host_inputs,
    make_world,
    publish_stack,
    target_for,
)


pytestmark = pytest.mark.hosts


@pytest.fixture(scope="module")
def hosts(module_host_factory):
    return module_host_factory(2)


@pytest.fixture(scope="module")
def ecdsa_host(module_host_factory):
    (host,) = module_host_factory(1, host_key_types=("ecdsa",))
    return host


@pytest.fixture
def service(request):
    """A fresh service name per test, so tests share hosts, not state."""
    return f"prov{abs(hash(request.node.name)) % 10**6}"


@pytest.fixture
def credential():
    return f"cred-{secrets.token_hex(16)}"


def paths(service: str) -> dict[str, str]:
    directory = f"/etc/wardnet/services/{service}"
    return {
        "unit": f"/etc/systemd/system/wardnet-{service}.service",
        "descriptor": f"{directory}/descriptor.yaml",
        "credential": f"{directory}/credential.age",
    }


def provision_world(tmp_path, s3_server, hosts, service, user="api"):
    world = make_world(tmp_path, s3_server, service=service)
    targets = [target_for(h, service, user=user) for h in hosts]
    publish_stack(world, "prd", targets)
    return world


def provision(world, hosts, credential, **inputs):
    """Run provision; whatever happens, the credential is never printed."""
    ssh = {**host_inputs(hosts), **inputs}
    result = world.run(
        "provision", environment="prd", credential=credential, **ssh
    )
    printed = result.log + result.summary + str(result.outputs)
    assert credential not in printed
    assert REDACTED not in printed, "a secret reached the output"
    return result


def systemctl(host, *argv) -> str:
    done = host.run_root(["systemctl", *argv], check=False)
    return done.stdout.strip()


def stat(host, path) -> str:
    return host.run_root(["stat", "-c", "%U %a", path]).stdout.strip()


def test_provision_makes_an_enabled_unit_that_waits_for_a_payload(
    tmp_path, s3_server, hosts, service, credential
):
    world = provision_world(tmp_path, s3_server, hosts, service)
    unit = f"wardnet-{service}.service"
    files = paths(service)

    result = provision(world, hosts, credential)

    assert result.code == 0, result.log
    assert result.outputs["result"] == "success"
    outputs = result.json("hosts")
    assert [h["result"] for h in outputs] == ["created"] * 2
    assert files["descriptor"] in outputs[0]["changed"]
    for host in hosts:
        folder = f"/srv/wardnet/{service}"
        assert host.read_file(files["unit"]) == render_unit(service, folder)
        assert systemctl(host, "is-enabled", unit) == "enabled"
        assert stat(host, f"/srv/wardnet/.releases/{service}") == "root 755"
        assert stat(host, files["credential"]) == "root 600"
        descriptor = yaml.safe_load(host.read_file(files["descriptor"]))
        assert descriptor == {
            "version": 1,
            "service": service,
            "environment": "prd",
            "host": host.address,
            "scope": "test",
            "folder": folder,
            "unit": unit,
            "user": "api",
        }
        # What a boot does: start it, and see it skipped, not failed.
        host.run_root(["systemctl", "start", unit])
        assert systemctl(host, "show", "-p", "ConditionResult", "--value",
                         unit) == "no"  # fmt: skip
        assert systemctl(host, "is-active", unit) == "inactive"


def test_a_deploy_after_provisioning_runs_the_service(
    tmp_path, s3_server, hosts, service, credential
):
    world = provision_world(tmp_path, s3_server, hosts, service)
    assert provision(world, hosts, credential).code == 0
    world.write_payload("7777aaa")
    assert world.run("push", sha="7777aaa").code == 0

    result = world.run(
        "deploy", environment="prd", sha="7777aaa", **host_inputs(hosts)
    )

    assert result.code == 0, result.log
    for host in hosts:
        assert host.read_file(f"/tmp/{service}.sha").strip() == "7777aaa"
        whoami = host.read_file(f"/tmp/{service}.whoami").split()
        assert whoami[1] == "api"


@pytest.mark.parametrize(
    ("pinned", "used"),
    [
        pytest.param(("ed25519", "rsa"), "ed25519", id="ed25519"),
        pytest.param(("rsa", "ed25519"), "ed25519", id="ed25519-listed-2nd"),
        pytest.param(("rsa",), "rsa", id="only-rsa-pinned"),
    ],
)
def test_the_host_decrypts_its_credential_with_its_own_host_key(
    tmp_path, s3_server, hosts, service, credential, pinned, used
):
    world = provision_world(tmp_path, s3_server, hosts, service)
    known_hosts = "".join(h.known_hosts_line(k) for h in hosts for k in pinned)

    result = provision(world, hosts, credential, known_hosts=known_hosts)

    assert result.code == 0, result.log
    assert f"credential.age due (for ssh-{used}, sha256:" in result.log
    for host in hosts:
        decrypted = host.run_root(
            ["age", "-d", "-i", f"/etc/ssh/ssh_host_{used}_key",
             paths(service)["credential"]]
        )  # fmt: skip
        assert decrypted.stdout == credential


def test_a_second_provision_changes_nothing(
    tmp_path, s3_server, hosts, service, credential
):
    world = provision_world(tmp_path, s3_server, hosts, service)
    assert provision(world, hosts, credential).code == 0
    sealed = [h.read_bytes(paths(service)["credential"]) for h in hosts]

    result = provision(world, hosts, credential)

    assert result.code == 0, result.log
    assert result.json("hosts") == [
        {"host": h.address, "result": "unchanged", "changed": [], "unit": []}
        for h in sorted(hosts, key=lambda h: h.address)
    ]
    assert [h.read_bytes(paths(service)["credential"]) for h in hosts] == (
        sealed
    )


def test_a_changed_user_rewrites_only_the_descriptor(
    tmp_path, s3_server, hosts, service, credential
):
    world = provision_world(tmp_path, s3_server, hosts, service)
    assert provision(world, hosts, credential).code == 0
    sealed = hosts[0].read_bytes(paths(service)["credential"])
    publish_stack(world, "prd", [target_for(h, service, "web") for h in hosts])

    result = provision(world, hosts, credential)

    assert result.code == 0, result.log
    for entry in result.json("hosts"):
        assert entry["result"] == "changed"
        assert entry["changed"] == [paths(service)["descriptor"]]
    descriptor = hosts[0].read_file(paths(service)["descriptor"])
    assert "user: web\n" in descriptor
    assert hosts[0].read_bytes(paths(service)["credential"]) == sealed


def test_a_new_credential_rewrites_only_credential_age(
    tmp_path, s3_server, hosts, service, credential
):
    world = provision_world(tmp_path, s3_server, hosts, service)
    assert provision(world, hosts, credential).code == 0
    rotated = f"rotated-{secrets.token_hex(16)}"

    result = provision(world, hosts, rotated)

    assert result.code == 0, result.log
    for entry in result.json("hosts"):
        assert entry["changed"] == [paths(service)["credential"]]
    decrypted = hosts[0].run_root(
        ["age", "-d", "-i", "/etc/ssh/ssh_host_ed25519_key",
         paths(service)["credential"]]
    )  # fmt: skip
    assert decrypted.stdout == rotated


def test_a_dry_run_shows_the_diff_and_changes_nothing(
    tmp_path, s3_server, hosts, service, credential
):
    world = provision_world(tmp_path, s3_server, hosts, service)
    assert provision(world, hosts, credential).code == 0
    publish_stack(world, "prd", [target_for(h, service, "web") for h in hosts])
    rotated = f"rotated-{secrets.token_hex(16)}"
    before = hosts[0].read_file(paths(service)["descriptor"])

    result = provision(world, hosts, rotated, dry_run="true")

    assert result.code == 0, result.log
    assert result.outputs["result"] == "dry-run"
    assert "-user: api" in result.log and "+user: web" in result.log
    assert "would write credential.age" in result.log
    assert {h["result"] for h in result.json("hosts")} == {"would change"}
    assert hosts[0].read_file(paths(service)["descriptor"]) == before


def test_a_dry_run_on_a_bare_host_creates_nothing(
    tmp_path, s3_server, hosts, service, credential
):
    world = provision_world(tmp_path, s3_server, hosts, service)

    result = provision(world, hosts, credential, dry_run="true")

    assert result.code == 0, result.log
    assert "+ExecStart=/usr/local/bin/inforge-bootstrap" in result.log
    assert f"would create /srv/wardnet/.releases/{service}/" in result.log
    for host in hosts:
        releases = f"/srv/wardnet/.releases/{service}"
        for path in (*paths(service).values(), releases):
            done = host.run_root(["test", "-e", path], check=False)
            assert done.returncode != 0, f"{path} exists on {host}"


def test_an_ecdsa_only_host_is_refused_with_the_key_types_named(
    tmp_path, s3_server, ecdsa_host, service, credential
):
    world = provision_world(tmp_path, s3_server, [ecdsa_host], service)

    result = provision(world, [ecdsa_host], credential)

    assert result.code == 1
    assert "presented ecdsa-sha2-nistp256" in result.log
    assert "ssh-ed25519" in result.log and "ssh-rsa" in result.log
    assert "no host was changed" in result.log
    done = ecdsa_host.run_root(
        ["test", "-e", paths(service)["unit"]], check=False
    )
    assert done.returncode != 0


def test_an_ecdsa_only_host_is_provisioned_without_a_credential(
    tmp_path, s3_server, ecdsa_host, service
):
    world = provision_world(tmp_path, s3_server, [ecdsa_host], service)

    result = world.run(
        "provision", environment="prd", **host_inputs([ecdsa_host])
    )

    assert result.code == 0, result.log
    assert [h["result"] for h in result.json("hosts")] == ["created"]
    done = ecdsa_host.run_root(
        ["test", "-e", paths(service)["credential"]], check=False
    )
    assert done.returncode != 0


def test_a_host_key_accepted_as_new_gets_no_credential(
    tmp_path, s3_server, hosts, service, credential
):
    world = provision_world(tmp_path, s3_server, hosts[:1], service)

    result = provision(
        world, hosts[:1], credential, known_hosts="",
        host_key_policy="accept-new",
    )  # fmt: skip

    assert result.code == 1
    assert "not pinned in known-hosts" in result.log
    done = hosts[0].run_root(
        ["test", "-e", paths(service)["unit"]], check=False
    )
    assert done.returncode != 0
