import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from inforge_action import pulumi_state
from inforge_action.descriptor import (
    Descriptor,
    Target,
    parse_descriptor,
    select_targets,
)
from inforge_action.errors import StateError
from inforge_action.pulumi_state import (
    DirectoryReader,
    load_checkpoint,
    open_backend,
    read_deploy_descriptor,
    stack_outputs,
)
from tests.support.pulumi import (
    SECRET_SIG,
    SIG_KEY,
    build_checkpoint,
    checkpoint_path,
    encrypt_value,
    make_salt_state,
    write_bytes,
    write_checkpoint,
    write_document,
)


PROJECT = "wardnet"
STACK = "prd"
PASSPHRASE = "correct horse battery staple"
DESCRIPTOR = {
    "environment": "prd",
    "targets": [
        {
            "service": "api",
            "host_dns": "api.vm.prd.use1.example.net",
            "folder": "/srv/wardnet/api",
            "unit": "wardnet-api.service",
            "user": "api",
            "ssh_user": "deploy",
            "scope": "use1",
        },
        {
            "service": "api",
            "host_dns": "api.vm.prd.euw1.example.net",
            "folder": "/srv/wardnet/api",
            "unit": "wardnet-api.service",
            "user": "api",
            "scope": "euw1",
        },
        {
            "service": "worker",
            "host_dns": "127.0.3.7",
            "folder": "/srv/wardnet/worker",
            "unit": "wardnet-worker.service",
        },
    ],
}
API_USE1 = Target(
    service="api",
    host_dns="api.vm.prd.use1.example.net",
    folder="/srv/wardnet/api",
    unit="wardnet-api.service",
    user="api",
    ssh_user="deploy",
    scope="use1",
)

# A vector made apart from this project's code, with Node's crypto
# (pbkdf2Sync sha256 1e6 rounds, aes-256-gcm) from passphrase PASSPHRASE,
# salt a1b2c3d4e5f60718, and nonces 000102...0b and 0c0d...17.
NODE_SALT_STATE = (
    "v1:obLD1OX2Bxg=:v1:AAECAwQFBgcICQoL:QQbo+YrgGn4+kaPdd25IRdghITVu2g=="
)
NODE_PLAINTEXT = (
    '{"environment":"prd","targets":[{"service":"api",'
    '"host_dns":"api.vm.prd.use1.example.net","folder":"/srv/wardnet/api",'
    '"unit":"wardnet-api.service","user":"api","scope":"use1"}]}'
)
NODE_CIPHERTEXT = (
    "v1:DA0ODxAREhMUFRYX:NEO22qELMPeNCYvr+CNYMwxI4kmyUQCrthhqZVtv2w6qxjGa"
    "lTkTS7D5H1WTnw6wZJfe27zpFpLG+o46dw8iGFF6MgAqzLc7JdTI/1OCI5tDOVyEqLhm"
    "fkGuohQZ5NtzuM0VMZPgOGIUcvyifptsE6/pAsV7jSYE//JUoopSmFfxuSKe4KgMeNuE"
    "bhKTCVMhlIQHqQCLbMhHrAdWdu90ExcxM4Ic4bFjOe4VRWcugkvKTyVmof0giJVL0yr6"
    "4G4+pw=="
)


def read_directory(root, passphrase=None):
    return read_deploy_descriptor(
        DirectoryReader(Path(root)), PROJECT, STACK, passphrase=passphrase
    )


def rewrite_checkpoint(root, change):
    file = Path(root) / checkpoint_path(PROJECT, STACK)
    document = json.loads(file.read_text())
    change(document["checkpoint"]["latest"])
    file.write_text(json.dumps(document))


def stack_resource(latest):
    return next(
        resource
        for resource in latest["resources"]
        if resource["type"] == "pulumi:pulumi:Stack"
    )


def git(*args, cwd):
    subprocess.run(
        ["git", "-c", "user.name=inforge", "-c", "user.email=t@invalid",
         *args],
        cwd=cwd, check=True, capture_output=True,
    )  # fmt: skip


