import io
import re

from inforge_action.inputs import Runner
from inforge_action.report import Reporter


def actions_reporter(tmp_path):
    runner = Runner(
        is_actions=True,
        output_path=str(tmp_path / "output"),
        summary_path=str(tmp_path / "summary"),
    )
    return Reporter(runner, io.StringIO())


def test_secrets_are_masked_line_by_line_before_they_could_print(
    tmp_path, monkeypatch
):
    reporter = actions_reporter(tmp_path)
    key = "-----BEGIN KEY-----\nAAAAsecretline\n-----END KEY-----"

    reporter.mask(key)
    reporter.info("loaded AAAAsecretline from the input")
    reporter.warning("still AAAAsecretline")

    log = reporter.stream.getvalue().splitlines()
    assert log[:3] == [
        "::add-mask::-----BEGIN KEY-----",
        "::add-mask::AAAAsecretline",
        "::add-mask::-----END KEY-----",
    ]
    assert "AAAAsecretline" not in "\n".join(log[3:])


def test_outputs_use_a_random_heredoc_delimiter(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "output"))
    reporter = actions_reporter(tmp_path)

    reporter.set_output("hosts", "line one\nline two")
    reporter.set_output("pruned", ["a", "b"])

    text = (tmp_path / "output").read_text()
    match = re.match(r"hosts<<(\S+)\nline one\nline two\n\1\n", text)
    assert match and match.group(1) != "EOF"
    assert "pruned<<" in text and '["a", "b"]' in text


def test_annotations_escape_newlines_and_titles(tmp_path):
    reporter = actions_reporter(tmp_path)

    reporter.error("first\nsecond 100%", title="Deploy: failed, badly")

    assert reporter.stream.getvalue() == (
        "::error title=Deploy%3A failed%2C badly::first%0Asecond 100%25\n"
    )


def test_plain_text_on_a_laptop(tmp_path):
    reporter = Reporter(Runner(), io.StringIO())

    with reporter.group("Upload"):
        reporter.set_output("sha", "abc")

    assert re.fullmatch(
        r"==> Upload\noutput sha=abc\n    \d+\.\d\d s\n",
        reporter.stream.getvalue(),
    )
