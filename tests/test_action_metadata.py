"""action.yml, the image and the README agree with the code.

action.yml declares exactly what spec.py names and what the code reads;
the image it points at has the package's version; the Dockerfile, the
lock file and .dockerignore keep the promises that no local build can
check; the README's tables are the generated ones.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import inforge_action
from inforge_action.inputs import Inputs, load_inputs
from inforge_action.spec import INPUTS, OUTPUTS


ROOT = Path(__file__).resolve().parents[1]
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
IMAGE = "ghcr.io/wardnet/inforge-action"


def _differences(declared, expected) -> str:
    missing = sorted(set(expected) - set(declared))
    extra = sorted(set(declared) - set(expected))
    return f"missing from action.yml: {missing}; not in spec.py: {extra}"


def test_action_yml_declares_exactly_the_spec_inputs():
    declared = ACTION["inputs"]

    assert list(declared) == list(INPUTS), _differences(declared, INPUTS)


def test_action_yml_declares_exactly_the_spec_outputs():
    declared = ACTION["outputs"]

    assert list(declared) == list(OUTPUTS), _differences(declared, OUTPUTS)


@pytest.mark.parametrize("name", list(INPUTS))
def test_each_input_has_the_spec_description_and_default(name):
    declared = ACTION["inputs"][name]
    spec = INPUTS[name]

    assert declared["description"] == spec.help
    assert declared["required"] is (name == "command")
    default = declared.get("default", "")
    assert isinstance(default, str), "a default is a string, even 'false'"
    assert default == (spec.runner_default or spec.default)


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_each_output_says_what_it_holds_when_nothing_happened(name):
    description = ACTION["outputs"][name]["description"]

    assert description.startswith(OUTPUTS[name])
    assert "empty" in description


class _Recording(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self.values[name]

    def get(self, name, default=None):
        self.read.add(name)
        return self.values.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def test_load_inputs_reads_exactly_the_declared_inputs():
    environ = _Recording(
        {
            "INPUT_COMMAND": "list",
            "INPUT_R2-ACCOUNT-ID": "account",
            "INPUT_R2-ACCESS-KEY-ID": "key",
            "INPUT_R2-SECRET-ACCESS-KEY": "secret",
        }
    )
    flags = _Recording({})

    inputs = load_inputs(environ, flags)

    read = {n.removeprefix("INPUT_") for n in environ.read if "INPUT_" in n}
    assert read == {name.upper() for name in ACTION["inputs"]}
    assert flags.read == set(ACTION["inputs"])
    assert inputs.command == "list"


def test_the_inputs_model_has_a_field_per_declared_input():
    fields = set(Inputs.model_fields) - {"runner"}

    assert fields == {name.replace("-", "_") for name in ACTION["inputs"]}


def _package_trees() -> Iterator[tuple[str, ast.AST]]:
    for path in sorted((ROOT / "inforge_action").glob("*.py")):
        yield path.name, ast.parse(path.read_text())


def test_the_code_uses_every_declared_input():
    used = set()
    for name, tree in _package_trees():
        if name in ("inputs.py", "spec.py"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _names_inputs(node.value):
                used.add(node.attr)

    ignored = [
        name for name in ACTION["inputs"] if name.replace("-", "_") not in used
    ]
    assert ignored == [], f"declared, validated, never used: {ignored}"


def _names_inputs(node: ast.AST) -> bool:
    """``inputs.x``, ``run.inputs.x`` or ``self.inputs.x``."""
    if isinstance(node, ast.Name):
        return node.id == "inputs"
    return isinstance(node, ast.Attribute) and node.attr == "inputs"


def test_the_code_sets_every_declared_output_and_no_other():
    set_names = set()
    for _, tree in _package_trees():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "set_output"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                set_names.add(node.args[0].value)

    declared = set(ACTION["outputs"])
    assert set_names == declared, (
        f"declared but never set: {sorted(declared - set_names)}; set but "
        f"not declared: {sorted(set_names - declared)}"
    )


def test_the_image_is_the_released_one_of_this_version():
    version = PYPROJECT["project"]["version"]

    assert inforge_action.__version__ == version
    assert ACTION["runs"] == {
        "using": "docker",
        "image": f"docker://{IMAGE}:{version}",
    }


def test_the_action_has_branding_and_an_author():
    assert ACTION["name"] and ACTION["description"] and ACTION["author"]
    assert set(ACTION["branding"]) == {"icon", "color"}


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in joined.splitlines()]
    found = []
    for line in lines:
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_the_base_image_is_a_pinned_python_3_12_slim():
    base = [rest for keyword, rest in _instructions() if keyword == "FROM"]

    assert len(base) == 1
    assert re.fullmatch(r"python:3\.12\.\d+-slim-bookworm", base[0])


def test_the_image_fits_the_runner():
    keywords = [keyword for keyword, _ in _instructions()]
    entrypoint = [r for k, r in _instructions() if k == "ENTRYPOINT"]

    assert "USER" not in keywords, "GitHub runs container actions as root"
    assert "WORKDIR" not in keywords, "GitHub sets the working directory"
    assert entrypoint == ['["/usr/local/bin/python", "/app/entrypoint.py"]']
    assert re.search(r"PYTHONUNBUFFERED=1\b", DOCKERFILE)
    assert re.search(r"PYTHONDONTWRITEBYTECODE=1\b", DOCKERFILE)


def test_the_image_installs_locked_wheels_before_the_code():
    runs = [rest for keyword, rest in _instructions() if keyword == "RUN"]
    copies = [rest for keyword, rest in _instructions() if keyword == "COPY"]
    install = next(run for run in runs if "pip install" in run)

    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
        assert flag in install
    assert "-r /app/requirements.lock" in install
    assert copies[0].startswith("requirements.lock ")
    order = [
        text for keyword, text in _instructions() if keyword in ("COPY", "RUN")
    ]
    assert order.index(install) < order.index(copies[1])


def test_the_image_has_git_and_no_ssh_client():
    apt = next(r for k, r in _instructions() if "apt-get install" in r)

    assert re.search(r"\bgit\b", apt)
    assert "openssh-client" not in apt, "SSH goes through paramiko"


def test_the_build_fails_when_the_package_cannot_start():
    runs = [rest for keyword, rest in _instructions() if keyword == "RUN"]

    assert any("/app/entrypoint.py --help" in run for run in runs)


def test_dockerignore_is_a_whitelist_of_what_the_image_copies():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        rest.split()[0]
        for keyword, rest in _instructions()
        if keyword == "COPY"
    ]

    assert patterns[0] == "*"
    for source in sources:
        assert f"!{source}" in patterns or f"!{source}/" in patterns


def _locked() -> dict[str, tuple[str, int]]:
    """Pinned name -> (version, number of hashes)."""
    text = (ROOT / "requirements.lock").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    pins = {}
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        name, _, version = requirement.partition("==")
        hashes = [o for o in options if o.startswith("--hash=sha256:")]
        pins[canonicalize_name(name)] = (version, len(hashes))
    return pins


def test_the_lock_pins_every_dependency_with_hashes():
    pins = _locked()

    for name, (version, hashes) in pins.items():
        assert version, f"{name} is not pinned with =="
        assert hashes >= 1, f"{name} has no hash"
    for dependency in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} from pyproject.toml is not locked"
        assert requirement.specifier.contains(pins[name][0]), (
            f"{name}=={pins[name][0]} does not satisfy {requirement}; "
            "regenerate requirements.lock"
        )


def test_the_lock_says_how_to_regenerate_it():
    head = (ROOT / "requirements.lock").read_text().split("\n\n")[0]

    assert "uv pip compile pyproject.toml --python-version 3.12" in head


def _gen_tables():
    path = ROOT / "scripts" / "gen_tables.py"
    spec = importlib.util.spec_from_file_location("gen_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_holds_the_current_tables():
    gen_tables = _gen_tables()
    text = (ROOT / "README.md").read_text()

    assert gen_tables.has_markers(text)
    assert gen_tables.render(text) == text, (
        "stale tables: run python scripts/gen_tables.py --write README.md"
    )


def test_the_generated_tables_name_every_input_and_output():
    tables = _gen_tables().tables()

    for name in INPUTS:
        assert f"| `{name}` |" in tables["inputs"]
    for name in OUTPUTS:
        assert f"| `{name}` |" in tables["outputs"]
