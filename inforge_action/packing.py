"""Reproducible artifact tarballs, and the checks run before unpacking one.

An artifact is a gzip'd PAX tar of the service's artifact directory. Entry
names are relative to that directory and carry no ``./`` prefix: the
top-level executable is ``run``, a nested file is ``lib/app.py``, and the
directory itself has no entry. Everything that varies between machines is
fixed, so the same tree packs to the same bytes on any runner with the
same zlib: entries sorted by name, owner ``root`` (0/0), modes 0755 for
directories and executables and 0644 for other files, every mtime the
given one, and a gzip header with neither file name nor timestamp.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from inforge_action.errors import InputError, PackError


log = logging.getLogger(__name__)

ARTIFACT_NAME = "artifact.tar.gz"
GZIP_LEVEL = 9
GIT_TIMEOUT_SECONDS = 30

# A symlink chain longer than this is treated as a loop, as the kernel's
# own limit does.
MAX_SYMLINK_HOPS = 40


@dataclass(frozen=True)
class PackedArtifact:
    """A packed tarball on disk and the facts the push step needs."""

    path: Path
    sha256: str
    size: int
    files: int
    has_run: bool


@dataclass(frozen=True)
class _Member:
    name: str
    path: Path
    kind: str
    mode: int
    target: str = ""


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, out) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self._out.write(view)
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self._out.flush()


def pack(artifact_dir: Path, dest_dir: Path, *, mtime: int) -> PackedArtifact:
    """Pack ``artifact_dir`` into ``dest_dir/artifact.tar.gz``.

    The tarball is streamed to disk and hashed while it is written.
    ``has_run`` is false when the top has no executable ``run``; the
    caller warns, because the unit skips a release without one.
    """
    if mtime < 0:
        raise ValueError(f"mtime must not be negative, got {mtime}")
    root = _require_directory(artifact_dir)
    dest = Path(dest_dir).resolve() / ARTIFACT_NAME
    if dest.is_relative_to(root):
        raise PackError(
            f"the tarball {dest} would be written inside the artifact "
            f"directory {root} and pack itself; pack into a temporary "
            "directory instead"
        )

    members = list(_walk(root, ""))
    _check_symlinks(root, members)
    files = sum(1 for member in members if member.kind == "file")
    if files == 0:
        raise PackError(
            f"the artifact directory {root} holds no regular file; build "
            "the artifact into it first, or point artifact_path in "
            "deployments/<service>.yaml at the build output"
        )

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        digest, size = _write_tarball(members, dest, mtime)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise

    return PackedArtifact(
        path=dest,
        sha256=digest,
        size=size,
        files=files,
        has_run=_has_executable_run(members),
    )


def _require_directory(artifact_dir: Path) -> Path:
    path = Path(artifact_dir)
    if not path.exists():
        raise PackError(
            f"the artifact directory {path} does not exist; build the "
            "artifact before this step, or set artifact_path in "
            "deployments/<service>.yaml to where the build writes it"
        )
    if not path.is_dir():
        raise PackError(
            f"the artifact path {path} is a file, not a directory; set "
            "artifact_path in deployments/<service>.yaml to the directory "
            "that holds `run` and the rest of the payload"
        )
    return path.resolve()


def _walk(directory: Path, prefix: str) -> Iterator[_Member]:
    # Names are ordered by their bytes, so the order does not depend on
    # the locale or on the order the file system lists them in.
    try:
        names = sorted(os.listdir(directory), key=os.fsencode)
    except OSError as error:
        raise PackError(
            f"cannot list {directory}: {error.strerror}; make the artifact "
            "directory readable by the runner"
        ) from error

    for name in names:
        path = directory / name
        relative = f"{prefix}{name}"
        try:
            info = os.lstat(path)
            target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
        except OSError as error:
            raise PackError(
                f"cannot inspect {path}: {error.strerror}; make the "
                "artifact directory readable by the runner"
            ) from error
        if stat.S_ISDIR(info.st_mode):
            yield _Member(relative, path, "dir", 0o755)
            yield from _walk(path, f"{relative}/")
        elif stat.S_ISREG(info.st_mode):
            yield _Member(relative, path, "file", _file_mode(info.st_mode))
        elif stat.S_ISLNK(info.st_mode):
            yield _Member(relative, path, "symlink", 0o777, target)
        else:
            raise PackError(
                f"{path} is a {_describe_kind(info.st_mode)}; an artifact "
                "holds only regular files, directories and symlinks, so "
                "remove it from the artifact directory"
            )


def _file_mode(mode: int) -> int:
    return 0o755 if mode & 0o111 else 0o644


def _describe_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "named pipe (fifo)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return f"special file (mode {stat.filemode(mode)})"


def _check_symlinks(root: Path, members: list[_Member]) -> None:
    symlinks = {m.name: m.target for m in members if m.kind == "symlink"}
    for member in members:
        if member.kind != "symlink":
            continue
        if member.target.startswith("/"):
            raise PackError(
                f"the symlink {member.path} points to the absolute path "
                f"{member.target}, which the hosts may not have; make it "
                "relative to a file inside the artifact directory, or copy "
                "the file in"
            )
        parent = str(PurePosixPath(member.name).parent)
        joined = f"{parent}/{member.target}"
        if _resolve_inside(joined, symlinks) is None:
            raise PackError(
                f"the symlink {member.path} -> {member.target} leads "
                f"outside the artifact directory {root} (or loops); make "
                "it point to a file inside the directory, or copy the file in"
            )


def _resolve_inside(path: str, symlinks: dict[str, str]) -> list[str] | None:
    """The components ``path`` resolves to within the tree, or None.

    ``symlinks`` maps member names to their targets; resolution follows
    them the way the kernel would after extraction. None means the path
    climbs above the root, passes an absolute link, or loops.
    """
    resolved: list[str] = []
    pending = _components(path)[::-1]
    hops = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        target = symlinks.get("/".join([*resolved, part]))
        if target is None:
            resolved.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS or target.startswith("/"):
            return None
        pending.extend(_components(target)[::-1])
    return resolved


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _write_tarball(
    members: list[_Member], dest: Path, mtime: int
) -> tuple[str, int]:
    with dest.open("wb") as raw:
        writer = _HashingWriter(raw)
        # No file name and a zero timestamp in the gzip header: both would
        # otherwise differ from runner to runner.
        with gzip.GzipFile(
            filename="",
            mode="wb",
            fileobj=writer,
            compresslevel=GZIP_LEVEL,
            mtime=0,
        ) as compressed:
            with tarfile.TarFile(
                fileobj=compressed,
                mode="w",
                format=tarfile.PAX_FORMAT,
                encoding="utf-8",
            ) as tar:
                for member in members:
                    _add_member(tar, member, mtime)
    return writer.digest.hexdigest(), writer.size


def _add_member(tar: tarfile.TarFile, member: _Member, mtime: int) -> None:
    info = tarfile.TarInfo(member.name)
    info.mode = member.mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"

    if member.kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        return
    if member.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = member.target
        tar.addfile(info)
        return

    # O_NOFOLLOW and the fstat check keep a file swapped for a link or a
    # device after the walk from smuggling other content in.
    try:
        descriptor = os.open(member.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(descriptor, "rb") as source:
            status = os.fstat(source.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise PackError(
                    f"{member.path} stopped being a regular file while it "
                    "was packed; make sure the build has finished before "
                    "this step"
                )
            info.size = status.st_size
            tar.addfile(info, source)
    except OSError as error:
        raise PackError(
            f"cannot read {member.path}: {error}; make sure the build has "
            "finished and nothing changes the artifact directory while it "
            "is packed"
        ) from error


def _has_executable_run(members: list[_Member]) -> bool:
    # A top-level `run` symlink counts when it leads to an executable
    # file in the tree: the unit executes whatever the path resolves to.
    by_name = {member.name: member for member in members}
    symlinks = {m.name: m.target for m in members if m.kind == "symlink"}
    resolved = _resolve_inside("run", symlinks)
    if resolved is None:
        return False
    member = by_name.get("/".join(resolved))
    return (
        member is not None and member.kind == "file" and member.mode == 0o755
    )


def check_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Refuse an archive whose members could land outside its directory.

    Run before extracting or describing a downloaded artifact: absolute
    names, ``..`` components, links that lead out of the tree (through
    other links too) and anything but files, directories and links are
    refused with ``PackError``; the members are returned otherwise.
    Extract with ``filter="data"`` as well, which also drops setuid bits.
    """
    archive = tar.name or "the artifact"
    members = tar.getmembers()
    names = [_checked_name(archive, member) for member in members]
    symlinks = {
        name: member.linkname
        for name, member in zip(names, members, strict=True)
        if member.issym()
    }

    for name, member in zip(names, members, strict=True):
        problem = _member_problem(name, member, symlinks)
        if problem:
            raise PackError(
                f"{archive}: the member {member.name!r} {problem}; the "
                "archive was not made by inforge-action or was tampered "
                "with, so push it again from a clean build"
            )
    return members


