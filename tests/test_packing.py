import gzip
import hashlib
import io
import logging
import os
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from inforge_action.errors import InputError, PackError
from inforge_action.packing import check_members, pack, source_date_epoch


MTIME = 1_700_000_000


def build_tree(root: Path, *, seed: int) -> Path:
    """The same artifact tree, made with varying on-disk metadata.

    ``seed`` changes creation order, permission bits and timestamps, none
    of which may reach the tarball.
    """
    files = {
        "run": b"#!/bin/sh\nexec python3 lib/app.py\n",
        "lib/app.py": b"print('hello')\n",
        "lib/data/table.csv": b"a,b\n1,2\n",
        "bin/tool": b"#!/bin/sh\n",
        "\u00fcml\u00e4ut.txt": b"unicode name\n",
    }
    executable = {"run", "bin/tool"}
    order = sorted(files) if seed % 2 else sorted(files, reverse=True)
    (root / "empty").mkdir(parents=True)
    for name in order:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[name])
        if name in executable:
            path.chmod(0o700 if seed % 2 else 0o751)
        else:
            path.chmod(0o600 if seed % 2 else 0o664)
        os.utime(path, (seed * 1000, seed * 1000))
    (root / "lib" / "current").symlink_to("data")
    (root / "tool").symlink_to("bin/tool")
    (root / "lib").chmod(0o700 if seed % 2 else 0o775)
    return root


def read_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return tar.getmembers()


def test_same_tree_packs_to_same_bytes_anywhere(tmp_path):
    first = build_tree(tmp_path / "one" / "dist", seed=1)
    second = build_tree(tmp_path / "elsewhere" / "deeper" / "dist", seed=2)

    a = pack(first, tmp_path / "out-a", mtime=MTIME)
    b = pack(second, tmp_path / "out-b", mtime=MTIME)

    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.sha256 == b.sha256


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_on_disk_does_not_reach_the_tarball(tmp_path):
    first = build_tree(tmp_path / "one", seed=1)
    second = build_tree(tmp_path / "two", seed=1)
    for path in second.rglob("*"):
        os.lchown(path, 1234, 5678)

    a = pack(first, tmp_path / "out-a", mtime=MTIME)
    b = pack(second, tmp_path / "out-b", mtime=MTIME)

    assert a.path.read_bytes() == b.path.read_bytes()


def test_another_mtime_gives_other_bytes(tmp_path):
    tree = build_tree(tmp_path / "dist", seed=1)

    a = pack(tree, tmp_path / "out-a", mtime=MTIME)
    b = pack(tree, tmp_path / "out-b", mtime=MTIME + 1)

    assert a.sha256 != b.sha256


def test_entries_are_sorted_relative_names(tmp_path):
    tree = build_tree(tmp_path / "dist", seed=2)

    packed = pack(tree, tmp_path / "out", mtime=MTIME)

    assert [member.name for member in read_members(packed.path)] == [
        "bin",
        "bin/tool",
        "empty",
        "lib",
        "lib/app.py",
        "lib/current",
        "lib/data",
        "lib/data/table.csv",
        "run",
        "tool",
        "\u00fcml\u00e4ut.txt",
    ]


def test_metadata_is_normalised(tmp_path):
    tree = build_tree(tmp_path / "dist", seed=2)

    packed = pack(tree, tmp_path / "out", mtime=MTIME)

    modes = {}
    for member in read_members(packed.path):
        assert (member.uid, member.gid) == (0, 0)
        assert (member.uname, member.gname) == ("root", "root")
        assert member.mtime == MTIME
        modes[member.name] = member.mode
    assert modes["run"] == 0o755
    assert modes["bin/tool"] == 0o755
    assert modes["lib/app.py"] == 0o644
    assert modes["lib"] == 0o755
    assert modes["empty"] == 0o755


def test_symlinks_inside_the_tree_stay_symlinks(tmp_path):
    tree = build_tree(tmp_path / "dist", seed=1)

    packed = pack(tree, tmp_path / "out", mtime=MTIME)

    links = {
        member.name: member.linkname
        for member in read_members(packed.path)
        if member.issym()
    }
    assert links == {"lib/current": "data", "tool": "bin/tool"}


