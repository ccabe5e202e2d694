import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from inforge_action.errors import ManifestConflict, StoreError
from inforge_action.manifest import (
    Entry,
    Manifest,
    dump_manifest,
    load_manifest,
    manifest_key,
    now_rfc3339,
    pinned_shas,
    read_environments,
    read_manifest,
    update_manifest,
)
from inforge_action.store import make_client


CONTRACT_EXAMPLE = """\
deployments:
    api.vm.prd.use1.example.net:
        sha: 4f2a9c1e0b7d...
        arch: amd64
        deployedAt: 2026-06-09T12:00:00.123456789Z
"""

TRICKY_SHAS = [
    pytest.param("1e100", id="float-1.2"),
    pytest.param("0123456", id="octal-1.1"),
    pytest.param("695e0514", id="float-hex-sha"),
    pytest.param("12345", id="int"),
    pytest.param("1_000", id="int-underscores"),
    pytest.param("true", id="bool"),
    pytest.param("null", id="null"),
    pytest.param("2026-06-09", id="date"),
]


def test_contract_example_round_trips_as_text():
    manifest = load_manifest(CONTRACT_EXAMPLE)

    assert dump_manifest(manifest) == CONTRACT_EXAMPLE


def test_contract_example_loads_as_text_values():
    manifest = load_manifest(CONTRACT_EXAMPLE)

    assert manifest.deployments == {
        "api.vm.prd.use1.example.net": Entry(
            "4f2a9c1e0b7d...",
            "amd64",
            deployed_at="2026-06-09T12:00:00.123456789Z",
        )
    }


@pytest.mark.parametrize("sha", TRICKY_SHAS)
def test_tricky_sha_is_written_quoted_and_reads_back(sha):
    manifest = Manifest({"h": Entry(sha, deployed_at="2026-01-01T00:00:00Z")})

    text = dump_manifest(manifest)

    assert f'sha: "{sha}"' in text
    assert load_manifest(text).deployments["h"].sha == sha


@pytest.mark.parametrize("sha", TRICKY_SHAS)
def test_tricky_sha_left_unquoted_by_an_old_writer_reads_as_text(sha):
    text = f"deployments:\n  h:\n    sha: {sha}\n"

    manifest = load_manifest(text)

    assert manifest.deployments["h"].sha == sha


@pytest.mark.parametrize(
    "sha",
    [
        pytest.param("4f2a9c1e0b7d", id="hex"),
        pytest.param("preview-42", id="dashed"),
        pytest.param("deadbeef", id="letters"),
    ],
)
def test_plain_sha_is_written_bare(sha):
    manifest = Manifest({"h": Entry(sha, deployed_at="2026-01-01T00:00:00Z")})

    assert f"sha: {sha}\n" in dump_manifest(manifest)


def test_fields_are_ordered_and_empty_arch_is_left_out():
    note = load_manifest("deployments: {h: {sha: a, note: x}}")
    entry = note.deployments["h"]
    manifest = Manifest(
        {
            "zeta": Entry("b", deployed_at="2026-01-01T00:00:00.5Z"),
            "alpha": Entry(
                "a",
                "arm64",
                deployed_at="2026-01-01T00:00:00.1Z",
                extra=entry.extra,
            ),
        }
    )

    text = dump_manifest(manifest)

    assert text == (
        "deployments:\n"
        "    alpha:\n"
        "        sha: a\n"
        "        arch: arm64\n"
        "        deployedAt: 2026-01-01T00:00:00.1Z\n"
        "        note: x\n"
        "    zeta:\n"
        "        sha: b\n"
        "        deployedAt: 2026-01-01T00:00:00.5Z\n"
    )


