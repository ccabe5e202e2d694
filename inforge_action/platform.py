"""The platform repo: a shallow, sparse clone of only what a run reads."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import PlatformError


GIT_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class PlatformSource:
    """Where the platform repo lives and how to authenticate."""

    repo: str
    url_template: str
    ref: str = ""
    token: str = ""

    @property
    def url(self) -> str:
        return self.url_template.replace("{repo}", self.repo)


def git_environment(token: str, url: str = "") -> dict[str, str]:
    """Environment for git: no prompts, and the token kept out of argv.

    The token travels as an HTTP header set through ``GIT_CONFIG_*``
    variables, so it appears in no command line, URL or log. A header
    that a checkout saved under the server's URL would win over a plain
    ``http.extraHeader``, so with an http(s) ``url`` the header is set
    for that exact URL, after an empty value that clears earlier ones.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GIT_")
    }
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true", LC_ALL="C")
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        header = f"Authorization: Basic {basic}"
        entries = [("http.extraHeader", header)]
        if url.startswith(("http://", "https://")):
            key = f"http.{url}.extraHeader"
            entries += [(key, ""), (key, header)]
        env["GIT_CONFIG_COUNT"] = str(len(entries))
        for index, (key, value) in enumerate(entries):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def run_git(
    args: list[str], *, cwd: Path, env: dict[str, str], what: str
) -> str:
    """Run git, turning a failure into a PlatformError with its stderr."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError as error:
        raise PlatformError(
            "git is not installed; install it to read the platform repo"
        ) from error
    except subprocess.TimeoutExpired as error:
        raise PlatformError(
            f"{what}: git {args[0]} took over {GIT_TIMEOUT_SECONDS} s"
        ) from error
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise PlatformError(f"{what}: git {args[0]} failed: {tail}")
    return done.stdout


class PlatformCheckout:
    """Files of the platform repo, fetched on demand into ``workdir``."""

    def __init__(self, source: PlatformSource, workdir: Path):
        self.source = source
        self.workdir = workdir
        self._env = git_environment(source.token, source.url)

    def fetch(self, ref: str, patterns: list[str], name: str) -> Path:
        """Check out ``patterns`` of ``ref`` (empty: HEAD) at depth 1."""
        target = self.workdir / name
        target.mkdir(parents=True)
        what = (
            f"cannot fetch {ref or 'the default branch'} of the platform "
            f"repo {self.source.repo or self.source.url}"
        )
        hint = (
            "; check `platform-repo`, `platform-ref` and that "
            "`platform-token` can read that repo"
        )
        try:
            run_git(["init", "-q"], cwd=target, env=self._env, what=what)
            run_git(
                ["sparse-checkout", "set", "--no-cone", *patterns],
                cwd=target,
                env=self._env,
                what=what,
            )
            run_git(
                ["fetch", "-q", "--depth", "1", "--no-tags",
                 self.source.url, ref or "HEAD"],
                cwd=target,
                env=self._env,
                what=what,
            )  # fmt: skip
            run_git(
                ["checkout", "-q", "FETCH_HEAD"],
                cwd=target,
                env=self._env,
                what=what,
            )
        except PlatformError as error:
            raise PlatformError(f"{error}{hint}") from error.__cause__
        return target

    def config_dir(self) -> Path:
        """The repo root with its inforge files and any local state.

        ``.pulumi/`` comes along for a ``file://`` state backend that
        lives inside the platform repo.
        """
        patterns = ["/inforge.yaml", "/inforge.*.yaml", "/.pulumi/"]
        return self.fetch(self.source.ref, patterns, "config")

    def checkout_branch(self, branch: str) -> Path:
        """A whole branch, for the git-branch Pulumi state backend."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", branch)
        return self.fetch(branch, ["/*"], f"branch-{safe}")