def test_gzip_header_has_no_name_and_no_time(tmp_path):
    tree = build_tree(tmp_path / "dist", seed=1)

    packed = pack(tree, tmp_path / "out", mtime=MTIME)

    header = packed.path.read_bytes()[:10]
    flags, stamp = header[3], header[4:8]
    assert flags == 0
    assert stamp == b"\0\0\0\0"


def test_reported_digest_size_and_count_match_the_file(tmp_path):
    tree = build_tree(tmp_path / "dist", seed=1)

    packed = pack(tree, tmp_path / "out", mtime=MTIME)

    data = packed.path.read_bytes()
    assert packed.sha256 == hashlib.sha256(data).hexdigest()
    assert packed.size == len(data)
    assert packed.files == 5
    assert packed.path == (tmp_path / "out" / "artifact.tar.gz").resolve()
    assert gzip.decompress(data)[:3] == b"bin"


def test_a_large_file_round_trips(tmp_path):
    tree = tmp_path / "dist"
    tree.mkdir()
    payload = os.urandom(3 * 1024 * 1024)
    (tree / "blob").write_bytes(payload)

    packed = pack(tree, tmp_path / "out", mtime=MTIME)

    with tarfile.open(packed.path, "r:gz") as tar:
        assert tar.extractfile("blob").read() == payload


def make_run(tree: Path, mode: int) -> None:
    (tree / "run").write_text("#!/bin/sh\n")
    (tree / "run").chmod(mode)


def link_run_to_app(tree: Path, mode: int) -> None:
    (tree / "bin").mkdir()
    (tree / "bin" / "app").write_text("#!/bin/sh\n")
    (tree / "bin" / "app").chmod(mode)
    (tree / "run").symlink_to("bin/app")


@pytest.mark.parametrize(
    ("arrange", "expected"),
    [
        pytest.param(lambda t: make_run(t, 0o755), True, id="executable"),
        pytest.param(lambda t: make_run(t, 0o744), True, id="owner-exec"),
        pytest.param(lambda t: make_run(t, 0o644), False, id="not-exec"),
        pytest.param(lambda t: None, False, id="absent"),
        pytest.param(lambda t: (t / "run").mkdir(), False, id="directory"),
        pytest.param(
            lambda t: link_run_to_app(t, 0o755), True, id="link-to-exec"
        ),
        pytest.param(
            lambda t: link_run_to_app(t, 0o644), False, id="link-to-plain"
        ),
        pytest.param(
            lambda t: (t / "run").symlink_to("nowhere"), False, id="dangling"
        ),
    ],
)
def test_has_run_reports_an_executable_run(tmp_path, arrange, expected):
    tree = tmp_path / "dist"
    tree.mkdir()
    (tree / "README").write_text("payload\n")
    arrange(tree)

    packed = pack(tree, tmp_path / "out", mtime=MTIME)

    assert packed.has_run is expected


def link_outside(tree: Path) -> Path:
    (tree / "lib").mkdir()
    (tree / "lib" / "secret").symlink_to("../../outside")
    return tree / "lib" / "secret"


def link_absolute(tree: Path) -> Path:
    (tree / "passwd").symlink_to("/etc/passwd")
    return tree / "passwd"


def link_through_link(tree: Path) -> Path:
    # Each link alone stays inside; followed together they climb out.
    (tree / "sub").mkdir()
    (tree / "sub" / "up").symlink_to("..")
    (tree / "escape").symlink_to("sub/up/..")
    return tree / "escape"


def link_loop(tree: Path) -> Path:
    (tree / "a").symlink_to("b")
    (tree / "b").symlink_to("a")
    return tree / "a"


def make_fifo(tree: Path) -> Path:
    os.mkfifo(tree / "pipe")
    return tree / "pipe"


def make_socket(tree: Path) -> Path:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tree / "sock"))
    return tree / "sock"


