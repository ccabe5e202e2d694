"""The deploy targets: the platform stack's ``deployDescriptor`` output.

Every field of a target ends up in a path, a unit name or a command on a
host, so each one is checked here, once, before anything reaches a host.
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    field_validator,
)

from inforge_action.errors import StateError


SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
LOGIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
PATH_CHARACTERS = re.compile(r"[A-Za-z0-9_.@+/-]+")
UNIT_NAME = re.compile(
    r"[A-Za-z0-9_:.\\@-]+"
    r"\.(?:service|socket|target|timer|path|mount|slice|scope)"
)
UNIT_NAME_MAX = 255
HOST_NAME_MAX = 253
SHOWN_VALUE_MAX = 80


class Target(BaseModel):
    """One host that runs a service, as provisioning made it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    service: str
    host_dns: str
    folder: str
    unit: str
    user: str = ""
    ssh_user: str = "deploy"
    scope: str = ""

    @field_validator("user", "scope", mode="before")
    @classmethod
    def _empty_when_null(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("ssh_user", mode="before")
    @classmethod
    def _deploy_when_unnamed(cls, value: Any) -> Any:
        # The inforge CLI logs in as "deploy" when the host names nobody.
        return "deploy" if value in (None, "") else value

    @field_validator("service")
    @classmethod
    def _check_service(cls, value: str) -> str:
        if not SERVICE_NAME.fullmatch(value):
            raise ValueError(
                "a service name is letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("user", "ssh_user")
    @classmethod
    def _check_login(cls, value: str) -> str:
        if value and not LOGIN_NAME.fullmatch(value):
            raise ValueError(
                "a user name is up to 32 letters, digits, '.', '_' or "
                "'-', starting with a letter or '_'"
            )
        return value

    @field_validator("host_dns")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not is_host(value):
            raise ValueError(
                "expected a DNS name or an IP address (no spaces, no "
                "leading '-')"
            )
        return value

    @field_validator("folder")
    @classmethod
    def _check_folder(cls, value: str) -> str:
        problem = folder_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("unit")
    @classmethod
    def _check_unit(cls, value: str) -> str:
        is_unit = len(value) <= UNIT_NAME_MAX and UNIT_NAME.fullmatch(value)
        if not is_unit or value.startswith("-"):
            raise ValueError(
                "expected a systemd unit name such as 'wardnet-api.service'"
            )
        return value


class Descriptor(BaseModel):
    """The stack output ``deployDescriptor``: where every service runs."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    environment: str
    targets: tuple[Target, ...] = ()

    @field_validator("targets", mode="before")
    @classmethod
    def _none_when_null(cls, value: Any) -> Any:
        return () if value is None else value

    def services(self) -> list[str]:
        """The services that have at least one target, sorted."""
        return sorted({target.service for target in self.targets})


def is_host(value: str) -> bool:
    """Whether ``value`` is a DNS host name or an IP address literal."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return True

    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > HOST_NAME_MAX:
        return False
    return all(HOST_LABEL.fullmatch(label) for label in name.split("."))


def folder_problem(value: str) -> str:
    """Why ``value`` is not a safe service folder; empty when it is."""
    if not value.startswith("/"):
        return "the folder must be an absolute path"
    if not PATH_CHARACTERS.fullmatch(value):
        return (
            "the folder may hold only letters, digits and '_', '.', '@', "
            "'+', '-', '/'"
        )
    if ".." in value.split("/"):
        return "the folder must not contain '..'"
    if value == "/":
        return "the folder must not be the root directory"
    if posixpath.normpath(value) != value or value.startswith("//"):
        return (
            "the folder must be a normalised path (no '.', '//' or "
            f"trailing '/'), e.g. {posixpath.normpath(value)!r}"
        )
    return ""


def parse_descriptor(value: Any, *, source: str) -> Descriptor:
    """Validate a ``deployDescriptor`` given as a mapping or as YAML/JSON.

    ``source`` names where the value came from, for the error message.
    """
    if isinstance(value, str):
        value = _load_text(value, source=source)
    if not isinstance(value, dict):
        raise StateError(
            f"{source}: the deployDescriptor must be a mapping with "
            f"`environment` and `targets`, not {type(value).__name__}; "
            "fix the output in the platform program and run `pulumi up`"
        )

    try:
        return Descriptor.model_validate(value)
    except ValidationError as error:
        problems = "; ".join(_describe(item) for item in error.errors())
        raise StateError(
            f"{source}: the deployDescriptor is invalid: {problems}. "
            "Fix the output in the platform program and run `pulumi up`"
        ) from error


def select_targets(descriptor: Descriptor, service: str) -> list[Target]:
    """The targets of ``service``; having none is an error."""
    targets = [t for t in descriptor.targets if t.service == service]
    if targets:
        return targets

    known = ", ".join(descriptor.services()) or "none"
    raise StateError(
        f"the deployDescriptor of environment {descriptor.environment!r} "
        f"has no target for service {service!r}; services with targets: "
        f"{known}. Check the service name in deployments/inforge.yaml, or "
        "provision the service in the platform repo first"
    )


def _load_text(text: str, *, source: str) -> Any:
    # Pulumi outputs are often JSON strings; YAML reads JSON too, but
    # JSON first keeps YAML's type guessing away from JSON values.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass

    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise StateError(
            f"{source}: the deployDescriptor is a string that is neither "
            f"JSON nor YAML ({error}); fix the output in the platform "
            "program and run `pulumi up`"
        ) from error


def _describe(item: dict[str, Any]) -> str:
    where = _field_path(item["loc"])
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] == "missing":
        return f"{where} is missing"
    shown = repr(item["input"])
    if len(shown) > SHOWN_VALUE_MAX:
        shown = shown[: SHOWN_VALUE_MAX - 3] + "..."
    return f"{where}={shown}: {message}"


def _field_path(location: tuple[Any, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "the descriptor"
