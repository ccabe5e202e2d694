"""The manifest's copy in the service repo: one commit per change, pushed.

The commit is built with git's plumbing on top of the branch's tip as
origin has it, so a detached HEAD, a pull request's merge checkout or a
concurrent push never needs a rebase of the checkout: on a rejected push
the same file is committed again on the new tip. The working tree gets
the file too, and HEAD follows when it was that tip.

A container action runs as root in a workspace that belongs to the
runner's user. Git refuses such a repository unless told it is safe, so
every command names it with ``-c safe.directory``; whatever git or this
module wrote is handed back to the workspace's owner afterwards, so the
next step or checkout is not locked out of ``.git``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import GitError
from .inputs import Runner
from .platform import git_environment


log = logging.getLogger(__name__)

BOT_NAME = "github-actions[bot]"
BOT_EMAIL = "41898282+github-actions[bot]@users.noreply.github.com"
REMOTE = "origin"
GIT_TIMEOUT_SECONDS = 120

# Repository hooks and background maintenance would run as root, and
# maintenance could write files after ownership has been handed back.
_QUIET_CONFIG = (
    "core.hooksPath=/dev/null",
    "gc.auto=0",
    "maintenance.auto=false",
    "fetch.writeCommitGraph=false",
)
_REJECTED = ("(fetch first)", "(non-fast-forward)")
_USERINFO = re.compile(r"(://)[^/@\s]+@")


def manifest_message(
    service: str, env: str, sha: str, hosts: Sequence[str]
) -> str:
    """The manifest commit's message; ``[skip ci]`` starts no workflow."""
    listed = "\n".join(f"- {host}" for host in hosts) or "- none"
    return (
        f"Deploy {service} {sha} to {env} [skip ci]\n\n"
        f"Service: {service}\nEnvironment: {env}\nSHA: {sha}\n"
        f"Hosts:\n{listed}\n"
    )


def target_branch(runner: Runner) -> str:
    """The branch this run is on, which receives the manifest commit."""
    if runner.head_ref:
        return runner.head_ref
    if runner.ref.startswith("refs/heads/"):
        return runner.ref_name or runner.ref.removeprefix("refs/heads/")
    if runner.ref.startswith("refs/tags/"):
        tag = runner.ref_name or runner.ref.removeprefix("refs/tags/")
        raise GitError(
            f"the run is on the tag {tag!r}, and a manifest commit needs a "
            "branch to push to; deploy from a branch (a push or a "
            "workflow_dispatch on a branch), or set `commit-manifest: "
            "false` for tag runs"
        )
    raise GitError(
        f"cannot tell which branch receives the manifest commit: "
        f"GITHUB_REF is {runner.ref!r} and GITHUB_HEAD_REF is empty; run "
        "on a branch or a pull request, or set `commit-manifest: false`"
    )


def commit_manifest(
    workspace: Path,
    *,
    path: str,
    text: str,
    message: str,
    token: str,
    runner: Runner,
    attempts: int = 5,
) -> str | None:
    """Commit ``text`` as ``path`` on the run's branch and push it.

    Returns the new commit's SHA, or None when the branch already holds
    exactly this text. ``token`` authenticates the push as an HTTP
    header; without it, credentials the checkout left in the repo's
    config are used.
    """
    relative = _checked_path(path)
    branch = target_branch(runner)
    if not workspace.is_dir():
        raise GitError(
            f"the workspace {workspace} is not a directory; check "
            "GITHUB_WORKSPACE, or set `commit-manifest: false`"
        )
    repo = _Repo(workspace)
    owner = _Owner.of(workspace)
    written: list[Path] = []
    git_dir: Path | None = None
    try:
        git_dir = Path(repo.git("rev-parse", "--absolute-git-dir").strip())
        repo.env = _push_environment(repo, token)
        written = _write_file(workspace, relative, text)
        return _commit_until_pushed(
            repo, branch, relative, text, message, max(1, attempts)
        )
    finally:
        if owner.needs_handover:
            owner.hand_over(written)
            if git_dir is not None:
                owner.hand_over_tree(git_dir)