@pytest.mark.parametrize(
    ("arrange", "reason"),
    [
        pytest.param(link_outside, "outside", id="symlink-outside"),
        pytest.param(link_absolute, "absolute", id="symlink-absolute"),
        pytest.param(link_through_link, "outside", id="symlink-chain"),
        pytest.param(link_loop, "loops", id="symlink-loop"),
        pytest.param(make_fifo, "fifo", id="fifo"),
        pytest.param(make_socket, "socket", id="socket"),
    ],
)
def test_pack_refuses_unsafe_entries(tmp_path, arrange, reason):
    tree = tmp_path / "dist"
    tree.mkdir()
    (tree / "run").write_text("#!/bin/sh\n")
    offender = arrange(tree)

    with pytest.raises(PackError) as caught:
        pack(tree, tmp_path / "out", mtime=MTIME)

    assert str(offender) in str(caught.value)
    assert reason in str(caught.value)
    assert not (tmp_path / "out" / "artifact.tar.gz").exists()


def test_pack_refuses_a_tree_without_regular_files(tmp_path):
    tree = tmp_path / "dist"
    (tree / "only" / "dirs").mkdir(parents=True)
    (tree / "link").symlink_to("only")

    with pytest.raises(PackError, match="no regular file") as caught:
        pack(tree, tmp_path / "out", mtime=MTIME)

    assert str(tree) in str(caught.value)


def test_pack_refuses_a_missing_directory(tmp_path):
    missing = tmp_path / "dist"

    with pytest.raises(PackError, match="does not exist") as caught:
        pack(missing, tmp_path / "out", mtime=MTIME)

    assert str(missing) in str(caught.value)
    assert "artifact_path" in str(caught.value)


def test_pack_refuses_a_file(tmp_path):
    artifact = tmp_path / "dist"
    artifact.write_text("not a directory\n")

    with pytest.raises(PackError, match="not a directory") as caught:
        pack(artifact, tmp_path / "out", mtime=MTIME)

    assert str(artifact) in str(caught.value)


def test_pack_refuses_to_write_into_the_tree(tmp_path):
    tree = build_tree(tmp_path / "dist", seed=1)

    with pytest.raises(PackError, match="temporary directory"):
        pack(tree, tree / "out", mtime=MTIME)


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields):
    info = tarfile.TarInfo(name)
    info.type = kind
    for field, value in fields.items():
        setattr(info, field, value)
    return info


def write_archive(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            data = io.BytesIO(b"x" * info.size) if info.isreg() else None
            tar.addfile(info, data)
    return path


def check_archive(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return check_members(tar)


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        pytest.param([member("/etc/cron.d/x")], "outside", id="absolute"),
        pytest.param([member("../x")], "outside", id="dot-dot"),
        pytest.param([member("lib/../../x")], "outside", id="inner-dot-dot"),
        pytest.param(
            [member("passwd", tarfile.SYMTYPE, linkname="/etc/passwd")],
            "absolute",
            id="symlink-absolute",
        ),
        pytest.param(
            [member("lib/x", tarfile.SYMTYPE, linkname="../../x")],
            "outside",
            id="symlink-dot-dot",
        ),
        pytest.param(
            [member("x", tarfile.LNKTYPE, linkname="../x")],
            "hard link",
            id="hardlink-dot-dot",
        ),
        pytest.param(
            [member("x", tarfile.LNKTYPE, linkname="/etc/shadow")],
            "hard link",
            id="hardlink-absolute",
        ),
        pytest.param(
            [
                member("up", tarfile.SYMTYPE, linkname=".."),
                member("up/evil"),
            ],
            "outside",
            id="write-through-link",
        ),
        pytest.param(
            [
                member("sub", tarfile.DIRTYPE),
                member("sub/up", tarfile.SYMTYPE, linkname=".."),
                member("escape", tarfile.SYMTYPE, linkname="sub/up/.."),
            ],
            "outside",
            id="symlink-chain",
        ),
        pytest.param(
            [member("null", tarfile.CHRTYPE, devmajor=1, devminor=3)],
            "character device",
            id="char-device",
        ),
        pytest.param(
            [member("sda", tarfile.BLKTYPE, devmajor=8, devminor=0)],
            "block device",
            id="block-device",
        ),
        pytest.param([member("pipe", tarfile.FIFOTYPE)], "fifo", id="fifo"),
    ],
)
def test_check_members_refuses_escaping_members(tmp_path, members, reason):
    archive = write_archive(tmp_path / "evil.tar.gz", *members)

    with pytest.raises(PackError) as caught:
        check_archive(archive)

    assert reason in str(caught.value)
    assert str(archive) in str(caught.value)


