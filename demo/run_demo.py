"""The main job end to end, on this machine, with nothing faked.

Starts a SeaweedFS server (the release store), writes a platform repo
whose Pulumi checkpoint names two hosts in a secret ``deployDescriptor``,
boots the two hosts (systemd-nspawn, sshd on 127.0.0.x), then drives the
action's own command line as a workflow would: provision, push, deploy,
a broken build that is reverted, a rollback, and the manifest.

Run it with ``bash scripts/demo.sh`` (installs what is missing first).
"""

from __future__ import annotations

import io
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inforge_action.cli import execute  # noqa: E402
from tests.support.gitrepo import commit_files  # noqa: E402
from tests.support.hosts import build_rootfs, running_hosts  # noqa: E402
from tests.support.pulumi import write_checkpoint  # noqa: E402
from tests.support.seaweed import start_seaweed, stop_seaweed  # noqa: E402
from tests.support.world import make_world  # noqa: E402


SERVICE = "hello"
PORT = 8080
PASSPHRASE = "demo passphrase"

# The sample service: answers HTTP on its host's own address with the
# release it runs. A real service gets its address the same way, from
# the descriptor that provisioning wrote.
HELLO_RUN = """\
#!/bin/sh
descriptor=/etc/wardnet/services/{service}/descriptor.yaml
address=$(sed -n 's/^host: *//p' "$descriptor")
cd "$(dirname "$0")"
exec python3 -m http.server --bind "$address" {port} --directory www
"""

BROKEN_RUN = """\
#!/bin/sh
echo "release {sha}: missing configuration, giving up" >&2
exit 1
"""


def main() -> int:
    started = time.monotonic()
    step("Build the host image (once) and start the release store")
    rootfs = build_rootfs()
    with tempfile.TemporaryDirectory(prefix="inforge-demo-") as scratch:
        root = Path(scratch)
        server = start_seaweed(root / "seaweed")
        print(
            f"    SeaweedFS S3 API on {server.endpoint}, credentials enforced"
        )
        try:
            step("Boot two hosts: systemd + sshd on their own addresses")
            with running_hosts(rootfs, root / "hosts", 2) as hosts:
                for host in hosts:
                    print(f"    {host.name} on {host.address}:22")
                demo(root, server, hosts)
        finally:
            stop_seaweed(server)
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s.")
    return 0


def demo(root: Path, server, hosts) -> None:
    world = make_world(root, server, service=SERVICE)
    targets = [
        {
            "service": SERVICE,
            "host_dns": host.address,
            "folder": f"/srv/wardnet/{SERVICE}",
            "unit": f"wardnet-{SERVICE}.service",
            "user": "api",
            "ssh_user": "deploy",
            "scope": f"zone{index}",
        }
        for index, host in enumerate(hosts, 1)
    ]
    write_checkpoint(
        world.platform_repo,
        "wardnet",
        "prd",
        {"environment": "prd", "targets": targets},
        passphrase=PASSPHRASE,
        secret=True,
    )
    commit_files(world.platform_repo, {}, "stack prd")
    print(
        "\n=== Platform repo: stack prd's checkpoint holds deployDescriptor "
        "as a Pulumi secret\n    (passphrase provider); every command below "
        "decrypts it with pulumi-passphrase"
    )
    common = {
        "environment": "prd",
        "ssh_private_key": hosts[0].client_key_text,
        "known_hosts": "".join(h.known_hosts_line() for h in hosts),
        "pulumi_passphrase": PASSPHRASE,
        "verify_seconds": "3",
    }

    step("provision: unit, descriptor and credential.age on each host")
    action(world, "provision", credential="demo-api-token", **common)

    for version in ("v1", "v2"):
        sha = release(world, version, HELLO_RUN)
        step(f"deploy {version} ({sha[:12]})")
        action(world, "deploy", sha=sha, **common)
        show_answers(hosts)

    sha = release(world, "v3", BROKEN_RUN)
    step(f"deploy v3 ({sha[:12]}): its run exits at once, so it is reverted")
    action(world, "deploy", sha=sha, expect_failure=True, **common)
    show_answers(hosts)

    step(
        "rollback with no sha: each host returns to the release it ran "
        "before its last good deploy (v1; the reverted v3 never counts)"
    )
    action(world, "rollback", **common)
    show_answers(hosts)

    step("list: the store's releases and what each host runs")
    action(world, "list")

    step("The manifest in the store (inforge's format)")
    body = server.client().get_object(
        Bucket=world.bucket, Key=f"{SERVICE}/manifest.prd.yaml"
    )["Body"]
    print(textwrap.indent(body.read().decode(), "    "))


def release(world, version: str, script: str) -> str:
    """Commit a new version of the service, build it and push it."""
    www = world.service_repo / "dist" / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_text(f"hello from release {version}\n")
    world.write_payload(version, script.format(
        service=SERVICE, port=PORT, sha=version
    ))  # fmt: skip
    sha = world.commit(f"hello {version}")
    step(f"push {version} ({sha[:12]})")
    action(world, "push", sha=sha)
    return sha


def action(world, command: str, expect_failure: bool = False, **inputs):
    stream = io.StringIO()
    code, reporter = execute([command], world.environ(**inputs), stream)
    print(textwrap.indent(stream.getvalue().rstrip(), "    "))
    if (code != 0) != expect_failure:
        raise SystemExit(f"demo: `{command}` exited {code} unexpectedly")
    return reporter


def show_answers(hosts) -> None:
    for host in hosts:
        url = f"http://{host.address}:{PORT}/"
        print(f"    GET {url} -> {fetch(url)}")


def fetch(url: str) -> str:
    # No proxy: the hosts are on this machine's loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(20):
        try:
            with opener.open(url, timeout=2) as reply:
                return reply.read().decode().strip()
        except OSError:
            time.sleep(0.25)
    return "(no answer)"


def step(title: str) -> None:
    print(f"\n=== {title}")


if __name__ == "__main__":
    sys.exit(main())
