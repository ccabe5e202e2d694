"""Every input, read once from flags and the environment, then validated.

The runner passes input ``x-y`` as ``INPUT_X-Y`` (upper-cased, hyphen
kept). This module is the only one that reads the environment: the rest
of the package receives an ``Inputs`` object.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InputError
from .spec import COMMANDS, INPUTS


ARCHES = ("amd64", "arm64")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SAFE_NAME_FORM = (
    "letters, digits, '.', '_' and '-', starting with a letter or digit, "
    "without '..'"
)

STORE_COMMANDS = ("push", "deploy", "rollback", "list", "prune")
HOST_COMMANDS = ("deploy", "rollback", "provision")


class Runner(BaseModel):
    """What the GitHub runner tells a step about its run."""

    model_config = ConfigDict(frozen=True)

    is_actions: bool = False
    workspace: Path = Path(".")
    output_path: str = ""
    summary_path: str = ""
    sha: str = ""
    ref: str = ""
    ref_name: str = ""
    ref_type: str = ""
    head_ref: str = ""
    event_name: str = ""
    repository: str = ""
    server_url: str = "https://github.com"
    run_url: str = ""
    temp_dir: str = ""
    source_date_epoch: str | None = None


class Inputs(BaseModel):
    """The validated inputs of one run."""

    model_config = ConfigDict(frozen=True)

    command: Literal[COMMANDS]
    service: str
    environment: str
    sha: str
    arch: Literal["", "amd64", "arm64"]
    artifact_path: str
    deployments_dir: str
    platform_repo: str
    platform_ref: str
    platform_token: str
    platform_url: str
    bucket: str
    keep: int | None
    r2_account_id: str
    r2_access_key_id: str
    r2_secret_access_key: str
    endpoint_url: str
    state_access_key_id: str
    state_secret_access_key: str
    pulumi_passphrase: str
    ssh_private_key: str
    ssh_key_passphrase: str
    ssh_port: int
    known_hosts: str
    host_key_policy: Literal["strict", "accept-new"]
    verify_seconds: float
    keep_releases: int
    max_parallel: int
    force: bool
    dry_run: bool
    commit_manifest: bool
    github_token: str
    credential: str
    runner: Runner

    @property
    def secrets(self) -> list[str]:
        """Every secret value given, for masking before any output."""
        values = [
            getattr(self, name.replace("-", "_"))
            for name, spec in INPUTS.items()
            if spec.secret
        ]
        return [value for value in values if value]

    @property
    def workspace(self) -> Path:
        return self.runner.workspace


def read_raw(
    environ: Mapping[str, str], flags: Mapping[str, str | None]
) -> dict[str, str]:
    """Input values by name: a flag wins over ``INPUT_*``, then defaults."""
    raw = {}
    for name, spec in INPUTS.items():
        default = spec.default
        value = flags.get(name)
        if value is None:
            value = environ.get(f"INPUT_{name.upper()}")
        if value is None or value.strip() == "":
            value = default
        raw[name] = value.strip() if name not in _VERBATIM else value
    return raw


# Key material and known-hosts text keep their inner layout.
_VERBATIM = {"ssh-private-key", "known-hosts", "credential"}


def read_runner(environ: Mapping[str, str]) -> Runner:
    """The runner context, from the ``GITHUB_*`` variables."""
    server = environ.get("GITHUB_SERVER_URL", "https://github.com")
    repository = environ.get("GITHUB_REPOSITORY", "")
    run_id = environ.get("GITHUB_RUN_ID", "")
    run_url = ""
    if repository and run_id:
        run_url = f"{server}/{repository}/actions/runs/{run_id}"
    return Runner(
        is_actions=environ.get("GITHUB_ACTIONS") == "true",
        workspace=Path(environ.get("GITHUB_WORKSPACE") or "."),
        output_path=environ.get("GITHUB_OUTPUT", ""),
        summary_path=environ.get("GITHUB_STEP_SUMMARY", ""),
        sha=environ.get("GITHUB_SHA", ""),
        ref=environ.get("GITHUB_REF", ""),
        ref_name=environ.get("GITHUB_REF_NAME", ""),
        ref_type=environ.get("GITHUB_REF_TYPE", ""),
        head_ref=environ.get("GITHUB_HEAD_REF", ""),
        event_name=environ.get("GITHUB_EVENT_NAME", ""),
        repository=repository,
        server_url=server,
        run_url=run_url,
        temp_dir=environ.get("RUNNER_TEMP", ""),
        source_date_epoch=environ.get("SOURCE_DATE_EPOCH"),
    )


def load_inputs(
    environ: Mapping[str, str], flags: Mapping[str, str | None]
) -> Inputs:
    """Read, convert and validate every input; all problems in one error."""
    raw = read_raw(environ, flags)
    runner = read_runner(environ)
    problems: list[str] = []

    # A rollback without a SHA goes back to each host's previous release.
    if not raw["sha"] and raw["command"] in ("push", "deploy"):
        raw["sha"] = runner.sha
    if not raw["pulumi-passphrase"]:
        raw["pulumi-passphrase"] = environ.get("PULUMI_CONFIG_PASSPHRASE", "")
    if not raw["commit-manifest"]:
        is_deploy = raw["command"] in ("deploy", "rollback")
        raw["commit-manifest"] = "true" if is_deploy else "false"

    values: dict[str, object] = {
        name.replace("-", "_"): value for name, value in raw.items()
    }
    for name in ("force", "dry-run", "commit-manifest"):
        values[name.replace("-", "_")] = _to_bool(name, raw[name], problems)
    for name, low in (
        ("ssh-port", 1),
        ("keep-releases", 2),
        ("max-parallel", 1),
    ):
        values[name.replace("-", "_")] = _to_int(
            name, raw[name], low, problems
        )
    values["keep"] = (
        _to_int("keep", raw["keep"], 0, problems) if raw["keep"] else None
    )
    values["verify_seconds"] = _to_seconds(raw["verify-seconds"], problems)
    _check_choices(raw, problems)
    _check_names(raw, problems)
    _check_required(raw, problems)

    if problems:
        raise InputError(_problem_text(problems))
    try:
        return Inputs(**values, runner=runner)
    except ValidationError as error:
        raise InputError(_problem_text(_pydantic_problems(error))) from None


def _problem_text(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    lines = "\n".join(f"- {problem}" for problem in problems)
    return f"{len(problems)} inputs need fixing:\n{lines}"


def _pydantic_problems(error: ValidationError) -> list[str]:
    problems = []
    for detail in error.errors():
        name = str(detail["loc"][0]).replace("_", "-")
        problems.append(f"input `{name}`: {detail['msg']}")
    return problems


def _to_bool(name: str, value: str, problems: list[str]) -> bool:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    problems.append(f"input `{name}` is {value!r}; use 'true' or 'false'")
    return False


def _to_int(name: str, value: str, low: int, problems: list[str]) -> int:
    if value.isdigit() and int(value) >= low:
        return int(value)
    problems.append(
        f"input `{name}` is {value!r}; use a whole number of at least {low}"
    )
    return low


def _to_seconds(value: str, problems: list[str]) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= 600:
        problems.append(
            f"input `verify-seconds` is {value!r}; use a number of seconds "
            "from 1 to 600"
        )
        return 10.0
    return seconds


def _check_choices(raw: dict[str, str], problems: list[str]) -> None:
    if raw["command"] not in COMMANDS:
        problems.append(
            f"input `command` is {raw['command']!r}; use one of "
            + ", ".join(COMMANDS)
        )
    if raw["arch"] and raw["arch"] not in ARCHES:
        problems.append(
            f"input `arch` is {raw['arch']!r}; leave it empty for an "
            "architecture-neutral artifact, or use amd64 or arm64"
        )
    if raw["host-key-policy"] not in ("strict", "accept-new"):
        problems.append(
            f"input `host-key-policy` is {raw['host-key-policy']!r}; use "
            "'strict' (the default) or 'accept-new'"
        )


def is_safe_name(value: str) -> bool:
    """Can ``value`` name a key segment or a path part without escaping?"""
    return bool(SAFE_NAME.fullmatch(value)) and ".." not in value


def _check_names(raw: dict[str, str], problems: list[str]) -> None:
    for name in ("service", "environment", "sha"):
        value = raw[name]
        if value and not is_safe_name(value):
            problems.append(
                f"input `{name}` is {value!r}, which could escape a key or "
                f"a path; use {SAFE_NAME_FORM}"
            )
    if raw["sha"].endswith(("-amd64", "-arm64")):
        problems.append(
            f"input `sha` is {raw['sha']!r}; an '-amd64' or '-arm64' "
            "suffix would read back as an architecture: give the arch in "
            "the `arch` input instead"
        )


def _check_required(raw: dict[str, str], problems: list[str]) -> None:
    command = raw["command"]
    needs: list[tuple[str, str]] = []
    if command in ("push", "deploy") and not raw["sha"]:
        needs.append(("sha", "the commit to release (GITHUB_SHA on a runner)"))
    if command in HOST_COMMANDS and not raw["environment"]:
        needs.append(("environment", "the stack to deploy to, e.g. prd"))
    if command in STORE_COMMANDS:
        for name in ("r2-access-key-id", "r2-secret-access-key"):
            if not raw[name]:
                needs.append((name, "the R2 API token's credentials"))
        if not raw["r2-account-id"] and not raw["endpoint-url"]:
            needs.append(
                ("r2-account-id", "the Cloudflare account (or endpoint-url)")
            )
    if command in HOST_COMMANDS and not raw["ssh-private-key"]:
        needs.append(("ssh-private-key", "the deploy user's SSH key"))
    if command in HOST_COMMANDS and raw["host-key-policy"] == "strict":
        if not raw["known-hosts"].strip():
            needs.append(
                ("known-hosts", "the hosts' public keys in OpenSSH format")
            )
    for name, why in dict(needs).items():
        problems.append(f"input `{name}` is required for {command}: {why}")
    if raw["endpoint-url"] and not raw["endpoint-url"].startswith(
        ("http://", "https://")
    ):
        problems.append(
            f"input `endpoint-url` is {raw['endpoint-url']!r}; use an "
            "http:// or https:// URL"
        )
