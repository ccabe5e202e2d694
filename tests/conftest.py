import pytest

from tests.support.seaweed import start_seaweed, stop_seaweed


pytest_plugins = ("tests.support.host_fixtures",)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS server for the whole session, credentials enforced."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield server
    stop_seaweed(server)


@pytest.fixture
def bucket(s3_server):
    """A fresh, empty bucket on the session's S3 server."""
    return s3_server.make_bucket()
