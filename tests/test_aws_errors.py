"""AWS errors become one clear message that says what to do, in code and in a notebook."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError
from IPython.core.interactiveshell import InteractiveShell

import aws_errors
from local_aws import LocalAWS
from support import free_port


def test_missing_credentials_and_region_say_how_to_provide_them() -> None:
    assert "aws configure" in aws_errors.explain(NoCredentialsError())
    assert "make tutorial" in aws_errors.explain(NoCredentialsError())
    assert "AWS_DEFAULT_REGION" in aws_errors.explain(NoRegionError())


def test_a_missing_bucket_is_named_as_such(local_aws_env: LocalAWS) -> None:
    with pytest.raises(ClientError) as caught:
        boto3.client("s3").list_objects_v2(Bucket="no-such-bucket-in-the-workbook")
    message = aws_errors.explain(caught.value)
    assert "bucket does not exist" in message and "ListObjectsV2" in message


def test_access_denied_points_at_the_iam_policy() -> None:
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "not allowed"}}, "PutObject")
    message = aws_errors.explain(denied)
    assert message.startswith("Access denied to PutObject: not allowed") and "IAM policy" in message


def test_an_unreachable_endpoint_names_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="y")
    with pytest.raises(Exception) as caught:
        client.list_buckets()
    message = aws_errors.explain(caught.value)
    assert url in message and "local AWS endpoint" in message


def test_a_failed_training_job_shows_its_failure_reason_and_where_the_log_is() -> None:
    from sagemaker.core.utils.exceptions import FailedStatusError

    failed = FailedStatusError(resource_type="TrainingJob", status="Failed", reason="AlgorithmError: boom")
    message = aws_errors.explain(failed)
    assert "Failure Reason: AlgorithmError: boom" in message and "/aws/sagemaker/TrainingJobs" in message


def test_other_errors_are_not_disguised() -> None:
    with pytest.raises(TypeError):
        aws_errors.explain(ValueError("not AWS"))


def test_a_notebook_cell_prints_the_message_and_still_fails(capsys: pytest.CaptureFixture[str]) -> None:
    shell = InteractiveShell.instance()
    try:
        shell.run_cell("import aws_errors; aws_errors.show_aws_errors_briefly()")
        result = shell.run_cell("from botocore.exceptions import NoRegionError; raise NoRegionError()")
    finally:
        InteractiveShell.clear_instance()
    printed = capsys.readouterr().out
    assert isinstance(result.error_in_exec, NoRegionError)  # the cell fails: papermill and CI see it
    assert "NoRegionError: No AWS region is set" in printed and "%tb" in printed
    assert "Traceback" not in printed
