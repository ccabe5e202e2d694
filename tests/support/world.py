"""A small world for end-to-end runs: a service repo, a platform repo,
a bucket, and the INPUT_* environment a runner would pass."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from inforge_action.cli import execute
from tests.support.gitrepo import commit_files, make_repo


RUN_SCRIPT = """\
#!/bin/sh
# Sample service: says which release it is, then stays up.
here=$(cd "$(dirname "$0")" && pwd -P)
echo "{sha}" > /tmp/{service}.sha
echo "{sha} $(id -un) $here" > /tmp/{service}.whoami
exec sleep 100000
"""

CRASHING_RUN = """\
#!/bin/sh
echo "{sha} starting and failing at once" >&2
exit 3
"""


@dataclass
class ActionRun:
    code: int
    outputs: dict[str, str]
    log: str
    summary: str

    def json(self, name: str):
        return json.loads(self.outputs[name])


@dataclass
class World:
    root: Path
    service_repo: Path
    platform_repo: Path
    bucket: str
    s3_server: object
    service: str = "api"
    environments: tuple[str, ...] = ("prd",)
    extra_env: dict[str, str] = field(default_factory=dict)

    def environ(self, **inputs: str) -> dict[str, str]:
        environ = {
            "GITHUB_WORKSPACE": str(self.service_repo),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "INPUT_PLATFORM-URL": f"file://{self.platform_repo}",
            "INPUT_ENDPOINT-URL": self.s3_server.endpoint,
            "INPUT_R2-ACCESS-KEY-ID": self.s3_server.access_key,
            "INPUT_R2-SECRET-ACCESS-KEY": self.s3_server.secret_key,
            "INPUT_COMMIT-MANIFEST": "false",
            **self.extra_env,
        }
        for name, value in inputs.items():
            environ[f"INPUT_{name.replace('_', '-').upper()}"] = value
        return environ

    def run(self, command: str, **inputs: str) -> ActionRun:
        stream = io.StringIO()
        code, reporter = execute(
            [command], self.environ(**inputs), stream=stream
        )
        return ActionRun(code, reporter.outputs, stream.getvalue(),
                         reporter.summary)  # fmt: skip

    def write_payload(self, sha: str, script: str = RUN_SCRIPT) -> None:
        """Put a release's files in dist/ of the service repo."""
        dist = self.service_repo / "dist"
        dist.mkdir(exist_ok=True)
        run = dist / "run"
        run.write_text(script.format(sha=sha, service=self.service))
        run.chmod(0o755)
        (dist / "VERSION").write_text(sha + "\n")

    def commit(self, message: str) -> str:
        return commit_files(self.service_repo, {}, message)


def make_world(
    root: Path,
    s3_server,
    *,
    service: str = "api",
    environments: tuple[str, ...] = ("prd",),
    platform_extra: str = "",
    service_env_extra: str = "",
) -> World:
    bucket = s3_server.make_bucket("artifacts")
    platform = root / "platform"
    make_repo(
        platform,
        {
            "inforge.yaml": (
                "name: wardnet\n"
                "backend:\n"
                "  type: file\n"
                "  url: file://./\n"
                "artifacts:\n"
                "  backend:\n"
                "    type: r2\n"
                f"    url: r2://{bucket}\n"
                "  keep: 3\n" + platform_extra
            ),
        },
    )
    repo = root / "service"
    envs = "".join(
        f"  {env}:\n    artifact_path: dist\n{service_env_extra}"
        for env in environments
    )
    make_repo(
        repo,
        {
            "deployments/inforge.yaml": (
                f"platform: wardnet/platform\nservices:\n  - {service}\n"
            ),
            f"deployments/{service}.yaml": f"environments:\n{envs}",
            "README": "sample service\n",
        },
    )
    return World(root, repo, platform, bucket, s3_server, service,
                 environments)  # fmt: skip


def target_for(host, service: str, user: str = "api") -> dict[str, str]:
    """A deployDescriptor target for a test host, as inforge writes it."""
    return {
        "service": service,
        "host_dns": host.address,
        "folder": f"/srv/wardnet/{service}",
        "unit": f"wardnet-{service}.service",
        "user": user,
        "ssh_user": "deploy",
        "scope": "test",
    }


def publish_stack(world: World, environment: str, targets: list[dict]):
    """Commit a checkpoint with this deployDescriptor to the platform."""
    from tests.support.pulumi import write_checkpoint

    descriptor = {"environment": environment, "targets": targets}
    write_checkpoint(world.platform_repo, "wardnet", environment, descriptor)
    commit_files(world.platform_repo, {}, f"stack {environment}")


def host_inputs(hosts) -> dict[str, str]:
    """The SSH inputs that reach these test hosts."""
    return {
        "ssh_private_key": hosts[0].client_key_text,
        "known_hosts": "".join(h.known_hosts_line() for h in hosts),
        "verify_seconds": "2",
    }


HTTP_RUN = """\
#!/bin/sh
# Sample web service: answers on its host's own address, from the
# descriptor that provisioning wrote.
descriptor=/etc/wardnet/services/{service}/descriptor.yaml
address=$(sed -n 's/^host: *//p' "$descriptor")
cd "$(dirname "$0")"
echo "{sha}" > /tmp/{service}.sha
exec python3 -m http.server --bind "$address" 8080
"""
