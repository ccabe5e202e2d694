"""The manifest commit with real git: a bare origin, a clone owned by
another user as the workspace, and a small HTTP git server on loopback
for what only HTTP can show (the token header, a 403)."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from inforge_action.errors import GitError
from inforge_action.gitcommit import (
    BOT_EMAIL,
    BOT_NAME,
    commit_manifest,
    manifest_message,
    target_branch,
)
from inforge_action.inputs import Runner
from tests.support.gitrepo import git, make_repo
from tests.support.ownership import hand_to_runner, not_the_runners


MANIFEST = "deployments/manifest.prd.yaml"
TEXT = (
    "deployments:\n    api.vm.prd.use1.example.net:\n"
    "        sha: 4f2a9c1e0b7d\n        arch: amd64\n"
    "        deployedAt: 2026-06-09T12:00:00.123456789Z\n"
)
ON_MAIN = Runner(ref="refs/heads/main", ref_name="main", event_name="push")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="handing a clone to another uid needs root, as CI has",
)


@pytest.fixture(autouse=True)
def plain_git_config(tmp_path, monkeypatch):
    """An empty global git config, so no machine-wide safe.directory or
    credential helper decides the outcome."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture
def origin(tmp_path) -> Path:
    seed = tmp_path / "seed"
    make_repo(
        seed,
        {
            "deployments/inforge.yaml": (
                "platform: wardnet/platform\nservices:\n  - api\n"
            ),
            "README": "sample service\n",
        },
    )
    bare = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(bare))
    return bare


def clone(origin_url: str, target: Path, *config: str) -> Path:
    """A shallow clone as actions/checkout makes, handed to the runner."""
    argv = ["git"]
    for item in config:
        argv += ["-c", item]
    subprocess.run(
        [*argv, "clone", "-q", "--depth=1", origin_url, str(target)],
        check=True,
        capture_output=True,
        env=_plain_env(),
    )
    return target


@pytest.fixture
def workspace(tmp_path, origin) -> Path:
    target = clone(f"file://{origin}", tmp_path / "workspace")
    hand_to_runner(target)
    return target


def as_owner(workspace: Path, *args: str) -> str:
    """Git in the workspace as root, without refreshing its index."""
    done = subprocess.run(
        ["git", "--no-optional-locks", "-c", f"safe.directory={workspace}",
         "-C", str(workspace), *args],
        check=True,
        capture_output=True,
        text=True,
        env=_plain_env(),
    )  # fmt: skip
    return done.stdout.strip()


def _plain_env() -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ["HOME"],
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Other",
        "GIT_AUTHOR_EMAIL": "other@example.invalid",
        "GIT_COMMITTER_NAME": "Other",
        "GIT_COMMITTER_EMAIL": "other@example.invalid",
    }


def commit(workspace: Path, runner: Runner = ON_MAIN, **kwargs) -> str | None:
    arguments = {
        "path": MANIFEST,
        "text": TEXT,
        "message": manifest_message("api", "prd", "4f2a9c1e0b7d", ["h1"]),
        "token": "",
        "runner": runner,
    }
    return commit_manifest(workspace, **{**arguments, **kwargs})


def test_root_really_meets_dubious_ownership_in_the_workspace(workspace):
    done = subprocess.run(
        ["git", "-C", str(workspace), "status"],
        capture_output=True,
        text=True,
        env=_plain_env(),
    )

    assert done.returncode != 0
    assert "dubious ownership" in done.stderr


def test_the_commit_lands_on_the_branch_as_the_bot(workspace, origin):
    before = git(origin, "rev-parse", "main")

    sha = commit(workspace)

    assert sha == git(origin, "rev-parse", "main")
    assert git(origin, "rev-parse", f"{sha}^") == before
    assert git(origin, "show", f"{sha}:{MANIFEST}") + "\n" == TEXT
    who = git(origin, "log", "-1", "--format=%an <%ae>|%cn <%ce>", sha)
    assert who == f"{BOT_NAME} <{BOT_EMAIL}>|{BOT_NAME} <{BOT_EMAIL}>"
    subject = git(origin, "log", "-1", "--format=%s", sha)
    assert subject == "Deploy api 4f2a9c1e0b7d to prd [skip ci]"
    assert git(origin, "diff-tree", "--no-commit-id", "--name-only", "-r",
               sha) == MANIFEST  # fmt: skip


def test_the_checkout_follows_and_stays_the_runners(workspace):
    sha = commit(workspace)

    assert as_owner(workspace, "rev-parse", "HEAD") == sha
    assert as_owner(workspace, "status", "--porcelain") == ""
    assert (workspace / MANIFEST).read_text() == TEXT
    assert not_the_runners(workspace) == []