def test_unknown_keys_survive_a_rewrite():
    text = (
        "version: 2\n"
        "deployments:\n"
        "  old:\n"
        "    sha: abc\n"
        "    deployedAt: 2025-01-01T00:00:00Z\n"
        "    approvedBy: [alice, bob]\n"
        "owner: {team: platform, pager: 1234}\n"
    )
    manifest = load_manifest(text)

    manifest.deployments["new"] = Entry("def", deployed_at=now_rfc3339())
    reloaded = load_manifest(dump_manifest(manifest))

    assert set(reloaded.extra) == {"owner", "version"}
    assert "version: 2\n" in dump_manifest(reloaded)
    assert "owner: {team: platform, pager: 1234}\n" in dump_manifest(reloaded)
    assert "approvedBy: [alice, bob]" in dump_manifest(reloaded)
    assert reloaded.deployments["old"].sha == "abc"
    assert reloaded.deployments["new"].sha == "def"


def test_timestamps_stay_text():
    text = "deployments: {h: {sha: a, deployedAt: 2026-06-09T12:00:00Z}}"

    entry = load_manifest(text).deployments["h"]

    assert entry.deployed_at == "2026-06-09T12:00:00Z"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty-text"),
        pytest.param("~\n", id="null-document"),
        pytest.param("deployments:\n", id="null-deployments"),
        pytest.param("deployments: {}\n", id="empty-map"),
    ],
)
def test_empty_manifests(text):
    assert load_manifest(text).deployments == {}


def test_an_empty_manifest_dumps_an_empty_map():
    assert dump_manifest(Manifest()) == "deployments: {}\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("deployments: [a\n", "not valid YAML", id="syntax"),
        pytest.param("- a\n- b\n", "not a mapping", id="list-document"),
        pytest.param("deployments: [a]\n", "not a mapping", id="list-hosts"),
        pytest.param("deployments: {h: abc}\n", "not a mapping", id="bare"),
        pytest.param("deployments: {h: {arch: x}}\n", "no `sha`", id="no-sha"),
        pytest.param(
            "deployments: {h: {sha: [a]}}\n", "single value", id="list-sha"
        ),
        pytest.param(
            "deployments: {h: {sha: a}, h: {sha: b}}\n", "twice", id="dupe"
        ),
        pytest.param("a: 1\n---\nb: 2\n", "not valid YAML", id="two-docs"),
    ],
)
def test_malformed_manifests_are_refused(text, problem):
    key = "api/manifest.prd.yaml"

    with pytest.raises(StoreError) as caught:
        load_manifest(text, key)

    assert key in str(caught.value)
    assert problem in str(caught.value)


def test_now_is_rfc3339_utc_with_nanoseconds():
    stamp = now_rfc3339()

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp)
    parsed = datetime.fromisoformat(stamp[:26] + "+00:00")
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 5


def test_manifest_key():
    assert manifest_key("api", "prd") == "api/manifest.prd.yaml"


class PutRecorder:
    """Records every PutObject a client sends and the status it got."""

    def __init__(self, client) -> None:
        self.conditions: list[dict[str, str]] = []
        self.statuses: list[int] = []
        events = client.meta.events
        events.register("before-send.s3.PutObject", self._on_send)
        events.register("after-call.s3.PutObject", self._on_reply)

    def _on_send(self, request, **_):
        headers = request.headers
        self.conditions.append(
            {
                name: headers[name].decode()
                if isinstance(headers[name], bytes)
                else headers[name]
                for name in ("If-Match", "If-None-Match")
                if name in headers
            }
        )

    def _on_reply(self, http_response, **_):
        self.statuses.append(http_response.status_code)


@pytest.fixture
def connect(s3_server):
    def make():
        return make_client(
            endpoint_url=s3_server.endpoint,
            access_key_id=s3_server.access_key,
            secret_access_key=s3_server.secret_key,
        )

    return make


def set_host(host: str, sha: str, arch: str = ""):
    def change(manifest: Manifest) -> None:
        manifest.deployments[host] = Entry(
            sha, arch, deployed_at=now_rfc3339()
        )

    return change


