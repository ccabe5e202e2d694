"""Write Pulumi stack checkpoints the way a self-managed backend keeps them.

For tests and the demo: no Pulumi CLI is needed to put a platform stack,
with a ``deployDescriptor`` output, plain or secret, in a directory or a
bucket. The encryption is written here from Pulumi's format, apart from
the reader in ``inforge_action.pulumi_state`` (the key comes from
hashlib, not from cryptography's PBKDF2), so the two check each other.
"""

from __future__ import annotations

import base64
import datetime
import functools
import gzip as gzip_module
import hashlib
import json
import os
import secrets
import uuid
from pathlib import Path
from typing import Any, Literal


SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
PBKDF2_ROUNDS = 1_000_000
PULUMI_VERSION = "v3.160.0"
COMMAND_VERSION = "1.0.1"

# A directory, or an S3 client with its bucket and key prefix.
Target = Path | str | tuple[Any, str, str]


@functools.lru_cache(maxsize=8)
def derive_key(passphrase: str, salt: bytes) -> bytes:
    """The AES-256 key Pulumi derives from a passphrase and salt."""
    return hashlib.pbkdf2_hmac(
        "sha256", passphrase.encode(), salt, PBKDF2_ROUNDS, dklen=32
    )


def encrypt_value(key: bytes, plaintext: str, *, nonce: bytes = b"") -> str:
    """``v1:<nonce>:<ciphertext+tag>``, as Pulumi's symmetric crypter."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = nonce or secrets.token_bytes(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), None)
    encoded = [base64.b64encode(part).decode() for part in (nonce, sealed)]
    return f"v1:{encoded[0]}:{encoded[1]}"


def make_salt_state(
    passphrase: str, *, salt: bytes = b"", nonce: bytes = b""
) -> tuple[str, bytes]:
    """A passphrase provider's ``salt`` state, and the key it unlocks."""
    salt = salt or secrets.token_bytes(8)
    key = derive_key(passphrase, salt)
    check = encrypt_value(key, "pulumi", nonce=nonce)
    return f"v1:{base64.b64encode(salt).decode()}:{check}", key


def make_secret(key: bytes, value: Any) -> dict[str, str]:
    """A value as a checkpoint stores a secret: signature and ciphertext."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return {SIG_KEY: SECRET_SIG, "ciphertext": encrypt_value(key, text)}


def checkpoint_path(
    project: str,
    stack: str,
    *,
    layout: Literal["project", "legacy"] = "project",
    gzip: bool = False,
) -> str:
    """Where a backend keeps the stack, relative to its root."""
    base = f"{project}/{stack}" if layout == "project" else stack
    return f".pulumi/stacks/{base}.json" + (".gz" if gzip else "")


def build_checkpoint(
    project: str,
    stack: str,
    descriptor: dict[str, Any] | str | None,
    *,
    passphrase: str | None = None,
    secret: bool = False,
    layout: Literal["project", "legacy"] = "project",
    extra_outputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A version 3 checkpoint of a platform stack after ``pulumi up``.

    ``descriptor`` None leaves the ``deployDescriptor`` output out.
    """
    if secret and not passphrase:
        raise ValueError("a secret descriptor needs a passphrase")

    outputs: dict[str, Any] = {}
    provider = None
    if passphrase:
        state, key = make_salt_state(passphrase)
        provider = {"type": "passphrase", "state": {"salt": state}}
    if descriptor is not None:
        outputs["deployDescriptor"] = (
            make_secret(key, descriptor) if secret else descriptor
        )
    outputs.update(extra_outputs or {})

    latest: dict[str, Any] = {
        "manifest": {
            "time": _now(),
            "magic": hashlib.sha256(PULUMI_VERSION.encode()).hexdigest(),
            "version": PULUMI_VERSION,
        },
        "resources": _resources(project, stack, outputs),
        "metadata": {},
    }
    if provider:
        latest["secrets_providers"] = provider
    name = f"organization/{project}/{stack}" if layout == "project" else stack
    return {"version": 3, "checkpoint": {"stack": name, "latest": latest}}


def write_checkpoint(
    target: Target,
    project: str,
    stack: str,
    descriptor: dict[str, Any] | str | None,
    *,
    passphrase: str | None = None,
    secret: bool = False,
    layout: Literal["project", "legacy"] = "project",
    gzip: bool = False,
    extra_outputs: dict[str, Any] | None = None,
) -> str:
    """Write a stack checkpoint into a backend; return its relative path."""
    document = build_checkpoint(
        project, stack, descriptor,
        passphrase=passphrase, secret=secret, layout=layout,
        extra_outputs=extra_outputs,
    )  # fmt: skip
    path = checkpoint_path(project, stack, layout=layout, gzip=gzip)
    write_document(target, path, document, gzip=gzip)
    if layout == "project":
        write_bytes(target, ".pulumi/meta.yaml", b"version: 1\n")
    return path


def write_document(
    target: Target, path: str, document: dict[str, Any], *, gzip: bool
) -> None:
    """Write a checkpoint document as the CLI does, indented JSON."""
    data = json.dumps(document, indent=4).encode()
    if gzip:
        data = gzip_module.compress(data)
    write_bytes(target, path, data)


def write_bytes(target: Target, path: str, data: bytes) -> None:
    """Put ``data`` at ``path`` under a directory or a bucket prefix."""
    if isinstance(target, tuple):
        client, bucket, prefix = target
        prefix = prefix.strip("/")
        key = f"{prefix}/{path}" if prefix else path
        client.put_object(Bucket=bucket, Key=key, Body=data)
        return

    file = Path(target) / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)


def _resources(
    project: str, stack: str, outputs: dict[str, Any]
) -> list[dict[str, Any]]:
    # The shape of a small platform program: the stack, one default
    # provider, and one command that provisioned a host.
    prefix = f"urn:pulumi:{stack}::{project}::"
    stack_urn = f"{prefix}pulumi:pulumi:Stack::{project}-{stack}"
    provider_urn = f"{prefix}pulumi:providers:command::default_1_0_1"
    provider_id = str(uuid.uuid4())
    created = _now()
    command_inputs = {
        "connection": {"host": "api.vm.example.net", "user": "root"},
        "create": "systemctl daemon-reload",
    }
    return [
        {
            "urn": stack_urn,
            "custom": False,
            "type": "pulumi:pulumi:Stack",
            "outputs": outputs,
            "created": created,
            "modified": created,
        },
        {
            "urn": provider_urn,
            "custom": True,
            "id": provider_id,
            "type": "pulumi:providers:command",
            "inputs": {"__internal": {}, "version": COMMAND_VERSION},
            "outputs": {"version": COMMAND_VERSION},
            "created": created,
            "modified": created,
        },
        {
            "urn": f"{prefix}command:remote:Command::provision-api",
            "custom": True,
            "id": f"provision-api-{os.urandom(4).hex()}",
            "type": "command:remote:Command",
            "parent": stack_urn,
            "provider": f"{provider_urn}::{provider_id}",
            "inputs": command_inputs,
            "outputs": {**command_inputs, "stderr": "", "stdout": ""},
            "created": created,
            "modified": created,
        },
    ]


def _now() -> str:
    moment = datetime.datetime.now(datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