# The file backend, both layouts, plain and gzip'd.


@pytest.mark.parametrize(
    ("layout", "compressed"),
    [
        pytest.param("project", False, id="project-json"),
        pytest.param("project", True, id="project-json-gz"),
        pytest.param("legacy", False, id="legacy-json"),
        pytest.param("legacy", True, id="legacy-json-gz"),
    ],
)
def test_file_backend_reads_either_layout(tmp_path, layout, compressed):
    state = tmp_path / "state"
    write_checkpoint(
        state, PROJECT, STACK, DESCRIPTOR, layout=layout, gzip=compressed
    )
    reader = open_backend("file", f"file://{state}", platform_dir=tmp_path)

    descriptor = read_deploy_descriptor(
        reader, PROJECT, STACK, passphrase=None
    )

    assert descriptor.environment == "prd"
    assert descriptor.targets[0] == API_USE1
    assert [t.scope for t in select_targets(descriptor, "api")] == [
        "use1",
        "euw1",
    ]


def test_project_layout_wins_over_a_legacy_file(tmp_path):
    write_checkpoint(tmp_path, PROJECT, STACK, DESCRIPTOR)
    stale = {**DESCRIPTOR, "environment": "stale"}
    write_checkpoint(tmp_path, PROJECT, STACK, stale, layout="legacy")

    descriptor = read_directory(tmp_path)

    assert descriptor.environment == "prd"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("file://infra/state", id="relative"),
        pytest.param("file://./infra/state?no_tmp_dir=true", id="query"),
        pytest.param("file://~/infra/state", id="home"),
    ],
)
def test_file_url_resolves_against_platform_repo_and_home(
    tmp_path, monkeypatch, url
):
    platform = tmp_path / "platform"
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    root = home if "~" in url else platform
    write_checkpoint(root / "infra/state", PROJECT, STACK, DESCRIPTOR)
    reader = open_backend("file", url, platform_dir=platform)

    descriptor = read_deploy_descriptor(
        reader, PROJECT, STACK, passphrase=None
    )

    assert descriptor.targets[0] == API_USE1


def test_missing_state_directory_is_named(tmp_path):
    with pytest.raises(StateError, match="does not exist") as caught:
        open_backend("file", "file://nowhere", platform_dir=tmp_path)

    assert str(tmp_path / "nowhere") in str(caught.value)


def test_missing_stack_names_every_path_tried(tmp_path):
    write_checkpoint(tmp_path, PROJECT, "qa", DESCRIPTOR)
    reader = open_backend("file", f"file://{tmp_path}", platform_dir=tmp_path)

    with pytest.raises(StateError) as caught:
        load_checkpoint(reader, PROJECT, STACK)

    message = str(caught.value)
    for tried in (
        ".pulumi/stacks/wardnet/prd.json",
        ".pulumi/stacks/wardnet/prd.json.gz",
        ".pulumi/stacks/prd.json",
        ".pulumi/stacks/prd.json.gz",
    ):
        assert tried in message
    assert str(tmp_path) in message
    assert "inforge.yaml" in message and "environment name" in message


def test_zstd_checkpoint_is_named_not_missing(tmp_path):
    path = checkpoint_path(PROJECT, STACK).replace(".json", ".json.zst")
    write_bytes(tmp_path, path, b"\x28\xb5\x2f\xfd")

    with pytest.raises(StateError, match="zstd") as caught:
        read_directory(tmp_path)

    assert path in str(caught.value)


