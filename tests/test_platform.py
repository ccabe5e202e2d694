import pytest

from inforge_action import config
from inforge_action.errors import ConfigError, PlatformError
from inforge_action.platform import PlatformCheckout, PlatformSource
from tests.support.gitrepo import commit_files, git, make_repo


PLATFORM_YAML = """\
name: wardnet-platform
backend:
  type: r2
  url: r2://wardnet-state
artifacts:
  backend:
    type: r2
    url: r2://wardnet-artifacts
  keep: 5
"""


@pytest.fixture
def platform_repo(tmp_path):
    repo = tmp_path / "platform"
    make_repo(
        repo,
        {
            "inforge.yaml": PLATFORM_YAML,
            "inforge.qa.yaml": "artifacts:\n  keep: 2\n",
            "stacks/big.ts": "x" * 1000,
        },
    )
    git(repo, "checkout", "-q", "-b", "pulumi-state")
    commit_files(repo, {".pulumi/stacks/p/prd.json": "{}"}, "state")
    git(repo, "checkout", "-q", "main")
    return repo


def checkout(tmp_path, repo, ref=""):
    source = PlatformSource(
        repo="wardnet/platform", url_template=f"file://{repo}", ref=ref
    )
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return PlatformCheckout(source, workdir)


def test_reads_only_the_inforge_files(tmp_path, platform_repo):
    root = checkout(tmp_path, platform_repo).config_dir()

    files = sorted(p.name for p in root.iterdir() if p.name != ".git")
    platform = config.load_platform(root, "prd")

    assert files == ["inforge.qa.yaml", "inforge.yaml"]
    assert platform.name == "wardnet-platform"
    assert platform.artifacts.keep == 5
    assert platform.backend.url == "r2://wardnet-state"


def test_the_environment_file_merges_over_inforge_yaml(
    tmp_path, platform_repo
):
    root = checkout(tmp_path, platform_repo).config_dir()

    platform = config.load_platform(root, "qa")

    assert platform.artifacts.keep == 2
    assert platform.artifacts.backend.url == "r2://wardnet-artifacts"


def test_a_branch_checkout_holds_the_state(tmp_path, platform_repo):
    root = checkout(tmp_path, platform_repo).checkout_branch("pulumi-state")

    assert (root / ".pulumi/stacks/p/prd.json").read_text() == "{}"


def test_a_missing_ref_names_repo_and_ref_and_what_to_check(
    tmp_path, platform_repo
):
    with pytest.raises(PlatformError) as caught:
        checkout(tmp_path, platform_repo, ref="no-such-branch").config_dir()

    message = str(caught.value)
    assert "no-such-branch" in message
    assert "wardnet/platform" in message
    assert "platform-token" in message


def test_the_token_travels_in_no_argv_or_url(tmp_path, platform_repo):
    source = PlatformSource(
        repo="wardnet/platform",
        url_template=f"file://{platform_repo}",
        token="ghs_topsecret",
    )
    workdir = tmp_path / "work"
    workdir.mkdir()

    root = PlatformCheckout(source, workdir).config_dir()

    assert "ghs_topsecret" not in (root / ".git" / "config").read_text()
    assert "ghs_topsecret" not in source.url


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("name: p\n", "backend", id="no-backend"),
        pytest.param("- a\n", "mapping", id="not-a-mapping"),
        pytest.param("name: [\n", "not valid YAML", id="bad-yaml"),
    ],
)
def test_a_broken_inforge_yaml_says_what_is_wrong(tmp_path, text, fragment):
    (tmp_path / "inforge.yaml").write_text(text)

    with pytest.raises(ConfigError, match=fragment):
        config.load_platform(tmp_path)


def test_an_unknown_environment_lists_the_known_ones(tmp_path):
    (tmp_path / "api.yaml").write_text(
        "environments:\n  prd: {}\n  qa:\n    artifact_path: out\n"
    )
    service = config.load_service(tmp_path, "api")

    with pytest.raises(ConfigError, match=r"known: prd, qa"):
        service.environment("stg", tmp_path / "api.yaml")


@pytest.mark.parametrize(
    ("requested", "services", "expected"),
    [
        pytest.param("", ["api"], "api", id="only-one"),
        pytest.param("web", ["api", "web"], "web", id="chosen"),
    ],
)
def test_the_service_resolves(tmp_path, requested, services, expected):
    repo = config.ServiceRepoConfig(platform="o/p", services=services)

    assert config.resolve_service(requested, repo, tmp_path) == expected


@pytest.mark.parametrize(
    ("requested", "fragment"),
    [
        pytest.param("", "several services", id="ambiguous"),
        pytest.param("db", "not listed", id="unlisted"),
    ],
)
def test_an_unresolvable_service_says_why(tmp_path, requested, fragment):
    repo = config.ServiceRepoConfig(platform="o/p", services=["api", "web"])

    with pytest.raises(ConfigError, match=fragment):
        config.resolve_service(requested, repo, tmp_path)


def test_a_misspelled_key_in_the_service_file_is_warned_about(
    tmp_path, caplog
):
    (tmp_path / "api.yaml").write_text(
        "environments:\n  prd:\n    artifact-path: build\n"
        "    healthcheck: http://127.0.0.1:8080/\n"
    )

    with caplog.at_level("WARNING", logger="inforge_action"):
        service = config.load_service(tmp_path, "api")

    assert service.environments["prd"].artifact_path == "dist"
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'artifact-path'" in warned and "'healthcheck'" in warned
    assert "environments.prd" in warned and "artifact_path" in warned
