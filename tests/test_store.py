import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from inforge_action import store
from inforge_action.errors import ArtifactConflict, ArtifactMissing, StoreError


def make_client(s3_server, secret=None):
    return store.make_client(
        endpoint_url=s3_server.endpoint,
        access_key_id=s3_server.access_key,
        secret_access_key=secret or s3_server.secret_key,
    )


def write_payload(path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_client_sends_no_checksum_headers_r2_rejects(s3_server, bucket):
    client = make_client(s3_server)
    sent = []
    client.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **_: sent.append(dict(request.headers)),
    )

    client.put_object(Bucket=bucket, Key="probe", Body=b"payload")

    names = {name.lower() for name in sent[0]}
    assert not [n for n in names if n.startswith("x-amz-checksum-")]
    assert "x-amz-sdk-checksum-algorithm" not in names
    config = client.meta.config
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.s3["addressing_style"] == "path"
    assert client.meta.region_name == "auto"


def test_ambient_aws_variables_do_not_change_the_client(
    s3_server, bucket, monkeypatch
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ambient-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "ambient-token")
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")

    client = make_client(s3_server)
    client.put_object(Bucket=bucket, Key="ambient", Body=b"x")

    assert client.meta.endpoint_url == s3_server.endpoint
    assert client.meta.config.request_checksum_calculation == "when_required"


def test_wrong_secret_names_the_bucket_and_the_input(s3_server, bucket):
    client = make_client(s3_server, secret="not-the-secret")

    with pytest.raises(StoreError) as caught:
        store.list_releases(client, bucket, "api")

    message = str(caught.value)
    assert bucket in message
    assert "SignatureDoesNotMatch" in message
    assert "r2-secret-access-key" in message
    assert s3_server.secret_key not in message


def test_upload_then_download_round_trips_the_bytes(
    s3_server, bucket, tmp_path
):
    client = make_client(s3_server)
    digest = write_payload(tmp_path / "a.tar.gz", b"release bytes" * 1000)
    key = store.artifact_key("api", "4f2a9c1", "")

    uploaded = store.upload_artifact(
        client, bucket, key, tmp_path / "a.tar.gz", digest
    )
    fetched = store.download_artifact(client, bucket, key, tmp_path / "b")

    assert uploaded.created
    assert fetched == digest
    assert (tmp_path / "b").read_bytes() == (
        tmp_path / "a.tar.gz"
    ).read_bytes()


def test_identical_repush_is_a_no_op(s3_server, bucket, tmp_path):
    client = make_client(s3_server)
    digest = write_payload(tmp_path / "a", b"same bytes")
    key = "api/abc.tar.gz"
    store.upload_artifact(client, bucket, key, tmp_path / "a", digest)
    etag = client.head_object(Bucket=bucket, Key=key)["ETag"]

    again = store.upload_artifact(client, bucket, key, tmp_path / "a", digest)

    assert not again.created
    assert client.head_object(Bucket=bucket, Key=key)["ETag"] == etag


def test_other_bytes_for_an_existing_key_are_refused(
    s3_server, bucket, tmp_path
):
    client = make_client(s3_server)
    first = write_payload(tmp_path / "a", b"first build")
    second = write_payload(tmp_path / "b", b"second build")
    key = "api/abc.tar.gz"
    store.upload_artifact(client, bucket, key, tmp_path / "a", first)

    with pytest.raises(ArtifactConflict) as caught:
        store.upload_artifact(client, bucket, key, tmp_path / "b", second)

    assert first in str(caught.value) and second in str(caught.value)
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == b"first build"