@pytest.mark.parametrize(
    ("project", "stack"),
    [
        pytest.param("../wardnet", STACK, id="project-escapes"),
        pytest.param(PROJECT, "..", id="stack-dotdot"),
        pytest.param(PROJECT, "prd/../../x", id="stack-slash"),
        pytest.param(PROJECT, "", id="stack-empty"),
    ],
)
def test_unsafe_project_or_stack_names_are_refused(tmp_path, project, stack):
    reader = DirectoryReader(tmp_path)

    with pytest.raises(StateError, match="is not valid"):
        load_checkpoint(reader, project, stack)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"{not json", "not valid JSON", id="bad-json"),
        pytest.param(b"[1, 2]", "not a JSON object", id="not-object"),
        pytest.param(
            b'{"version": 1, "checkpoint": {}}', "version 1", id="old-version"
        ),
        pytest.param(
            b'{"version": 3, "checkpoint": {"stack": "prd"}}',
            "never been deployed",
            id="never-deployed",
        ),
    ],
)
def test_unreadable_checkpoints_are_explained(tmp_path, data, expected):
    write_bytes(tmp_path, checkpoint_path(PROJECT, STACK), data)

    with pytest.raises(StateError, match=expected):
        read_directory(tmp_path)


def test_corrupt_gzip_is_explained(tmp_path):
    path = checkpoint_path(PROJECT, STACK, gzip=True)
    write_bytes(tmp_path, path, b"\x1f\x8b\x08 truncated")

    with pytest.raises(StateError, match="not valid gzip"):
        read_directory(tmp_path)


def test_gzip_content_under_a_json_name_is_read(tmp_path):
    document = build_checkpoint(PROJECT, STACK, DESCRIPTOR)
    data = gzip.compress(json.dumps(document).encode())
    write_bytes(tmp_path, checkpoint_path(PROJECT, STACK), data)

    assert read_directory(tmp_path).targets[0] == API_USE1


def test_missing_stack_resource_is_explained(tmp_path):
    write_checkpoint(tmp_path, PROJECT, STACK, DESCRIPTOR)
    rewrite_checkpoint(
        tmp_path,
        lambda latest: latest.update(
            resources=[r for r in latest["resources"] if r["custom"]]
        ),
    )

    with pytest.raises(StateError, match="no pulumi:pulumi:Stack"):
        read_directory(tmp_path)


def test_missing_descriptor_output_lists_outputs_present(tmp_path):
    write_checkpoint(
        tmp_path, PROJECT, STACK, None,
        extra_outputs={"kubeconfig": "x", "hosts": ["a"]},
    )  # fmt: skip

    with pytest.raises(StateError) as caught:
        read_directory(tmp_path)

    message = str(caught.value)
    assert "no output deployDescriptor" in message
    assert "outputs present: hosts, kubeconfig" in message


# The s3 and r2 backends, against a real S3 server.


@pytest.mark.parametrize(
    ("url_template", "prefix"),
    [
        pytest.param(
            "s3://{bucket}?endpoint={endpoint}&region=auto"
            "&s3ForcePathStyle=true",
            "",
            id="endpoint-url",
        ),
        pytest.param(
            "s3://{bucket}/states/platform?endpoint={host}"
            "&disableSSL=true&region=us-east-1",
            "states/platform",
            id="bare-host-prefix",
        ),
        pytest.param(
            "s3://{bucket}/states/?endpoint={host}&disable_https=true",
            "states",
            id="no-region-trailing-slash",
        ),
    ],
)
def test_s3_backend_reads_with_endpoint_and_region(
    s3_server, bucket, url_template, prefix
):
    client = s3_server.client()
    write_checkpoint(
        (client, bucket, prefix), PROJECT, STACK, DESCRIPTOR, gzip=True
    )
    url = url_template.format(
        bucket=bucket,
        endpoint=s3_server.endpoint,
        host=s3_server.endpoint.removeprefix("http://"),
    )
    reader = open_backend(
        "s3", url, platform_dir=Path("."),
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )  # fmt: skip

    descriptor = read_deploy_descriptor(
        reader, PROJECT, STACK, passphrase=None
    )

    assert descriptor.targets[0] == API_USE1


def test_r2_backend_uses_the_endpoint_override(s3_server, bucket):
    client = s3_server.client()
    write_checkpoint(
        (client, bucket, "pulumi"), PROJECT, STACK, DESCRIPTOR,
        passphrase=PASSPHRASE, secret=True, layout="legacy",
    )  # fmt: skip
    reader = open_backend(
        "r2", f"r2://{bucket}/pulumi", platform_dir=Path("."),
        r2_account_id="0123abcd",
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
        endpoint_url=s3_server.endpoint,
    )  # fmt: skip

    descriptor = read_deploy_descriptor(
        reader, PROJECT, STACK, passphrase=PASSPHRASE
    )

    assert descriptor.targets[0] == API_USE1


