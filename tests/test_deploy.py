"""deploy and rollback end to end, on real systemd hosts over real SSH."""

import signal
import subprocess
import sys
import threading

import pytest

from inforge_action.manifest import load_manifest
from tests.support.gitrepo import git
from tests.support.world import (
    CRASHING_RUN,
    HTTP_RUN,
    host_inputs,
    make_world,
    publish_stack,
    target_for,
)


pytestmark = pytest.mark.hosts


@pytest.fixture(scope="module")
def hosts(module_host_factory):
    return module_host_factory(3)


@pytest.fixture
def service(request, hosts):
    """A fresh service on every host, so tests share hosts, not state."""
    name = f"svc{abs(hash(request.node.name)) % 10**6}"
    for host in hosts:
        host.install_unit(name, "api")
    yield name
    # Hosts outlive the test: stop what it started, so no later test
    # finds this service still answering on the host's address.
    for host in hosts:
        host.run_root(
            ["systemctl", "disable", "--now", f"wardnet-{name}.service"],
            check=False,
        )


def deploy_world(tmp_path, s3_server, hosts, service):
    world = make_world(tmp_path, s3_server, service=service)
    publish_stack(world, "prd", [target_for(h, service) for h in hosts])
    return world


def running_sha(host, service) -> str:
    done = host.run_root(["cat", f"/tmp/{service}.sha"], check=False)
    return done.stdout.strip()


def unit_state(host, service) -> str:
    done = host.run_root(
        ["systemctl", "is-active", f"wardnet-{service}.service"], check=False
    )
    return done.stdout.strip()


def stored_manifest(world):
    client = world.s3_server.client()
    body = client.get_object(
        Bucket=world.bucket, Key=f"{world.service}/manifest.prd.yaml"
    )["Body"].read()
    return load_manifest(body.decode())


def push(world, sha, script=None):
    if script:
        world.write_payload(sha, script)
    else:
        world.write_payload(sha)
    result = world.run("push", sha=sha)
    assert result.code == 0, result.log


def test_deploy_runs_the_new_code_on_every_host(
    tmp_path, s3_server, hosts, service
):
    world = deploy_world(tmp_path, s3_server, hosts, service)
    push(world, "1111aaa")

    result = world.run(
        "deploy", environment="prd", sha="1111aaa", **host_inputs(hosts)
    )

    assert result.code == 0, result.log
    assert result.outputs["result"] == "success"
    assert [h["result"] for h in result.json("hosts")] == ["deployed"] * 3
    for host in hosts:
        assert running_sha(host, service) == "1111aaa"
        whoami = host.read_file(f"/tmp/{service}.whoami").split()
        assert whoami[1] == "api"
        assert whoami[2] == f"/srv/wardnet/.releases/{service}/1111aaa"
    manifest = stored_manifest(world)
    assert {h.address for h in hosts} == set(manifest.deployments)
    assert {e.sha for e in manifest.deployments.values()} == {"1111aaa"}


def test_rollback_to_a_release_still_on_the_hosts_copies_nothing(
    tmp_path, s3_server, hosts, service
):
    world = deploy_world(tmp_path, s3_server, hosts, service)
    ssh = host_inputs(hosts)
    for sha in ("2222aaa", "2222bbb"):
        push(world, sha)
        deployed = world.run("deploy", environment="prd", sha=sha, **ssh)
        assert deployed.code == 0, deployed.log
    # Gone from the store: only the copy on the hosts can serve it now.
    world.s3_server.client().delete_object(
        Bucket=world.bucket, Key=f"{service}/2222aaa.tar.gz"
    )

    result = world.run("rollback", environment="prd", **ssh)

    assert result.code == 0, result.log
    assert "Download" not in result.log
    assert [h["previous"] for h in result.json("hosts")] == ["2222bbb"] * 3
    assert [h["sha"] for h in result.json("hosts")] == ["2222aaa"] * 3
    for host in hosts:
        assert running_sha(host, service) == "2222aaa"
    entries = stored_manifest(world).deployments.values()
    assert {e.sha for e in entries} == {"2222aaa"}