def _checked_name(archive: str, member: tarfile.TarInfo) -> str:
    # Archives made with `tar -C dir .` name their members `./run`; that
    # is the same place as `run`, so both spellings are accepted.
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise PackError(
            f"{archive}: the member {name!r} would be written outside the "
            "extraction directory; the archive was not made by "
            "inforge-action or was tampered with, so push it again from a "
            "clean build"
        )
    return "/".join(_components(name))


def _member_problem(
    name: str, member: tarfile.TarInfo, symlinks: dict[str, str]
) -> str:
    kinds = (member.isreg(), member.isdir(), member.issym(), member.islnk())
    if not any(kinds):
        return f"is a {_describe_member_type(member)}"
    if not name and not member.isdir():
        return "names the extraction directory itself"

    parent = str(PurePosixPath(name).parent)
    if _resolve_inside(parent, symlinks) is None:
        return "is written through a link that leads outside the archive"

    target = member.linkname
    if member.issym():
        if target.startswith("/"):
            return f"is a symlink to the absolute path {target!r}"
        if _resolve_inside(f"{parent}/{target}", symlinks) is None:
            return f"is a symlink to {target!r}, outside the archive"
    if member.islnk():
        # A hard link's target is named from the archive root.
        if target.startswith("/") or ".." in target.split("/"):
            return f"is a hard link to {target!r}, outside the archive"
        if _resolve_inside(target, symlinks) is None:
            return f"is a hard link to {target!r}, outside the archive"
    return ""


