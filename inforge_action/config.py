"""The YAML files that configure a release.

In the service repo: ``deployments/inforge.yaml`` and
``deployments/<service>.yaml``. In the platform repo: ``inforge.yaml``
and the optional ``inforge.<env>.yaml``. Formats are in CONTRACT.md.
"""

from __future__ import annotations

import logging
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .inputs import SAFE_NAME_FORM, is_safe_name


log = logging.getLogger(__name__)


class _Loose(BaseModel):
    # inforge ignores keys it does not know; so do we.
    model_config = ConfigDict(frozen=True, extra="ignore")


class Backend(_Loose):
    type: str
    url: str = ""


class Artifacts(_Loose):
    backend: Backend | None = None
    keep: int | None = Field(default=None, ge=0)


class PlatformConfig(_Loose):
    """The platform repo's ``inforge.yaml`` (merged with the env file)."""

    name: str
    backend: Backend
    artifacts: Artifacts = Artifacts()


class ServiceRepoConfig(_Loose):
    """``deployments/inforge.yaml`` of a service repo."""

    platform: str
    services: list[str] = Field(min_length=1)


class EnvironmentConfig(_Loose):
    artifact_path: str = "dist"
    health_check: str = ""
    delivery: str = "raw"


class ServiceConfig(_Loose):
    """``deployments/<service>.yaml``."""

    platform: str = ""
    environments: dict[str, EnvironmentConfig] = {}

    def environment(self, name: str, path: Path) -> EnvironmentConfig:
        """One environment's settings; an unknown one lists the known."""
        if name in self.environments:
            return self.environments[name]
        known = ", ".join(sorted(self.environments)) or "none"
        raise ConfigError(
            f"environment {name!r} is not in {path} (known: {known}); "
            "fix the `environment` input or add it under `environments:`"
        )


def read_yaml(path: Path, *, required: bool = True) -> dict[str, Any]:
    """A YAML mapping from ``path``; absent and optional gives ``{}``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not required:
            return {}
        raise ConfigError(
            f"{path} does not exist; create it as the README's \"Before the "
            'first deploy" describes, or '
            "point `deployments-dir` at the right directory"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error}") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at its top level")
    return data


def _validate(model: type[BaseModel], data: dict[str, Any], path: Path):
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in d['loc']) or '(top)'}: {d['msg']}"
            for d in error.errors()
        )
        raise ConfigError(f"{path} is invalid: {problems}") from None


def load_service_repo(deployments: Path) -> ServiceRepoConfig:
    path = deployments / "inforge.yaml"
    data = read_yaml(path)
    _warn_unknown(ServiceRepoConfig, data, path)
    return _validate(ServiceRepoConfig, data, path)


def load_service(deployments: Path, service: str) -> ServiceConfig:
    path = deployments / f"{service}.yaml"
    data = read_yaml(path)
    _warn_unknown(ServiceConfig, data, path)
    return _validate(ServiceConfig, data, path)


def _warn_unknown(model: type[BaseModel], data: Any, path: Path) -> None:
    # The service repo's files are ours alone, so a key we do not know is
    # a typo (`artifact-path`, `healthcheck`) that would silently fall
    # back to a default; the platform's inforge.yaml is shared with the
    # inforge CLI and may hold keys meant for it.
    for where, key, known in _unknown_keys(model, data, ""):
        log.warning(
            "%s: unknown key %r%s is ignored (known: %s)",
            path,
            key,
            f" under {where}" if where else "",
            ", ".join(known),
        )


def _unknown_keys(model: type[BaseModel], data: Any, where: str):
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            yield where, key, sorted(fields)
            continue
        inner = _model_of(fields[key].annotation)
        if inner is None:
            continue
        kind, nested = inner
        child = f"{where}.{key}" if where else key
        if kind == "model":
            yield from _unknown_keys(nested, value, child)
        elif isinstance(value, dict):
            for name, item in value.items():
                yield from _unknown_keys(nested, item, f"{child}.{name}")


def _model_of(annotation: Any):
    """("model", M) for a model field, ("map", M) for dict[str, M]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) is dict and len(arguments) == 2:
        value = arguments[1]
        if isinstance(value, type) and issubclass(value, BaseModel):
            return "map", value
    return None


def resolve_service(requested: str, repo: ServiceRepoConfig, path: Path):
    """The service to act on: the input, else the only one listed."""
    for name in repo.services:
        if not is_safe_name(name):
            raise ConfigError(
                f"service {name!r} in {path} is not a safe name; use "
                f"{SAFE_NAME_FORM}"
            )
    if requested:
        if requested not in repo.services:
            raise ConfigError(
                f"service {requested!r} is not listed in {path} (listed: "
                f"{', '.join(repo.services)}); fix the `service` input or "
                "add it to `services:`"
            )
        return requested
    if len(repo.services) == 1:
        return repo.services[0]
    raise ConfigError(
        f"{path} lists several services ({', '.join(repo.services)}); set "
        "the `service` input to choose one"
    )


def load_platform(root: Path, environment: str = "") -> PlatformConfig:
    """``inforge.yaml``, with ``inforge.<env>.yaml`` merged over it."""
    path = root / "inforge.yaml"
    data = read_yaml(path)
    if environment:
        overlay = read_yaml(root / f"inforge.{environment}.yaml",
                            required=False)  # fmt: skip
        data = _merge(data, overlay)
    return _validate(PlatformConfig, data, path)


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def bucket_from_url(url: str, what: str) -> str:
    """The bucket of an ``r2://<bucket>`` URL."""
    prefix = "r2://"
    bucket = url[len(prefix) :].strip("/") if url.startswith(prefix) else ""
    if not bucket or "/" in bucket:
        raise ConfigError(
            f"{what} is {url!r}; use r2://<bucket>, or set the `bucket` input"
        )
    return bucket
