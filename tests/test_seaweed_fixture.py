import botocore.exceptions
import pytest


def test_server_enforces_credentials(s3_server, bucket):
    wrong = s3_server.client(secret_key="not-the-secret")

    with pytest.raises(botocore.exceptions.ClientError) as caught:
        wrong.list_objects_v2(Bucket=bucket)

    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