def test_s3_missing_stack_names_bucket_and_paths(s3_server, bucket):
    reader = open_backend(
        "s3", f"s3://{bucket}/p?endpoint={s3_server.endpoint}",
        platform_dir=Path("."),
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )  # fmt: skip

    with pytest.raises(StateError) as caught:
        load_checkpoint(reader, PROJECT, STACK)

    assert f"s3://{bucket}/p" in str(caught.value)
    assert ".pulumi/stacks/prd.json.gz" in str(caught.value)


def test_s3_refused_credentials_name_bucket_key_and_inputs(s3_server, bucket):
    reader = open_backend(
        "s3", f"s3://{bucket}?endpoint={s3_server.endpoint}",
        platform_dir=Path("."),
        access_key_id=s3_server.access_key,
        secret_access_key="not-the-secret",
    )  # fmt: skip

    with pytest.raises(StateError) as caught:
        load_checkpoint(reader, PROJECT, STACK)

    message = str(caught.value)
    assert f"s3://{bucket}/.pulumi/stacks/wardnet/prd.json" in message
    assert "state-secret-access-key" in message
    assert "request id" in message
    assert caught.value.__cause__ is not None


def test_s3_missing_bucket_is_not_taken_for_a_missing_stack(s3_server):
    reader = open_backend(
        "s3", f"s3://no-such-bucket-x1?endpoint={s3_server.endpoint}",
        platform_dir=Path("."),
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )  # fmt: skip

    with pytest.raises(StateError, match="NoSuchBucket"):
        load_checkpoint(reader, PROJECT, STACK)


@pytest.mark.parametrize(
    ("backend_type", "url", "credentials", "expected"),
    [
        pytest.param(
            "s3", "s3://state?endpoint=127.0.0.1:1", ("", "secret"),
            "`state-access-key-id`", id="s3-no-key-id",
        ),
        pytest.param(
            "r2", "r2://state", ("key", ""),
            "`state-secret-access-key`", id="r2-no-secret",
        ),
        pytest.param(
            "r2", "r2://state", ("key", "secret"),
            "`r2-account-id`", id="r2-no-account",
        ),
        pytest.param(
            "s3", "state-bucket", ("key", "secret"),
            "s3://<bucket>", id="s3-bad-url",
        ),
        pytest.param(
            "r2", "s3://state", ("key", "secret"),
            "r2://<bucket>", id="r2-bad-url",
        ),
        pytest.param(
            "file", "/srv/state", ("", ""),
            "must start with file://", id="file-bad-url",
        ),
        pytest.param(
            "azblob", "azblob://state", ("", ""),
            "supported: file, s3, r2, git-branch", id="unknown-type",
        ),
    ],
)  # fmt: skip
def test_backend_configuration_errors(
    tmp_path, backend_type, url, credentials, expected
):
    key_id, secret = credentials

    with pytest.raises(StateError) as caught:
        open_backend(
            backend_type, url, platform_dir=tmp_path,
            access_key_id=key_id, secret_access_key=secret,
        )  # fmt: skip

    assert expected in str(caught.value)


# The git-branch backend, on a real repository.


