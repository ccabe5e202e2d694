"""The command line's own behaviour: help stays fast, exits are exact."""

import subprocess
import sys

from inforge_action.spec import INPUTS


HEAVY = {
    "boto3", "botocore", "paramiko", "fabric", "invoke", "pydantic",
    "yaml", "cryptography", "pyrage",
}  # fmt: skip


def test_help_lists_every_input_without_importing_heavy_libraries():
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "inforge_action", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )

    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert done.returncode == 0
    assert not imported & HEAVY, sorted(imported & HEAVY)
    for name in INPUTS:
        if name != "command":
            assert f"--{name}" in done.stdout


def test_a_known_error_prints_one_annotation_and_no_traceback(tmp_path):
    environ = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_WORKSPACE": str(tmp_path),
        "INPUT_COMMAND": "deploy",
        "PATH": "/usr/bin:/bin",
    }

    done = subprocess.run(
        [sys.executable, "-m", "inforge_action"],
        env=environ,
        capture_output=True,
        text=True,
        check=False,
    )

    errors = [
        line for line in done.stdout.splitlines() if line.startswith("::error")
    ]
    assert done.returncode == 1
    assert len(errors) == 1 and "inputs need fixing" in errors[0]
    assert "Traceback" not in done.stdout + done.stderr