def test_a_payload_that_exits_at_once_is_reverted(
    tmp_path, s3_server, hosts, service
):
    world = deploy_world(tmp_path, s3_server, hosts[:1], service)
    ssh = host_inputs(hosts)
    for sha in ("3333old", "3333good"):
        push(world, sha)
        deployed = world.run("deploy", environment="prd", sha=sha, **ssh)
        assert deployed.code == 0, deployed.log
    before = stored_manifest(world).deployments[hosts[0].address]
    push(world, "3333bad", CRASHING_RUN)

    result = world.run("deploy", environment="prd", sha="3333bad", **ssh)

    assert result.code == 1
    assert result.outputs["result"] == "failure"
    assert "reverted" in result.log and "3333good" in result.log
    assert "starting and failing at once" in result.log  # journal tail
    assert running_sha(hosts[0], service) == "3333good"
    assert unit_state(hosts[0], service) == "active"
    after = stored_manifest(world).deployments[hosts[0].address]
    assert after == before
    # The failed release never becomes the one a rollback returns to.
    back = world.run("rollback", environment="prd", **ssh)
    assert back.code == 0, back.log
    assert running_sha(hosts[0], service) == "3333old"


def test_a_wrong_host_key_stops_before_any_upload(
    tmp_path, s3_server, hosts, service
):
    world = deploy_world(tmp_path, s3_server, hosts, service)
    push(world, "4444aaa")
    ssh = host_inputs(hosts)
    # The second host's line carries the first host's key.
    lines = [h.known_hosts_line("ed25519") for h in hosts]
    lines[1] = lines[0].replace(hosts[0].address, hosts[1].address)
    ssh["known_hosts"] = "".join(lines)

    result = world.run("deploy", environment="prd", sha="4444aaa", **ssh)

    assert result.code == 1
    assert hosts[1].address in result.log
    assert "SHA256:" in result.log
    assert "Host key verification failed" in result.summary
    for host in hosts:
        done = host.run_root(
            ["test", "-e", f"/srv/wardnet/.releases/{service}"], check=False
        )
        assert done.returncode != 0, f"{host} was touched"


@pytest.mark.parametrize(
    ("pushed_arch", "fragment"),
    [
        pytest.param("arm64", "no amd64 variant", id="missing-arch"),
        pytest.param(None, "does not exist", id="missing-sha"),
    ],
)
def test_a_missing_artifact_fails_before_any_host_is_touched(
    tmp_path, s3_server, hosts, service, pushed_arch, fragment
):
    world = deploy_world(tmp_path, s3_server, hosts, service)
    if pushed_arch:
        world.write_payload("5555aaa")
        assert world.run("push", sha="5555aaa", arch=pushed_arch).code == 0

    result = world.run(
        "deploy", environment="prd", sha="5555aaa", **host_inputs(hosts)
    )

    assert result.code == 1
    assert fragment in result.log
    assert "no host was changed" in result.log
    for host in hosts:
        done = host.run_root(
            ["test", "-e", f"/srv/wardnet/.releases/{service}"], check=False
        )
        assert done.returncode != 0