def test_check_members_returns_the_members_of_a_packed_artifact(tmp_path):
    tree = build_tree(tmp_path / "dist", seed=1)
    packed = pack(tree, tmp_path / "out", mtime=MTIME)

    members = check_archive(packed.path)

    assert "run" in [info.name for info in members]
    assert len(members) == 11


def test_check_members_accepts_dot_slash_names_and_inner_links(tmp_path):
    archive = write_archive(
        tmp_path / "cli.tar.gz",
        member("./", tarfile.DIRTYPE),
        member("./run", size=3),
        member("./lib", tarfile.DIRTYPE),
        member("./lib/current", tarfile.SYMTYPE, linkname="../run"),
        member("./copy", tarfile.LNKTYPE, linkname="./run"),
    )

    members = check_archive(archive)

    assert [info.name for info in members] == [
        ".",
        "./run",
        "./lib",
        "./lib/current",
        "./copy",
    ]


def git(repo: Path, *args: str, **env: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    return result.stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A real git repository with one commit made at a known time."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    (path / "file").write_text("content\n")
    git(path, "add", "file")
    stamp = f"@{MTIME} +0000"
    git(
        path,
        "-c", "user.name=Test",
        "-c", "user.email=test@example.invalid",
        "commit", "-q", "-m", "first",
        GIT_AUTHOR_DATE=stamp,
        GIT_COMMITTER_DATE=stamp,
    )  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("1700000000", 1_700_000_000, id="plain"),
        pytest.param("0", 0, id="zero"),
        pytest.param(" 42\n", 42, id="whitespace"),
    ],
)
def test_source_date_epoch_prefers_the_variable(repo, value, expected):
    sha = git(repo, "rev-parse", "HEAD")

    assert source_date_epoch(value, repo, sha) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("yesterday", id="word"),
        pytest.param("-5", id="negative"),
        pytest.param("1e9", id="exponent"),
        pytest.param("1_000", id="underscore"),
        pytest.param("12.5", id="fraction"),
    ],
)
def test_source_date_epoch_refuses_a_malformed_variable(repo, value):
    with pytest.raises(InputError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch(value, repo, "HEAD")


@pytest.mark.parametrize(
    "value", [pytest.param(None, id="unset"), pytest.param("", id="empty")]
)
def test_source_date_epoch_reads_the_commit_time(repo, value):
    sha = git(repo, "rev-parse", "HEAD")

    assert source_date_epoch(value, repo, sha) == MTIME


def test_source_date_epoch_falls_back_for_an_unknown_commit(repo, caplog):
    missing = "0" * 40

    with caplog.at_level(logging.WARNING, logger="inforge_action.packing"):
        epoch = source_date_epoch(None, repo, missing)

    assert epoch == 0
    assert missing in caplog.text
    assert "git log exited with 128" in caplog.text


def test_source_date_epoch_falls_back_outside_a_repository(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="inforge_action.packing"):
        epoch = source_date_epoch(None, tmp_path, "HEAD")

    assert epoch == 0
    assert "not a git repository" in caplog.text


def test_source_date_epoch_falls_back_without_git(
    repo, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))

    with caplog.at_level(logging.WARNING, logger="inforge_action.packing"):
        epoch = source_date_epoch(None, repo, "HEAD")

    assert epoch == 0
    assert "git is not installed" in caplog.text