@dataclass
class _Owner:
    """Who owns the workspace, so root's files can be handed back."""

    uid: int
    gid: int
    needs_handover: bool

    @classmethod
    def of(cls, workspace: Path) -> _Owner:
        stat = workspace.stat()
        euid = os.geteuid()
        return cls(stat.st_uid, stat.st_gid, euid == 0 and stat.st_uid != 0)

    def hand_over(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self._chown_if_mine(path)

    def hand_over_tree(self, root: Path) -> None:
        self._chown_if_mine(root)
        for parent, dirs, files in os.walk(root):
            for name in (*dirs, *files):
                self._chown_if_mine(Path(parent, name))

    def _chown_if_mine(self, path: Path) -> None:
        try:
            if path.lstat().st_uid == os.geteuid():
                os.lchown(path, self.uid, self.gid)
        except FileNotFoundError:
            return  # a lock or temporary file git removed meanwhile


class _Repo:
    """Git commands in the workspace, each marking it as a safe directory."""

    def __init__(self, workspace: Path):
        self.workspace = workspace.resolve()
        self.env = git_environment("")

    def run(
        self,
        *args: str,
        input_text: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        config = [f"safe.directory={self.workspace}", *_QUIET_CONFIG]
        argv = ["git"]
        for item in config:
            argv += ["-c", item]
        argv += ["-C", str(self.workspace), *args]
        try:
            return subprocess.run(
                argv,
                input=input_text,
                env={**self.env, **(extra_env or {})},
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                timeout=GIT_TIMEOUT_SECONDS,
                check=False,
            )
        except FileNotFoundError as error:
            raise GitError(
                "git is not installed; install it to commit the manifest, "
                "or set `commit-manifest: false`"
            ) from error
        except subprocess.TimeoutExpired as error:
            raise GitError(
                f"git {args[0]} in {self.workspace} took over "
                f"{GIT_TIMEOUT_SECONDS} s; check the network to {REMOTE}"
            ) from error

    def git(self, *args: str, **kwargs) -> str:
        done = self.run(*args, **kwargs)
        if done.returncode != 0:
            raise _failure(self.workspace, args, done.stderr)
        return done.stdout


def _failure(workspace: Path, args: Sequence[str], stderr: str) -> GitError:
    tail = _tail(stderr)
    if "dubious ownership" in stderr:
        return GitError(
            f"git refused {workspace} as a repository owned by another "
            "user; GITHUB_WORKSPACE must be the root of the checked-out "
            f"repository. git said: {tail}"
        )
    if "not a git repository" in stderr:
        return GitError(
            f"{workspace} is not a git repository; check the service repo "
            "out with actions/checkout before deploying, or set "
            f"`commit-manifest: false`. git said: {tail}"
        )
    return GitError(f"git {args[0]} in {workspace} failed: {tail}")


def _tail(stderr: str, lines: int = 5) -> str:
    kept = stderr.strip().splitlines()[-lines:]
    return _USERINFO.sub(r"\1", " / ".join(kept)) or "no message"


def _checked_path(path: str) -> PurePosixPath:
    relative = PurePosixPath(path)
    if relative.is_absolute() or ".." in relative.parts or not relative.name:
        raise GitError(
            f"manifest path {path!r} must be relative to the repository "
            "root and stay inside it; check `deployments-dir`"
        )
    return relative


def _push_environment(repo: _Repo, token: str) -> dict[str, str]:
    """Git's environment: the bot as author, the token as a header.

    actions/checkout leaves its own header in the repo's config under the
    server's URL; `git_environment` sets the token for origin's exact URL
    so that it wins.
    """
    env = git_environment(token, _origin_url(repo))
    env.update(
        GIT_AUTHOR_NAME=BOT_NAME,
        GIT_AUTHOR_EMAIL=BOT_EMAIL,
        GIT_COMMITTER_NAME=BOT_NAME,
        GIT_COMMITTER_EMAIL=BOT_EMAIL,
    )
    return env


def _origin_url(repo: _Repo) -> str:
    done = repo.run("config", "--get", f"remote.{REMOTE}.url")
    if done.returncode != 0:
        raise GitError(
            f"the repository in {repo.workspace} has no `{REMOTE}` remote "
            "to push the manifest commit to; check it out with "
            "actions/checkout, or set `commit-manifest: false`"
        )
    return done.stdout.strip()


def _write_file(
    workspace: Path, relative: PurePosixPath, text: str
) -> list[Path]:
    """Put the text in the working tree; return what this created."""
    target = workspace / relative
    created = [
        parent
        for parent in reversed(target.parents)
        if parent.is_relative_to(workspace) and not parent.exists()
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    if not target.exists() or target.read_bytes() != data:
        target.write_bytes(data)
    return [*created, target]


def _commit_until_pushed(
    repo: _Repo,
    branch: str,
    relative: PurePosixPath,
    text: str,
    message: str,
    attempts: int,
) -> str | None:
    path = f"--path={relative}"
    blob = repo.git("hash-object", "--stdin", path, input_text=text).strip()
    for attempt in range(1, attempts + 1):
        tip = _fetch_tip(repo, branch)
        if _blob_at(repo, tip, relative) == blob:
            log.info("%s already holds this %s; no commit", branch, relative)
            return None
        repo.git("hash-object", "-w", "--stdin", path, input_text=text)
        commit = _make_commit(repo, tip, relative, blob, message)
        done = repo.run(
            "push", "--no-verify", "--porcelain", REMOTE,
            f"{commit}:refs/heads/{branch}",
        )  # fmt: skip
        if done.returncode == 0:
            log.info("pushed %s as %s to %s", relative, commit, branch)
            _follow_head(repo, tip, commit, relative, blob)
            return commit
        said = done.stdout + done.stderr
        if not any(reason in said for reason in _REJECTED):
            raise _push_error(repo, branch, said)
        log.info(
            "%s moved while committing %s (attempt %d of %d); committing "
            "again on its new tip",
            branch,
            relative,
            attempt,
            attempts,
        )
    raise GitError(
        f"{branch} kept moving: {attempts} pushes of the {relative} commit "
        "were rejected as non-fast-forward. The store's manifest is "
        "already right; run the deploy again to commit its copy"
    )


def _fetch_tip(repo: _Repo, branch: str) -> str:
    shallow = repo.git("rev-parse", "--is-shallow-repository").strip()
    depth = ["--depth=1"] if shallow == "true" else []
    done = repo.run(
        "fetch", "--quiet", "--no-tags", "--no-recurse-submodules",
        *depth, REMOTE, f"refs/heads/{branch}",
    )  # fmt: skip
    if done.returncode != 0:
        if "couldn't find remote ref" in done.stderr:
            raise GitError(
                f"the branch {branch!r} does not exist in {REMOTE}; the "
                "manifest commit goes to the branch the run is on, so run "
                "on a pushed branch or set `commit-manifest: false`"
            )
        raise _push_error(repo, branch, done.stderr, action="fetch")
    return repo.git("rev-parse", "--verify", "FETCH_HEAD^{commit}").strip()


def _blob_at(repo: _Repo, tip: str, relative: PurePosixPath) -> str:
    done = repo.run("rev-parse", "--verify", "--quiet", f"{tip}:{relative}")
    return done.stdout.strip() if done.returncode == 0 else ""


def _make_commit(
    repo: _Repo,
    tip: str,
    relative: PurePosixPath,
    blob: str,
    message: str,
) -> str:
    # A private index leaves the checkout's own index untouched.
    with tempfile.TemporaryDirectory(prefix="inforge-index-") as scratch:
        index = {"GIT_INDEX_FILE": str(Path(scratch, "index"))}
        repo.git("read-tree", tip, extra_env=index)
        repo.git(
            "update-index", "--add", "--cacheinfo",
            f"100644,{blob},{relative}",
            extra_env=index,
        )  # fmt: skip
        tree = repo.git("write-tree", extra_env=index).strip()
    return repo.git(
        "commit-tree", tree, "-p", tip, "-F", "-", input_text=message
    ).strip()


def _follow_head(
    repo: _Repo, tip: str, commit: str, relative: PurePosixPath, blob: str
) -> None:
    """Move HEAD to the pushed commit when it sat on the commit's parent.

    Then the checkout matches what was pushed; otherwise (a pull
    request's merge commit, a branch that moved) it is left alone.
    """
    head = repo.run("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head.stdout.strip() != tip:
        return
    try:
        repo.git(
            "update-ref", "-m", "inforge-action: manifest commit",
            "HEAD", commit, tip,
        )  # fmt: skip
        repo.git(
            "update-index", "--add", "--cacheinfo",
            f"100644,{blob},{relative}",
        )  # fmt: skip
    except GitError as error:
        log.warning(
            "the manifest commit %s is pushed, but the checkout's HEAD "
            "stays at %s: %s",
            commit,
            tip,
            error,
        )


def _push_error(
    repo: _Repo, branch: str, said: str, action: str = "push"
) -> GitError:
    tail = _tail(said)
    where = f"{branch} of " + _USERINFO.sub(r"\1", _origin_url(repo))
    what = (
        f"pushing the manifest commit to {where}"
        if action == "push"
        else f"fetching {where} for the manifest commit"
    )
    if "error: 403" in said or re.search(r"Permission to \S+ denied", said):
        verb = "write to" if action == "push" else "read"
        return GitError(
            f"{what} was refused with HTTP 403: the token cannot {verb} "
            "the repository. Give the job `permissions: contents: write` "
            "(`github-token` defaults to the job's token), or pass a "
            "`github-token` with write access; a pull request from a fork "
            f"cannot push. Or set `commit-manifest: false`. git said: {tail}"
        )
    if "GH006" in said or "protected branch" in said.lower():
        return GitError(
            f"{branch} is a protected branch that refused the manifest "
            "commit; allow the token's user to push to it, or set "
            f"`commit-manifest: false`. git said: {tail}"
        )
    if (
        "error: 401" in said
        or "Authentication failed" in said
        or "could not read Username" in said
    ):
        return GitError(
            f"{what} had no valid credentials: leave `github-token` at its "
            "default (the job's token) with `permissions: contents: write`, "
            f"or pass a valid token. git said: {tail}"
        )
    return GitError(f"{what} failed: {tail}")