def _describe_member_type(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "named pipe (fifo)"
    return f"member of unsupported type {member.type!r}"


def source_date_epoch(env_value: str | None, repo_dir: Path, sha: str) -> int:
    """The mtime stamped on every entry of the tarball.

    ``SOURCE_DATE_EPOCH`` wins when set; otherwise it is the commit time
    of ``sha``, so rebuilding a commit gives the same bytes. When git
    cannot tell, the time is 0 and a warning says why.
    """
    if env_value is not None and env_value.strip():
        value = env_value.strip()
        if not re.fullmatch(r"[0-9]+", value):
            raise InputError(
                f"SOURCE_DATE_EPOCH is {env_value!r}, not a whole number of "
                "seconds since 1970; set it to an integer such as the "
                "output of `git log -1 --format=%ct`, or unset it"
            )
        return int(value)

    # The workspace of a container action belongs to another uid, which
    # git refuses to read unless the directory is named as safe.
    argv = [
        "git", "-c", f"safe.directory={Path(repo_dir).resolve()}",
        "-C", str(repo_dir), "log", "-1", "--format=%ct",
        "--end-of-options", sha, "--",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError:
        return _fall_back_to_zero(sha, repo_dir, "git is not installed")
    except subprocess.TimeoutExpired:
        return _fall_back_to_zero(
            sha, repo_dir, f"git log took over {GIT_TIMEOUT_SECONDS}s"
        )

    output = result.stdout.strip()
    if result.returncode != 0:
        tail = " ".join(result.stderr.strip().splitlines()[-3:])
        reason = f"git log exited with {result.returncode}: {tail}"
        return _fall_back_to_zero(sha, repo_dir, reason)
    if not re.fullmatch(r"[0-9]+", output):
        reason = f"git log printed {output!r} instead of a commit time"
        return _fall_back_to_zero(sha, repo_dir, reason)
    return int(output)


def _fall_back_to_zero(sha: str, repo_dir: Path, reason: str) -> int:
    log.warning(
        "cannot read the commit time of %s in %s (%s); stamping the "
        "artifact with mtime 0. Set SOURCE_DATE_EPOCH, or check out the "
        "commit (actions/checkout) before this step.",
        sha,
        repo_dir,
        reason,
    )
    return 0
