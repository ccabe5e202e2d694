import pytest

from inforge_action.errors import InputError
from inforge_action.inputs import load_inputs


STORE = {
    "INPUT_R2-ACCESS-KEY-ID": "key",
    "INPUT_R2-SECRET-ACCESS-KEY": "secret",
    "INPUT_R2-ACCOUNT-ID": "account",
}


def test_hyphenated_input_names_are_read_as_the_runner_passes_them():
    environ = {
        **STORE,
        "INPUT_COMMAND": "push",
        "INPUT_ARTIFACT-PATH": "build/out",
        "INPUT_DEPLOYMENTS-DIR": "ops/deploy",
        "INPUT_DRY-RUN": "true",
        "GITHUB_SHA": "4f2a9c1e0b7d",
    }

    inputs = load_inputs(environ, {})

    assert inputs.artifact_path == "build/out"
    assert inputs.deployments_dir == "ops/deploy"
    assert inputs.dry_run is True
    assert inputs.sha == "4f2a9c1e0b7d"
    assert inputs.r2_secret_access_key == "secret"


def test_a_flag_wins_over_the_environment():
    environ = {**STORE, "INPUT_COMMAND": "push", "INPUT_SHA": "from-env"}

    inputs = load_inputs(environ, {"sha": "from-flag"})

    assert inputs.sha == "from-flag"


def test_empty_inputs_take_their_defaults():
    environ = {**STORE, "INPUT_COMMAND": "list", "INPUT_SSH-PORT": " "}

    inputs = load_inputs(environ, {})

    assert inputs.ssh_port == 22
    assert inputs.keep is None
    assert inputs.commit_manifest is False
    assert inputs.platform_url == "https://github.com/{repo}.git"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("service", "../etc", id="dotdot"),
        pytest.param("service", "a/b", id="slash"),
        pytest.param("environment", "prd qa", id="space"),
        pytest.param("environment", "-rf", id="leading-dash"),
        pytest.param("sha", "abc\x1bdef", id="control"),
        pytest.param("sha", "abc\ndef", id="newline"),
        pytest.param("sha", "abc..def", id="inner-dotdot"),
    ],
)
def test_names_that_could_escape_a_key_are_refused(name, value):
    environ = {**STORE, "INPUT_COMMAND": "push", "INPUT_SHA": "abc"}

    with pytest.raises(InputError) as caught:
        load_inputs(environ, {name: value})

    assert f"`{name}`" in str(caught.value)
    assert "letters, digits" in str(caught.value)


def test_an_arch_suffix_in_the_sha_is_refused():
    environ = {**STORE, "INPUT_COMMAND": "push"}

    with pytest.raises(InputError, match="`arch` input"):
        load_inputs(environ, {"sha": "abc-arm64"})


def test_missing_and_bad_inputs_are_named_together():
    environ = {
        "INPUT_COMMAND": "deploy",
        "INPUT_ARCH": "riscv",
        "INPUT_FORCE": "yes",
        "INPUT_SHA": "abc",
    }

    with pytest.raises(InputError) as caught:
        load_inputs(environ, {})

    message = str(caught.value)
    for name in (
        "arch",
        "force",
        "environment",
        "r2-access-key-id",
        "r2-secret-access-key",
        "r2-account-id",
        "ssh-private-key",
        "known-hosts",
    ):
        assert f"`{name}`" in message, name
    assert message.startswith("8 inputs need fixing")


def test_an_unknown_command_lists_the_commands():
    with pytest.raises(InputError, match="push, deploy, rollback"):
        load_inputs({"INPUT_COMMAND": "ship"}, {})


def test_secrets_are_collected_for_masking():
    environ = {
        **STORE,
        "INPUT_COMMAND": "list",
        "PULUMI_CONFIG_PASSPHRASE": "correct horse",
    }

    inputs = load_inputs(environ, {})

    assert set(inputs.secrets) == {
        "key", "secret", "account", "correct horse"
    }  # fmt: skip


def test_endpoint_url_replaces_the_account_id():
    environ = {
        "INPUT_COMMAND": "list",
        "INPUT_R2-ACCESS-KEY-ID": "key",
        "INPUT_R2-SECRET-ACCESS-KEY": "secret",
        "INPUT_ENDPOINT-URL": "http://127.0.0.1:8333",
    }

    inputs = load_inputs(environ, {})

    assert inputs.endpoint_url == "http://127.0.0.1:8333"