def test_a_detached_head_pushes_to_the_runs_branch(
    workspace, origin, tmp_path
):
    as_owner(workspace, "checkout", "-q", "--detach")
    hand_to_runner(workspace)
    mover = clone(f"file://{origin}", tmp_path / "mover")
    (mover / "CHANGELOG").write_text("moved on\n")
    as_owner(mover, "add", "CHANGELOG")
    as_owner(mover, "commit", "-q", "-m", "moved on")
    as_owner(mover, "push", "-q", "origin", "HEAD:main")
    moved = git(origin, "rev-parse", "main")
    head = as_owner(workspace, "rev-parse", "HEAD")

    sha = commit(workspace)

    assert git(origin, "rev-parse", "main") == sha
    assert git(origin, "rev-parse", f"{sha}^") == moved
    assert as_owner(workspace, "rev-parse", "HEAD") == head
    assert not_the_runners(workspace) == []


def test_an_unchanged_manifest_makes_no_commit(workspace, origin):
    first = commit(workspace)

    again = commit(workspace, message="should not appear")

    assert first is not None
    assert again is None
    assert git(origin, "rev-parse", "main") == first


def _racing_receive_pack(
    workspace: Path, origin: Path, tmp_path: Path, *, every_time: bool
) -> Path:
    """Make another writer push to origin just before our push is heard.

    ``remote.origin.receivepack`` runs on the origin side of a local push,
    before the refs are advertised, so git on our side really sees a
    branch that moved and rejects its push as non-fast-forward.
    """
    other = clone(f"file://{origin}", tmp_path / "other")
    counter = tmp_path / "races"
    script = tmp_path / "racing-receive-pack"
    guard = "" if every_time else f'[ -e "{counter}" ] ||'
    script.write_text(
        "#!/bin/sh\n"
        f"{guard} {{\n"
        f'  echo x >> "{counter}"\n'
        f'  cd "{other}" || exit 1\n'
        "  env -i PATH=/usr/bin:/bin HOME=/tmp GIT_CONFIG_NOSYSTEM=1 "
        "GIT_AUTHOR_NAME=o GIT_AUTHOR_EMAIL=o@x GIT_COMMITTER_NAME=o "
        "GIT_COMMITTER_EMAIL=o@x sh -c '"
        "git pull -q --rebase origin main && "
        "date +%s%N >> RACE && git add RACE && "
        "git commit -q -m race && git push -q origin HEAD:main' "
        ">&2 || exit 1\n"
        "}\n"
        'exec git-receive-pack "$@"\n'
    )
    script.chmod(0o755)
    as_owner(workspace, "config", "remote.origin.receivepack", str(script))
    hand_to_runner(workspace)
    return counter


def test_a_concurrent_push_is_committed_again_on_the_new_tip(
    workspace, origin, tmp_path
):
    races = _racing_receive_pack(workspace, origin, tmp_path, every_time=False)

    sha = commit(workspace)

    assert races.read_text().count("x") == 1
    assert git(origin, "rev-parse", "main") == sha
    parent = git(origin, "log", "-1", "--format=%s", f"{sha}^")
    assert parent == "race"
    assert git(origin, "show", f"{sha}:{MANIFEST}") + "\n" == TEXT
    assert not_the_runners(workspace) == []


def test_a_branch_that_keeps_moving_gives_up_after_the_attempts(
    workspace, origin, tmp_path
):
    races = _racing_receive_pack(workspace, origin, tmp_path, every_time=True)

    with pytest.raises(GitError, match="kept moving: 2 pushes"):
        commit(workspace, attempts=2)

    assert races.read_text().count("x") == 2
    assert git(origin, "log", "-1", "--format=%s", "main") == "race"
    assert not_the_runners(workspace) == []


def test_a_tag_run_is_refused_before_anything_is_written(workspace, origin):
    before = git(origin, "rev-parse", "main")
    on_tag = Runner(ref="refs/tags/v1.2.0", ref_name="v1.2.0")

    with pytest.raises(GitError, match="tag 'v1.2.0'"):
        commit(workspace, runner=on_tag)

    assert git(origin, "rev-parse", "main") == before
    assert not (workspace / MANIFEST).exists()


@pytest.mark.parametrize(
    ("runner", "branch"),
    [
        pytest.param(ON_MAIN, "main", id="push-to-main"),
        pytest.param(
            Runner(ref="refs/heads/release/2.x", ref_name="release/2.x"),
            "release/2.x",
            id="branch-with-slash",
        ),
        pytest.param(
            Runner(
                ref="refs/pull/7/merge",
                ref_name="7/merge",
                head_ref="feature/login",
                event_name="pull_request",
            ),
            "feature/login",
            id="pull-request-head",
        ),
    ],
)
def test_the_branch_comes_from_the_runner(runner, branch):
    assert target_branch(runner) == branch


@pytest.mark.parametrize(
    ("runner", "words"),
    [
        pytest.param(
            Runner(ref="refs/tags/v1", ref_name="v1"), "tag 'v1'", id="tag"
        ),
        pytest.param(
            Runner(ref="refs/pull/7/merge", ref_name="7/merge"),
            "GITHUB_REF is 'refs/pull/7/merge'",
            id="merge-ref-without-head",
        ),
        pytest.param(Runner(), "GITHUB_REF is ''", id="no-ref"),
    ],
)
def test_a_run_without_a_branch_is_refused(runner, words):
    with pytest.raises(GitError, match=words) as raised:
        target_branch(runner)

    assert "commit-manifest: false" in str(raised.value)