@pytest.fixture
def platform_repo(tmp_path):
    repo = tmp_path / "platform"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "inforge.yaml").write_text("name: wardnet\n")
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "platform", cwd=repo)
    git("checkout", "-q", "--orphan", "pulumi-state", cwd=repo)
    git("rm", "-q", "-rf", ".", cwd=repo)
    write_checkpoint(
        repo, PROJECT, STACK, DESCRIPTOR, passphrase=PASSPHRASE, secret=True
    )
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "state", cwd=repo)
    git("checkout", "-q", "main", cwd=repo)
    return repo


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("git-branch://pulumi-state", id="scheme"),
        pytest.param("pulumi-state", id="bare"),
        pytest.param("", id="default"),
    ],
)
def test_git_branch_backend_reads_the_state_branch(
    tmp_path, platform_repo, url
):
    asked = []

    def checkout_branch(branch):
        asked.append(branch)
        dest = tmp_path / f"checkout-{len(asked)}"
        subprocess.run(
            ["git", "clone", "-q", "--branch", branch, "--depth", "1",
             f"file://{platform_repo}", str(dest)],
            check=True, capture_output=True,
        )  # fmt: skip
        return dest

    reader = open_backend(
        "git-branch", url, platform_dir=platform_repo,
        checkout_branch=checkout_branch,
    )  # fmt: skip
    descriptor = read_deploy_descriptor(
        reader, PROJECT, STACK, passphrase=PASSPHRASE
    )

    assert asked == ["pulumi-state"]
    assert descriptor.targets[0] == API_USE1
    assert "pulumi-state" in reader.location


def test_git_branch_refuses_an_option_like_branch(tmp_path):
    with pytest.raises(StateError, match="usable branch"):
        open_backend(
            "git-branch", "git-branch://--upload-pack=x",
            platform_dir=tmp_path, checkout_branch=lambda branch: tmp_path,
        )  # fmt: skip


# Secrets.


@pytest.mark.parametrize(
    "compressed",
    [pytest.param(False, id="json"), pytest.param(True, id="json-gz")],
)
def test_secret_descriptor_is_decrypted(tmp_path, compressed):
    write_checkpoint(
        tmp_path, PROJECT, STACK, DESCRIPTOR,
        passphrase=PASSPHRASE, secret=True, gzip=compressed,
    )  # fmt: skip
    path = checkpoint_path(PROJECT, STACK, gzip=compressed)
    stored = (tmp_path / path).read_bytes()

    descriptor = read_directory(tmp_path, passphrase=PASSPHRASE)

    assert descriptor == parse_descriptor(DESCRIPTOR, source="test")
    clear = gzip.decompress(stored) if compressed else stored
    assert b"api.vm.prd" not in clear


def test_independent_vector_is_decrypted(tmp_path):
    document = build_checkpoint(PROJECT, STACK, None)
    latest = document["checkpoint"]["latest"]
    latest["secrets_providers"] = {
        "type": "passphrase",
        "state": {"salt": NODE_SALT_STATE},
    }
    stack_resource(latest)["outputs"]["deployDescriptor"] = {
        SIG_KEY: SECRET_SIG,
        "ciphertext": NODE_CIPHERTEXT,
    }
    write_document(
        tmp_path, checkpoint_path(PROJECT, STACK), document, gzip=False
    )

    descriptor = read_directory(tmp_path, passphrase=PASSPHRASE)

    assert descriptor == parse_descriptor(
        json.loads(NODE_PLAINTEXT), source="test"
    )
    assert descriptor.targets[0] == API_USE1


def test_writer_reproduces_the_independent_vector():
    salt = bytes.fromhex("a1b2c3d4e5f60718")

    state, key = make_salt_state(PASSPHRASE, salt=salt, nonce=bytes(range(12)))
    ciphertext = encrypt_value(key, NODE_PLAINTEXT, nonce=bytes(range(12, 24)))

    assert state == NODE_SALT_STATE
    assert ciphertext == NODE_CIPHERTEXT


def test_reader_decrypts_with_the_independent_key():
    salt = bytes.fromhex("a1b2c3d4e5f60718")

    key = pulumi_state.derive_key(PASSPHRASE, salt)

    assert pulumi_state.decrypt_value(key, NODE_CIPHERTEXT) == NODE_PLAINTEXT


