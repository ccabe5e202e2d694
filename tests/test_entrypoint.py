"""The container's entrypoint as GitHub runs it.

A runner starts the container as root with only ``INPUT_*`` and
``GITHUB_*`` variables, HOME and PATH; the workspace belongs to the
runner's user; outputs and the summary go to files it reads afterwards.
Each test runs ``python entrypoint.py`` in exactly that environment
against the real S3 server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ownership import hand_to_runner, not_the_runners
from tests.support.world import World, make_world


ENTRYPOINT = Path(__file__).resolve().parents[1] / "entrypoint.py"
PLATFORM_TOKEN = "ghp_platformTokenValue1234567890"
GITHUB_TOKEN = "ghs_githubTokenValue0987654321"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="a workspace owned by another uid needs root, as CI has",
)


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str
    outputs: dict[str, str]
    delimiters: list[str]
    summary: str

    @property
    def lines(self) -> list[str]:
        return (self.stdout + self.stderr).splitlines()


@pytest.fixture
def world(tmp_path, s3_server) -> World:
    world = make_world(tmp_path, s3_server)
    world.write_payload("v1")
    hand_to_runner(world.service_repo)
    return world


def run_action(world: World, tmp_path: Path, **inputs: str) -> Finished:
    files = tmp_path / "file_commands"
    files.mkdir(exist_ok=True)
    output, summary = files / "output", files / "summary"
    output.write_text("")
    summary.write_text("")
    home = tmp_path / "github_home"
    home.mkdir(exist_ok=True)
    env = {
        **world.environ(**inputs),
        "HOME": str(home),
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_REPOSITORY": "wardnet/api",
        "GITHUB_RUN_ID": "42",
        "GITHUB_REF": "refs/heads/main",
        "GITHUB_REF_NAME": "main",
        "GITHUB_EVENT_NAME": "push",
    }
    extra = [
        name
        for name in env
        if not name.startswith(("INPUT_", "GITHUB_"))
        and name not in ("HOME", "PATH")
    ]
    assert extra == [], "the runner passes nothing else"

    done = subprocess.run(
        [sys.executable, str(ENTRYPOINT)],
        cwd=world.service_repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    outputs, delimiters = parse_file_commands(output.read_text())
    return Finished(done.returncode, done.stdout, done.stderr, outputs,
                    delimiters, summary.read_text())  # fmt: skip


def parse_file_commands(text: str) -> tuple[dict[str, str], list[str]]:
    """Read ``name<<DELIMITER`` records as the runner does."""
    outputs, delimiters = {}, []
    lines = iter(text.splitlines())
    for line in lines:
        name, marker, delimiter = line.partition("<<")
        assert marker, f"every record is a heredoc, not {line!r}"
        value = []
        for inner in lines:
            if inner == delimiter:
                break
            value.append(inner)
        else:
            raise AssertionError(f"{name}: delimiter {delimiter} not closed")
        outputs[name] = "\n".join(value)
        delimiters.append(delimiter)
    return outputs, delimiters


def leaked(finished: Finished, *secrets: str) -> list[str]:
    """Lines that show a secret; ``::add-mask::`` lines are the runner's
    and never echoed."""
    return [
        line
        for line in finished.lines
        if not line.startswith("::add-mask::")
        and any(secret in line for secret in secrets)
    ]


def with_tokens(**inputs: str) -> dict[str, str]:
    return {
        "platform_token": PLATFORM_TOKEN,
        "github_token": GITHUB_TOKEN,
        **inputs,
    }


def test_push_writes_outputs_summary_and_no_root_files(world, tmp_path):
    finished = run_action(
        world, tmp_path, **with_tokens(command="push", sha="4f2a9c1e0b7d")
    )

    assert finished.code == 0, finished.stdout + finished.stderr
    assert finished.outputs["key"] == "api/4f2a9c1e0b7d.tar.gz"
    assert finished.outputs["created"] == "true"
    assert finished.outputs["pruned"] == "[]"
    assert re.fullmatch(r"[0-9a-f]{64}", finished.outputs["sha256"])
    assert "### Pushed api `4f2a9c1e0b7d`" in finished.summary
    assert any(line.startswith("::group::") for line in finished.lines)
    assert "Traceback" not in finished.stderr
    assert not_the_runners(world.service_repo) == []


def test_output_delimiters_are_random(world, tmp_path):
    first = run_action(world, tmp_path, command="push", sha="abc123")
    second = run_action(world, tmp_path, command="push", sha="abc123")

    delimiters = first.delimiters + second.delimiters
    assert len(set(delimiters)) == len(delimiters)
    assert all(len(d) >= 20 and d != "EOF" for d in delimiters)
    assert second.outputs["created"] == "false"


def test_secrets_are_masked_before_the_first_line(world, tmp_path):
    secret = world.s3_server.secret_key

    finished = run_action(
        world, tmp_path, **with_tokens(command="push", sha="abc123")
    )

    assert finished.code == 0, finished.stdout + finished.stderr
    assert leaked(finished, secret, PLATFORM_TOKEN, GITHUB_TOKEN) == []
    stdout = finished.stdout.splitlines()
    masks = [line for line in stdout if line.startswith("::add-mask::")]
    assert stdout[: len(masks)] == masks, "masks come before any other line"
    masked = {line.removeprefix("::add-mask::") for line in masks}
    assert {secret, PLATFORM_TOKEN, GITHUB_TOKEN} <= masked


def test_list_reports_the_releases(world, tmp_path):
    run_action(world, tmp_path, command="push", sha="abc123")

    finished = run_action(world, tmp_path, command="list")

    assert finished.code == 0, finished.stdout + finished.stderr
    assert '"sha": "abc123"' in finished.outputs["releases"]
    assert "### Releases of api" in finished.summary
    assert not_the_runners(world.service_repo) == []


@pytest.mark.parametrize(
    ("inputs", "title", "words"),
    [
        pytest.param(
            {"command": "push", "sha": "abc123",
             "r2_secret_access_key": "wrong-secret-value-123"},
            "Release store error",
            "`r2-secret-access-key`",
            id="wrong-r2-secret",
        ),
        pytest.param(
            {"command": "explode"},
            "Invalid input",
            "input `command` is 'explode'",
            id="unknown-command",
        ),
        pytest.param(
            {"command": "deploy", "environment": "staging", "sha": "abc123",
             "ssh_private_key": "not-a-key", "known_hosts": "h ssh-ed25519 x"},
            "Invalid configuration",
            "environment 'staging' is not in",
            id="unknown-environment",
        ),
    ],
)  # fmt: skip
def test_a_failure_is_one_error_line_and_exit_1(
    world, tmp_path, inputs, title, words
):
    finished = run_action(world, tmp_path, **with_tokens(**inputs))

    errors = [line for line in finished.lines if line.startswith("::error")]
    assert finished.code == 1
    assert len(errors) == 1, finished.lines
    assert errors[0].startswith(f"::error title={title}::")
    assert words in errors[0]
    assert "Traceback" not in finished.stdout + finished.stderr
    assert "### ❌" in finished.summary
    secrets = [PLATFORM_TOKEN, GITHUB_TOKEN, world.s3_server.secret_key]
    secrets += [inputs.get("r2_secret_access_key", PLATFORM_TOKEN)]
    assert leaked(finished, *secrets) == []
    assert not_the_runners(world.service_repo) == []
