"""push, list and prune end to end: the CLI against a real S3 server."""

import tarfile
import time

import pytest

from inforge_action import store
from tests.support.world import make_world


@pytest.fixture
def world(tmp_path, s3_server):
    return make_world(tmp_path, s3_server)


def test_push_uploads_then_an_identical_push_is_a_no_op(world):
    world.write_payload("v1")

    first = world.run("push", sha="4f2a9c1e0b7d")
    second = world.run("push", sha="4f2a9c1e0b7d")

    assert first.code == 0, first.log
    assert first.outputs["created"] == "true"
    assert first.outputs["key"] == "api/4f2a9c1e0b7d.tar.gz"
    assert second.code == 0, second.log
    assert second.outputs["created"] == "false"
    assert second.outputs["sha256"] == first.outputs["sha256"]


def test_pushed_bytes_hold_the_tree_relative_to_its_root(world, tmp_path):
    world.write_payload("v1")
    world.run("push", sha="abc123")
    client = world.s3_server.client()

    body = client.get_object(Bucket=world.bucket, Key="api/abc123.tar.gz")
    (tmp_path / "got.tar.gz").write_bytes(body["Body"].read())

    with tarfile.open(tmp_path / "got.tar.gz") as archive:
        names = sorted(m.name.removeprefix("./") for m in archive)
        run = archive.getmember(
            next(n for n in archive.getnames() if n.endswith("run"))
        )
    assert "run" in names and "VERSION" in names
    assert run.mode == 0o755 and run.uid == 0


def test_other_content_under_a_pushed_sha_is_refused(world):
    world.write_payload("v1")
    world.run("push", sha="abc123")
    world.write_payload("v2")

    again = world.run("push", sha="abc123")

    assert again.code == 1
    assert "already exists with sha256" in again.log
    assert "immutable" in again.log


def test_arch_specific_push_uses_the_arch_key(world):
    world.write_payload("v1")

    result = world.run("push", sha="abc123", arch="arm64")

    assert result.outputs["key"] == "api/abc123-arm64.tar.gz"


def test_list_shows_releases_and_hosts(world):
    world.write_payload("v1")
    world.run("push", sha="abc123")
    client = world.s3_server.client()
    client.put_object(
        Bucket=world.bucket,
        Key="api/manifest.prd.yaml",
        Body=(
            "deployments:\n    host-a.example.net:\n        sha: abc123\n"
            "        deployedAt: 2026-06-09T12:00:00.123456789Z\n"
        ),
    )

    listed = world.run("list")

    assert listed.code == 0, listed.log
    document = listed.json("releases")
    assert [r["sha"] for r in document["releases"]] == ["abc123"]
    assert document["environments"]["prd"]["host-a.example.net"]["sha"] == (
        "abc123"
    )
    assert "abc123" in listed.log and "host-a.example.net" in listed.log


def test_push_prunes_unpinned_releases_beyond_keep(world):
    client = world.s3_server.client()
    for sha in ("old1", "old2", "old3", "old4"):
        world.write_payload(sha)
        assert world.run("push", sha=sha).code == 0
        time.sleep(1.05)  # LastModified has whole seconds
    client.put_object(
        Bucket=world.bucket,
        Key="api/manifest.qa.yaml",
        Body="deployments:\n    h:\n        sha: old1\n"
        "        deployedAt: 2026-01-01T00:00:00.0Z\n",
    )
    world.write_payload("new")

    result = world.run("push", sha="new", keep="2")

    assert result.code == 0, result.log
    assert result.json("pruned") == ["old2"]
    names = {r.sha for r in store.list_releases(client, world.bucket, "api")}
    assert names == {"old1", "old3", "old4", "new"}


def test_a_wrong_secret_fails_with_a_clear_message(world):
    world.write_payload("v1")
    environ_secret = "definitely-wrong-secret"

    result = world.run(
        "push", sha="abc123", r2_secret_access_key=environ_secret
    )

    assert result.code == 1
    assert "403" in result.log or "SignatureDoesNotMatch" in result.log
    assert "r2-secret-access-key" in result.log
    assert environ_secret not in result.log


def test_a_missing_artifact_dir_is_named(world):
    result = world.run("push", sha="abc123")

    assert result.code == 1
    assert "dist" in result.log


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        pytest.param(["api"], "deployments/manifest.prd.yaml", id="one"),
        pytest.param(
            ["api", "web"], "deployments/manifest.api.prd.yaml", id="several"
        ),
    ],
)
def test_the_manifest_copy_never_mixes_two_services(world, services, expected):
    import io
    from contextlib import ExitStack

    from inforge_action.commands import Run
    from inforge_action.deploy import manifest_copy_path
    from inforge_action.inputs import load_inputs
    from inforge_action.report import Reporter

    listed = "".join(f"  - {name}\n" for name in services)
    (world.service_repo / "deployments" / "inforge.yaml").write_text(
        f"platform: wardnet/platform\nservices:\n{listed}"
    )
    environ = world.environ(
        command="deploy", environment="prd", service="api", sha="abc",
        ssh_private_key="unused", known_hosts="unused",
    )  # fmt: skip
    inputs = load_inputs(environ, {})

    with ExitStack() as stack:
        run = Run(inputs, Reporter(inputs.runner, io.StringIO()), stack)
        path = manifest_copy_path(run)

    assert path == expected