def test_key_is_derived_once_for_many_secrets(tmp_path):
    secret_targets = {
        SIG_KEY: SECRET_SIG,
        "plaintext": json.dumps(DESCRIPTOR["targets"]),
    }
    write_checkpoint(
        tmp_path, PROJECT, STACK, DESCRIPTOR,
        passphrase=PASSPHRASE, secret=True,
        extra_outputs={"copy": secret_targets},
    )  # fmt: skip
    checkpoint = load_checkpoint(DirectoryReader(tmp_path), PROJECT, STACK)
    pulumi_state.derive_key.cache_clear()

    for _ in range(3):
        outputs = stack_outputs(checkpoint, passphrase=PASSPHRASE)

    assert outputs["copy"] == DESCRIPTOR["targets"]
    assert pulumi_state.derive_key.cache_info().misses == 1


def test_nested_secrets_are_decrypted(tmp_path):
    state, key = make_salt_state(PASSPHRASE)
    # Pulumi encrypts a secret once; a secret inside it keeps its JSON
    # text as its "ciphertext".
    inner = {SIG_KEY: SECRET_SIG, "ciphertext": json.dumps("use1")}
    first = {**DESCRIPTOR["targets"][0], "scope": inner}
    sealed = {
        SIG_KEY: SECRET_SIG,
        "ciphertext": encrypt_value(key, json.dumps(first)),
    }
    descriptor = {**DESCRIPTOR, "targets": [sealed]}
    write_checkpoint(tmp_path, PROJECT, STACK, descriptor)
    rewrite_checkpoint(
        tmp_path,
        lambda latest: latest.update(
            secrets_providers={"type": "passphrase", "state": {"salt": state}}
        ),
    )

    result = read_directory(tmp_path, passphrase=PASSPHRASE)

    assert result.targets == (API_USE1,)


def test_plain_descriptor_needs_no_passphrase(tmp_path):
    write_checkpoint(
        tmp_path, PROJECT, STACK, DESCRIPTOR, passphrase=PASSPHRASE,
        extra_outputs={"other": {SIG_KEY: SECRET_SIG, "ciphertext": "v1:x:y"}},
    )  # fmt: skip
    pulumi_state.derive_key.cache_clear()

    descriptor = read_directory(tmp_path, passphrase=None)

    assert descriptor.targets[0] == API_USE1
    assert pulumi_state.derive_key.cache_info().misses == 0


def test_wrong_passphrase_is_refused(tmp_path):
    write_checkpoint(
        tmp_path, PROJECT, STACK, DESCRIPTOR,
        passphrase=PASSPHRASE, secret=True,
    )  # fmt: skip

    with pytest.raises(StateError) as caught:
        read_directory(tmp_path, passphrase="Tr0ub4dor&3")

    message = str(caught.value)
    assert "does not match the secrets provider" in message
    assert "pulumi-passphrase" in message and "wardnet/prd" in message


@pytest.mark.parametrize(
    "passphrase",
    [pytest.param(None, id="none"), pytest.param("", id="empty")],
)
def test_missing_passphrase_names_output_and_input(tmp_path, passphrase):
    write_checkpoint(
        tmp_path, PROJECT, STACK, DESCRIPTOR,
        passphrase=PASSPHRASE, secret=True,
    )  # fmt: skip

    with pytest.raises(StateError) as caught:
        read_directory(tmp_path, passphrase=passphrase)

    message = str(caught.value)
    assert "output deployDescriptor" in message
    assert "`pulumi-passphrase`" in message


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        pytest.param(
            {"type": "awskms", "state": {"url": "awskms://alias/x"}},
            "'awskms'",
            id="awskms",
        ),
        pytest.param(
            {"type": "service", "state": {"owner": "acme"}},
            "'service'",
            id="service",
        ),
        pytest.param(None, "'missing'", id="none"),
    ],
)
def test_other_secrets_providers_are_named(tmp_path, provider, expected):
    write_checkpoint(
        tmp_path, PROJECT, STACK, DESCRIPTOR,
        passphrase=PASSPHRASE, secret=True,
    )  # fmt: skip
    rewrite_checkpoint(
        tmp_path, lambda latest: latest.update(secrets_providers=provider)
    )

    with pytest.raises(StateError) as caught:
        read_directory(tmp_path, passphrase=PASSPHRASE)

    assert expected in str(caught.value)
    assert "change-secrets-provider" in str(caught.value)