def test_reading_a_missing_manifest_gives_an_empty_one(connect, bucket):
    manifest, etag = read_manifest(connect(), bucket, "api/manifest.prd.yaml")

    assert manifest == Manifest()
    assert etag is None


def test_update_creates_a_missing_manifest_with_if_none_match(connect, bucket):
    client = connect()
    recorder = PutRecorder(client)
    key = "api/manifest.prd.yaml"

    update_manifest(client, bucket, key, set_host("a.example", "1e100"))

    assert recorder.conditions == [{"If-None-Match": "*"}]
    stored = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert 'sha: "1e100"' in stored.decode()
    assert load_manifest(stored.decode()).deployments["a.example"].sha == (
        "1e100"
    )


def test_update_of_an_existing_manifest_uses_if_match(connect, bucket):
    client = connect()
    key = "api/manifest.prd.yaml"
    update_manifest(client, bucket, key, set_host("a.example", "one"))
    etag = client.head_object(Bucket=bucket, Key=key)["ETag"]
    recorder = PutRecorder(client)

    update_manifest(client, bucket, key, set_host("b.example", "two"))

    assert recorder.conditions == [{"If-Match": etag}]
    manifest, _ = read_manifest(client, bucket, key)
    assert sorted(manifest.deployments) == ["a.example", "b.example"]


def test_an_unchanged_manifest_is_not_written(connect, bucket):
    client = connect()
    key = "api/manifest.prd.yaml"
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=b"deployments:\n  h:\n    sha: 0123456\n    note: kept\n",
    )
    etag = client.head_object(Bucket=bucket, Key=key)["ETag"]
    recorder = PutRecorder(client)

    update_manifest(client, bucket, key, lambda manifest: None)

    assert recorder.conditions == []
    assert client.head_object(Bucket=bucket, Key=key)["ETag"] == etag


def test_a_no_op_on_a_missing_manifest_creates_nothing(connect, bucket):
    client = connect()
    key = "api/manifest.prd.yaml"

    update_manifest(client, bucket, key, lambda manifest: None)

    assert read_manifest(client, bucket, key) == (Manifest(), None)


def test_unknown_keys_survive_an_update_in_the_store(connect, bucket):
    client = connect()
    key = "api/manifest.prd.yaml"
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=b"deployments:\n  old:\n    sha: 695e0514\n    ticket: 42\n"
        b"retention: {days: 30}\n",
    )

    update_manifest(client, bucket, key, set_host("new", "abc", "amd64"))

    text = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert "retention: {days: 30}\n" in text
    assert "ticket: 42\n" in text
    assert 'sha: "695e0514"\n' in text


def test_concurrent_writers_lose_no_entry(connect, bucket):
    key = "api/manifest.prd.yaml"
    writers = 20
    clients = [connect() for _ in range(writers)]
    recorders = [PutRecorder(client) for client in clients]
    start = threading.Barrier(writers)

    def write(index: int) -> None:
        start.wait()
        update_manifest(
            clients[index],
            bucket,
            key,
            set_host(f"host-{index:02d}.example", f"sha{index}"),
        )

    with ThreadPoolExecutor(max_workers=writers) as pool:
        futures = [pool.submit(write, index) for index in range(writers)]
    for future in futures:
        future.result()

    manifest, _ = read_manifest(clients[0], bucket, key)
    assert {host: e.sha for host, e in manifest.deployments.items()} == {
        f"host-{index:02d}.example": f"sha{index}" for index in range(writers)
    }
    statuses = [status for r in recorders for status in r.statuses]
    assert statuses.count(412) > 0
    assert statuses.count(200) == writers
    assert all(c for r in recorders for c in r.conditions)


def test_a_manifest_deleted_behind_the_writer_is_recreated(connect, bucket):
    client = connect()
    other = connect()
    key = "api/manifest.prd.yaml"
    update_manifest(client, bucket, key, set_host("a.example", "one"))
    calls = []

    def change(manifest: Manifest) -> None:
        if not calls:
            other.delete_object(Bucket=bucket, Key=key)
        calls.append(dict(manifest.deployments))
        set_host("b.example", "two")(manifest)

    update_manifest(client, bucket, key, change)

    assert len(calls) == 2
    manifest, _ = read_manifest(client, bucket, key)
    assert sorted(manifest.deployments) == ["b.example"]