def test_a_racing_writer_cannot_overwrite(s3_server, bucket, tmp_path):
    # The HEAD saw nothing, then another push won: the conditional PUT
    # must refuse instead of overwriting.
    client = make_client(s3_server)
    mine = write_payload(tmp_path / "a", b"mine")
    key = "api/race.tar.gz"
    original_head = store.head_artifact
    calls = []

    def head_then_race(client_, bucket_, key_):
        calls.append(key_)
        if len(calls) == 1:
            client_.put_object(
                Bucket=bucket_, Key=key_, Body=b"theirs",
                Metadata={"sha256": "0" * 64},
            )  # fmt: skip
            return None
        return original_head(client_, bucket_, key_)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "head_artifact", head_then_race)
        with pytest.raises(ArtifactConflict):
            store.upload_artifact(client, bucket, key, tmp_path / "a", mine)

    assert (
        client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"theirs"
    )


def test_large_artifact_goes_up_in_parallel_parts(s3_server, bucket, tmp_path):
    client = make_client(s3_server)
    data = bytes(range(256)) * (4 * 1024 * 70)  # 70 MiB, over the threshold
    digest = write_payload(tmp_path / "big", data)
    parts = []
    client.meta.events.register(
        "before-call.s3.UploadPart", lambda **_: parts.append(1)
    )

    store.upload_artifact(client, bucket, "api/big.tar.gz", tmp_path / "big",
                          digest)  # fmt: skip
    fetched = store.download_artifact(
        client, bucket, "api/big.tar.gz", tmp_path / "back"
    )

    assert len(parts) == 5
    assert fetched == digest


def test_download_of_a_missing_sha_says_what_to_do(
    s3_server, bucket, tmp_path
):
    client = make_client(s3_server)

    with pytest.raises(ArtifactMissing) as caught:
        store.download_artifact(
            client, bucket, "api/nope.tar.gz", tmp_path / "x"
        )

    assert "api/nope.tar.gz" in str(caught.value)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param("api/abc.tar.gz", ("abc", ""), id="neutral"),
        pytest.param("api/abc-amd64.tar.gz", ("abc", "amd64"), id="amd64"),
        pytest.param("api/abc-arm64.tar.gz", ("abc", "arm64"), id="arm64"),
        pytest.param("api/preview-42.tar.gz", ("preview-42", ""), id="dashes"),
        pytest.param(
            "api/preview-42-arm64.tar.gz",
            ("preview-42", "arm64"),
            id="dashes-and-arch",
        ),
        pytest.param("api/abc-x86.tar.gz", ("abc-x86", ""), id="not-an-arch"),
        pytest.param("api/manifest.prd.yaml", None, id="manifest"),
        pytest.param("web/abc.tar.gz", None, id="other-service"),
        pytest.param("api/sub/abc.tar.gz", None, id="nested"),
    ],
)
def test_artifact_keys_parse_back(key, expected):
    assert store.parse_artifact_key("api", key) == expected


def release(sha, minutes_ago, arches=("",)):
    when = datetime(2026, 1, 1, tzinfo=UTC) - timedelta(minutes=minutes_ago)
    variants = tuple(
        store.Variant(a, store.artifact_key("api", sha, a), 1, when)
        for a in arches
    )
    return store.Release(sha, variants)


def test_prune_keeps_pinned_and_the_newest_unpinned():
    releases = [release(f"s{i}", i) for i in range(6)]  # s0 is newest

    doomed = store.choose_prunable(releases, keep=2, pinned={"s4", "s0"})

    assert [r.sha for r in doomed] == ["s3", "s5"]


def test_prune_ranks_a_sha_by_its_newest_variant():
    old_amd = release("multi", 50, ("amd64",))
    new_arm = release("multi", 1, ("arm64",))
    multi = store.Release("multi", old_amd.variants + new_arm.variants)
    releases = [release("mid", 10), multi]

    doomed = store.choose_prunable(releases, keep=1, pinned=set())

    assert [r.sha for r in doomed] == ["mid"]


def test_listing_one_sha_skips_longer_shas_that_share_its_start(
    s3_server, bucket
):
    client = make_client(s3_server)
    for key in ("api/abc.tar.gz", "api/abc-arm64.tar.gz", "api/abcd.tar.gz"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")

    found = store.list_releases(client, bucket, "api", "abc")

    assert [(r.sha, r.arches) for r in found] == [("abc", ["", "arm64"])]