@pytest.mark.parametrize(
    "descriptor",
    [
        pytest.param("[secret]", id="whole-output"),
        pytest.param({**DESCRIPTOR, "targets": "[secret]"}, id="nested-field"),
    ],
)
def test_masked_secret_literal_is_refused(tmp_path, descriptor):
    write_checkpoint(tmp_path, PROJECT, STACK, descriptor)

    with pytest.raises(StateError, match=r"literal '\[secret\]'"):
        read_directory(tmp_path)


def test_masked_secret_inside_a_decrypted_secret_is_refused(tmp_path):
    write_checkpoint(
        tmp_path, PROJECT, STACK, "[secret]",
        passphrase=PASSPHRASE, secret=True,
    )  # fmt: skip

    with pytest.raises(StateError, match=r"literal '\[secret\]'"):
        read_directory(tmp_path, passphrase=PASSPHRASE)


def test_damaged_secret_with_right_passphrase_is_explained(tmp_path):
    write_checkpoint(
        tmp_path, PROJECT, STACK, DESCRIPTOR,
        passphrase=PASSPHRASE, secret=True,
    )  # fmt: skip

    def damage(latest):
        secret = stack_resource(latest)["outputs"]["deployDescriptor"]
        version, nonce, sealed = secret["ciphertext"].split(":")
        flipped = "A" if sealed[0] != "A" else "B"
        secret["ciphertext"] = f"{version}:{nonce}:{flipped}{sealed[1:]}"

    rewrite_checkpoint(tmp_path, damage)

    with pytest.raises(StateError, match="may be damaged"):
        read_directory(tmp_path, passphrase=PASSPHRASE)


def test_computed_placeholder_is_refused(tmp_path):
    write_checkpoint(
        tmp_path, PROJECT, STACK, pulumi_state.COMPUTED_PLACEHOLDER
    )

    with pytest.raises(StateError, match="not known yet"):
        read_directory(tmp_path)


# The descriptor itself.


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(DESCRIPTOR, id="dict"),
        pytest.param(json.dumps(DESCRIPTOR), id="json-string"),
        pytest.param(
            "environment: prd\n"
            "targets:\n"
            "  - service: api\n"
            "    host_dns: api.vm.prd.use1.example.net\n"
            "    folder: /srv/wardnet/api\n"
            "    unit: wardnet-api.service\n"
            "    user: api\n"
            "    scope: use1\n",
            id="yaml-string",
        ),
    ],
)
def test_descriptor_as_string_or_mapping(tmp_path, value):
    write_checkpoint(
        tmp_path, PROJECT, STACK, value, passphrase=PASSPHRASE, secret=True
    )

    descriptor = read_directory(tmp_path, passphrase=PASSPHRASE)

    assert descriptor.environment == "prd"
    assert descriptor.targets[0] == API_USE1


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({"ssh_user": ""}, ("deploy", "", ""), id="empty-login"),
        pytest.param(
            {"ssh_user": None, "user": None, "scope": None},
            ("deploy", "", ""),
            id="nulls",
        ),
        pytest.param(
            {"ssh_user": "ops", "user": "api", "scope": "use1"},
            ("ops", "api", "use1"),
            id="given",
        ),
    ],
)
def test_target_defaults(changes, expected):
    target = {**DESCRIPTOR["targets"][2], **changes}

    parsed = parse_descriptor(
        {"environment": "prd", "targets": [target], "version": 2},
        source="test",
    ).targets[0]

    assert (parsed.ssh_user, parsed.user, parsed.scope) == expected