def test_conflicts_that_never_stop_raise_manifest_conflict(connect, bucket):
    client = connect()
    other = connect()
    key = "api/manifest.prd.yaml"
    calls = []

    def change(manifest: Manifest) -> None:
        calls.append(time.monotonic())
        other.put_object(
            Bucket=bucket,
            Key=key,
            Body=f"deployments: {{x: {{sha: s{len(calls)}}}}}\n".encode(),
        )
        set_host("a.example", "mine")(manifest)

    with pytest.raises(ManifestConflict) as caught:
        update_manifest(client, bucket, key, change, attempts=3)

    assert len(calls) == 3
    message = str(caught.value)
    assert f"s3://{bucket}/{key}" in message
    assert "3 attempts" in message


def test_wrong_credentials_become_a_store_error(s3_server, bucket):
    client = make_client(
        endpoint_url=s3_server.endpoint,
        access_key_id=s3_server.access_key,
        secret_access_key="not-the-secret",
    )
    key = "api/manifest.prd.yaml"

    with pytest.raises(StoreError) as caught:
        read_manifest(client, bucket, key)

    message = str(caught.value)
    assert f"s3://{bucket}/{key}" in message
    assert "SignatureDoesNotMatch" in message
    assert re.search(r"request id [0-9A-F]{8,}", message)
    assert "access key" in message


def test_a_missing_bucket_is_a_store_error_not_a_conflict(connect):
    client = connect()

    with pytest.raises(StoreError) as caught:
        update_manifest(
            client, "no-such-bucket-x", "api/m.yaml", set_host("a", "b")
        )

    assert not isinstance(caught.value, ManifestConflict)
    assert "NoSuchBucket" in str(caught.value)
    assert "no-such-bucket-x" in str(caught.value)


SERVICE_OBJECTS = {
    "api/manifest.prd.yaml": (
        "deployments:\n  a: {sha: 0123456}\n  b: {sha: 1e100}\n"
    ),
    "api/manifest.qa.yaml": "deployments: {c: {sha: '695e0514'}}\n",
    "api/manifest.eu.prd.yaml": "deployments: {d: {sha: dotted}}\n",
    "api/manifest.prd.yaml.bak": "deployments: {e: {sha: backup}}\n",
    "api/manifest.notes.txt": "not yaml at all: [\n",
    "api/0123456.tar.gz": "artifact",
    "apiv2/manifest.prd.yaml": "deployments: {f: {sha: other}}\n",
}


def store_objects(client, bucket, objects: dict[str, str]) -> None:
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body.encode())


def test_pinned_shas_reads_every_manifest_of_the_service(connect, bucket):
    client = connect()
    store_objects(client, bucket, SERVICE_OBJECTS)

    shas = pinned_shas(client, bucket, "api")

    assert shas == {"0123456", "1e100", "695e0514", "dotted"}


def test_read_environments_names_manifests_by_environment(connect, bucket):
    client = connect()
    store_objects(client, bucket, SERVICE_OBJECTS)

    environments = read_environments(client, bucket, "api")

    assert list(environments) == ["eu.prd", "prd", "qa"]
    assert environments["qa"].deployments["c"].sha == "695e0514"


def test_a_malformed_manifest_stops_pinning(connect, bucket):
    client = connect()
    store_objects(
        client, bucket, {"api/manifest.prd.yaml": "deployments: [oops\n"}
    )

    with pytest.raises(StoreError, match="api/manifest.prd.yaml"):
        pinned_shas(client, bucket, "api")


def test_pinned_shas_of_a_service_without_manifests_is_empty(connect, bucket):
    assert pinned_shas(connect(), bucket, "api") == set()