def test_the_message_names_service_environment_sha_and_hosts():
    message = manifest_message("api", "qa", "abc123", ["h1.example", "h2"])

    subject, _, body = message.partition("\n\n")

    assert subject == "Deploy api abc123 to qa [skip ci]"
    assert "Environment: qa" in body and "SHA: abc123" in body
    assert "- h1.example\n- h2\n" in body


def test_a_manifest_path_outside_the_repo_is_refused(workspace):
    with pytest.raises(GitError, match="stay inside"):
        commit(workspace, path="../elsewhere.yaml")


# An HTTP git server on loopback: git http-backend behind a handler that
# checks the Authorization header and can refuse pushes with a 403.


def basic(token: str) -> str:
    raw = f"x-access-token:{token}".encode()
    return "Basic " + base64.b64encode(raw).decode()


@dataclass
class GitServer:
    root: Path
    url: str = ""
    accepted: set[str] = field(default_factory=set)
    refuse_push: bool = False
    headers_seen: list[list[str]] = field(default_factory=list)

    def verdict(self, path: str, query: str, headers: list[str]) -> int:
        self.headers_seen.append(headers)
        if len(headers) != 1 or headers[0] not in self.accepted:
            return 403
        pushing = "git-receive-pack" in path + query
        return 403 if pushing and self.refuse_push else 0


def _handler(server: GitServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve(b"")

        def do_POST(self) -> None:
            self._serve(self._body())

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", ""):
                chunks = []
                while size := int(self.rfile.readline().strip(), 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers["Content-Length"]))

        def _serve(self, body: bytes) -> None:
            path, _, query = self.path.partition("?")
            auth = self.headers.get_all("Authorization") or []
            status = server.verdict(path, query, auth)
            if status:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GIT_CONFIG_NOSYSTEM": "1",
                "HOME": str(server.root),
                "REMOTE_USER": "tester",
                "REMOTE_ADDR": "127.0.0.1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get(
                    "Content-Encoding", ""
                ),
            }
            done = subprocess.run(
                ["git", "http-backend"],
                input=body,
                env=env,
                capture_output=True,
                check=False,
                timeout=60,
            )
            head, _, payload = done.stdout.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            fields = [line.split(": ", 1) for line in lines if ": " in line]
            code = next(
                (int(v.split()[0]) for k, v in fields if k == "Status"), 200
            )
            self.send_response(code)
            for name, value in fields:
                if name != "Status":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            return  # keep the test output quiet

    return Handler


@pytest.fixture
def git_server(origin) -> Iterator[GitServer]:
    server = GitServer(root=origin.parent)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    server.url = f"http://127.0.0.1:{httpd.server_port}/{origin.name}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def checkout_over_http(server: GitServer, tmp_path: Path) -> Path:
    """A clone as actions/checkout leaves it: its own token persisted in
    the repo's config under the server's URL."""
    checkout = basic("checkout-token-0000")
    server.accepted = {checkout}
    prefix = server.url.rsplit("/", 1)[0] + "/"
    target = clone(
        server.url, tmp_path / "http-ws", f"http.extraHeader=Authorization: "
        f"{checkout}"
    )  # fmt: skip
    as_owner(target, "config", f"http.{prefix}.extraheader",
             f"AUTHORIZATION: {checkout}")  # fmt: skip
    hand_to_runner(target)
    return target


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        pytest.param("ghs_fresh-token-1111", "ghs_fresh-token-1111",
                     id="token-input-wins"),
        pytest.param("", "checkout-token-0000", id="checkout-credentials"),
    ],
)  # fmt: skip
def test_pushing_over_http_sends_exactly_one_authorization(
    git_server, origin, tmp_path, token, expected
):
    workspace = checkout_over_http(git_server, tmp_path)
    git_server.accepted = {basic(expected)}
    git_server.headers_seen.clear()

    sha = commit(workspace, token=token)

    assert sha == git(origin, "rev-parse", "main")
    assert git_server.headers_seen
    assert all(seen == [basic(expected)] for seen in git_server.headers_seen)
    assert not_the_runners(workspace) == []


def test_a_403_names_the_permission_the_job_needs(
    git_server, origin, tmp_path
):
    workspace = checkout_over_http(git_server, tmp_path)
    token = "ghs_read-only-token-2222"
    git_server.accepted = {basic(token)}
    git_server.refuse_push = True
    before = git(origin, "rev-parse", "main")

    with pytest.raises(GitError) as raised:
        commit(workspace, token=token)

    message = str(raised.value)
    assert "HTTP 403" in message and "returned error: 403" in message
    assert "permissions: contents: write" in message
    assert token not in message and basic(token) not in message
    assert git(origin, "rev-parse", "main") == before
    assert not_the_runners(workspace) == []


def test_a_missing_origin_is_named(tmp_path):
    bare = tmp_path / "lonely"
    make_repo(bare, {"README": "x\n"})
    hand_to_runner(bare)

    with pytest.raises(GitError, match="no `origin` remote"):
        commit(bare)