def test_target_is_frozen_and_ignores_unknown_keys():
    target = {**DESCRIPTOR["targets"][0], "region": "us-east-1"}

    parsed = parse_descriptor(
        {"environment": "prd", "targets": [target]}, source="test"
    ).targets[0]

    assert parsed == API_USE1
    with pytest.raises(ValueError):
        parsed.folder = "/"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("folder", "srv/wardnet/api", id="folder-relative"),
        pytest.param("folder", "/srv/wardnet/../../etc", id="folder-dotdot"),
        pytest.param("folder", "/srv/wardnet/api/", id="folder-trailing"),
        pytest.param("folder", "/srv//wardnet", id="folder-double-slash"),
        pytest.param("folder", "/srv/./wardnet", id="folder-dot"),
        pytest.param("folder", "/", id="folder-root"),
        pytest.param("folder", "/srv/ward net", id="folder-space"),
        pytest.param("folder", "/srv/$(reboot)", id="folder-shell"),
        pytest.param("host_dns", "-oProxyCommand=x", id="host-option"),
        pytest.param("host_dns", "api host", id="host-space"),
        pytest.param("host_dns", "", id="host-empty"),
        pytest.param("host_dns", "api..example.net", id="host-empty-label"),
        pytest.param("host_dns", "api;reboot", id="host-shell"),
        pytest.param("unit", "wardnet-api", id="unit-no-suffix"),
        pytest.param("unit", "-x.service", id="unit-option"),
        pytest.param("unit", "a b.service", id="unit-space"),
        pytest.param("service", "../api", id="service-path"),
        pytest.param("ssh_user", "-oX", id="login-option"),
        pytest.param("user", "root;x", id="user-shell"),
    ],
)
def test_unsafe_target_fields_are_refused(field, value):
    target = {**DESCRIPTOR["targets"][0], field: value}

    with pytest.raises(StateError) as caught:
        parse_descriptor(
            {"environment": "prd", "targets": [target]}, source="stack prd"
        )

    message = str(caught.value)
    assert message.startswith("stack prd:")
    assert f"targets[0].{field}=" in message


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.3.7", id="ipv4"),
        pytest.param("fd00::7", id="ipv6"),
        pytest.param("api.vm.prd.use1.example.net.", id="fqdn-dot"),
        pytest.param("localhost", id="single-label"),
    ],
)
def test_host_literals_are_accepted(host):
    target = {**DESCRIPTOR["targets"][0], "host_dns": host}

    parsed = parse_descriptor(
        {"environment": "prd", "targets": [target]}, source="test"
    )

    assert parsed.targets[0].host_dns == host


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"targets": []}, "environment is missing", id="no-env"),
        pytest.param(
            {"environment": "prd", "targets": [{"service": "api"}]},
            "targets[0].host_dns is missing",
            id="no-host",
        ),
        pytest.param(
            {"environment": "prd", "targets": [
                {**DESCRIPTOR["targets"][2], "service": 7}]},
            "targets[0].service=7",
            id="number",
        ),
        pytest.param(["a"], "must be a mapping", id="list"),
        pytest.param("key: [unclosed", "neither JSON nor YAML", id="bad-yaml"),
    ],
)  # fmt: skip
def test_invalid_descriptors_name_the_field(value, expected):
    with pytest.raises(StateError) as caught:
        parse_descriptor(value, source="output deployDescriptor")

    assert expected in str(caught.value)
    assert str(caught.value).startswith("output deployDescriptor:")


def test_no_targets_for_service_lists_services_present():
    descriptor = parse_descriptor(DESCRIPTOR, source="test")

    with pytest.raises(StateError) as caught:
        select_targets(descriptor, "billing")

    message = str(caught.value)
    assert "'billing'" in message and "'prd'" in message
    assert "services with targets: api, worker" in message


def test_empty_descriptor_has_no_services():
    descriptor = Descriptor(environment="qa", targets=None)

    with pytest.raises(StateError, match="services with targets: none"):
        select_targets(descriptor, "api")


def test_module_import_stays_light():
    probe = (
        "import sys, inforge_action.pulumi_state; "
        "heavy = ('boto3', 'botocore', 'cryptography', 'pydantic', 'yaml'); "
        "print([m for m in heavy if m in sys.modules])"
    )

    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True, text=True, check=True,
    )  # fmt: skip

    assert result.stdout.strip() == "[]"