def test_two_services_deploy_at_the_same_time(tmp_path, s3_server, hosts):
    worlds = []
    for name in ("web", "worker"):
        for host in hosts:
            host.install_unit(name, name)
        world = make_world(tmp_path / name, s3_server, service=name)
        targets = [target_for(h, name, user=name) for h in hosts]
        publish_stack(world, "prd", targets)
        push(world, f"{name}-66")
        worlds.append(world)
    results = {}

    def deploy(world):
        environ = world.environ(
            environment="prd", sha=f"{world.service}-66", **host_inputs(hosts)
        )
        results[world.service] = subprocess.run(
            [sys.executable, "-m", "inforge_action", "deploy"],
            env=environ,
            capture_output=True,
            text=True,
            timeout=300,
        )

    threads = [threading.Thread(target=deploy, args=(w,)) for w in worlds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for name, done in results.items():
        assert done.returncode == 0, done.stdout + done.stderr
        for host in hosts:
            assert running_sha(host, name) == f"{name}-66"
            whoami = host.read_file(f"/tmp/{name}.whoami").split()
            assert whoami[1] == name


def test_a_cancelled_deploy_finishes_the_host_in_flight_and_stops(
    tmp_path, s3_server, hosts, service
):
    world = deploy_world(tmp_path, s3_server, hosts, service)
    push(world, "7777aaa")
    summary = tmp_path / "summary.md"
    environ = world.environ(
        environment="prd",
        sha="7777aaa",
        max_parallel="1",
        **{**host_inputs(hosts), "verify_seconds": "4"},
    )
    environ["GITHUB_STEP_SUMMARY"] = str(summary)
    process = subprocess.Popen(
        [sys.executable, "-m", "inforge_action", "deploy"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("==> Deploy to"):
            process.send_signal(signal.SIGINT)
            break

    rest, _ = process.communicate(timeout=120)
    log = "".join(lines) + rest

    assert process.returncode == 1, log
    assert "the job is being cancelled" in log
    shipped = [h for h in hosts if running_sha(h, service) == "7777aaa"]
    assert len(shipped) == 1, log
    assert unit_state(shipped[0], service) == "active"
    assert "cancelled" in log
    assert "skipped" in summary.read_text()


def single_host_world(tmp_path, s3_server, host, service, **extra):
    world = make_world(tmp_path, s3_server, service=service, **extra)
    publish_stack(world, "prd", [target_for(host, service)])
    return world


@pytest.mark.parametrize(
    ("script", "healthy"),
    [
        pytest.param(HTTP_RUN, True, id="answers"),
        pytest.param(None, False, id="runs-but-never-answers"),
    ],
)
def test_health_check_must_answer_from_the_host(
    tmp_path, s3_server, hosts, service, script, healthy
):
    url = f"http://{hosts[0].address}:8080/"
    world = single_host_world(
        tmp_path, s3_server, hosts[0], service,
        service_env_extra=f"    health_check: {url}\n",
    )  # fmt: skip
    ssh = host_inputs(hosts)
    push(world, "8888base", HTTP_RUN)
    assert (
        world.run("deploy", environment="prd", sha="8888base", **ssh).code == 0
    )
    push(world, "8888new", script)

    result = world.run("deploy", environment="prd", sha="8888new", **ssh)

    if healthy:
        assert result.code == 0, result.log
        assert running_sha(hosts[0], service) == "8888new"
    else:
        assert result.code == 1
        assert "never answered 2xx" in result.log
        assert running_sha(hosts[0], service) == "8888base"


def test_the_active_sha_is_a_no_op_unless_forced(
    tmp_path, s3_server, hosts, service
):
    world = single_host_world(tmp_path, s3_server, hosts[0], service)
    ssh = host_inputs(hosts)
    push(world, "9999aaa")
    world.run("deploy", environment="prd", sha="9999aaa", **ssh)
    before = host_pid(hosts[0], service)

    again = world.run("deploy", environment="prd", sha="9999aaa", **ssh)
    unchanged_pid = host_pid(hosts[0], service)
    forced = world.run(
        "deploy", environment="prd", sha="9999aaa", force="true", **ssh
    )

    assert [h["result"] for h in again.json("hosts")] == ["unchanged"]
    assert unchanged_pid == before
    assert [h["result"] for h in forced.json("hosts")] == ["deployed"]
    assert host_pid(hosts[0], service) != before


def host_pid(host, service) -> str:
    done = host.run_root(
        ["systemctl", "show", "-p", "MainPID", "--value",
         f"wardnet-{service}.service"]
    )  # fmt: skip
    return done.stdout.strip()


def test_old_release_directories_are_cleaned(
    tmp_path, s3_server, hosts, service
):
    world = single_host_world(tmp_path, s3_server, hosts[0], service)
    ssh = {**host_inputs(hosts), "keep_releases": "2"}
    for sha in ("c1", "c2", "c3", "c4"):
        push(world, sha)
        deployed = world.run("deploy", environment="prd", sha=sha, **ssh)
        assert deployed.code == 0, deployed.log

    listing = (
        hosts[0]
        .run_root(["ls", "-A", f"/srv/wardnet/.releases/{service}"])
        .stdout.split()
    )

    assert sorted(n for n in listing if not n.startswith(".")) == ["c3", "c4"]
    assert ".previous" in listing


def test_dry_run_prints_the_plan_and_changes_nothing(
    tmp_path, s3_server, hosts, service
):
    world = single_host_world(tmp_path, s3_server, hosts[0], service)
    push(world, "d1")

    result = world.run(
        "deploy", environment="prd", sha="d1", dry_run="true",
        **host_inputs(hosts),
    )  # fmt: skip

    assert result.code == 0, result.log
    assert result.outputs["result"] == "dry-run"
    assert "transfer" in result.log and f"{service}/d1.tar.gz" in result.log
    done = hosts[0].run_root(
        ["test", "-e", f"/srv/wardnet/.releases/{service}"], check=False
    )
    assert done.returncode != 0


def test_a_container_delivery_is_refused(tmp_path, s3_server):
    world = make_world(
        tmp_path, s3_server, service_env_extra="    delivery: container\n"
    )

    result = world.run(
        "deploy", environment="prd", sha="abc", ssh_private_key="unused",
        known_hosts="unused",
    )  # fmt: skip

    assert result.code == 1
    assert "`container` is reserved" in result.log


def test_the_manifest_is_committed_to_the_service_repo(
    tmp_path, s3_server, hosts, service
):
    world = single_host_world(tmp_path, s3_server, hosts[0], service)
    origin = tmp_path / "origin.git"
    git(
        tmp_path, "clone", "-q", "--bare", str(world.service_repo), str(origin)
    )
    git(world.service_repo, "remote", "add", "origin", str(origin))
    git(world.service_repo, "fetch", "-q", "origin")
    push(world, "e1")
    world.extra_env.update(
        GITHUB_REF="refs/heads/main", GITHUB_REF_NAME="main"
    )

    result = world.run(
        "deploy", environment="prd", sha="e1", commit_manifest="true",
        **host_inputs(hosts),
    )  # fmt: skip

    assert result.code == 0, result.log
    commit = result.outputs["manifest-commit"]
    message = git(origin, "log", "-1", "--format=%B", "main")
    assert git(origin, "rev-parse", "main") == commit
    assert "[skip ci]" in message and service in message and "e1" in message
    committed = git(origin, "show", "main:deployments/manifest.prd.yaml")
    assert load_manifest(committed).deployments[hosts[0].address].sha == "e1"


def test_a_host_whose_manifest_write_fails_is_reported_and_recorded_later(
    tmp_path, s3_server, hosts, service
):
    from tests.support.seaweed import READONLY_KEY

    world = single_host_world(tmp_path, s3_server, hosts[0], service)
    ssh = host_inputs(hosts)
    push(world, "f1")

    refused = world.run(
        "deploy", environment="prd", sha="f1",
        r2_access_key_id=READONLY_KEY,
        r2_secret_access_key=s3_server.readonly_secret, **ssh,
    )  # fmt: skip
    again = world.run("deploy", environment="prd", sha="f1", **ssh)

    assert refused.code == 1
    assert [h["result"] for h in refused.json("hosts")] == ["unrecorded"]
    assert "manifest entry was not written" in refused.log
    assert running_sha(hosts[0], service) == "f1"
    assert again.code == 0, again.log
    assert [h["result"] for h in again.json("hosts")] == ["unchanged"]
    assert stored_manifest(world).deployments[hosts[0].address].sha == "f1"
