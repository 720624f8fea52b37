"""Turn AWS errors into one clear message that says what to do, instead of a deep stack trace.

A notebook calls `show_aws_errors_briefly()` once; from then on, an AWS error in any cell prints a
short explanation (the full trace stays one `%tb` away).
"""

from __future__ import annotations

from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

AWS_ERRORS = (ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError, PartialCredentialsError)

ACCESS_DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"}


def sdk_errors() -> tuple[type[BaseException], ...]:
    """The SageMaker SDK's error for a job or endpoint that ended Failed (imported late: the SDK is slow to load)."""
    from sagemaker.core.utils.exceptions import FailedStatusError

    return (FailedStatusError,)


def explain(error: BaseException) -> str:
    """One or two sentences: what went wrong with AWS and what to do about it."""
    if isinstance(error, sdk_errors()):
        return (
            f"{error} Read the job's log above (or in CloudWatch Logs, /aws/sagemaker/TrainingJobs) for the "
            "lines before the failure, fix the cause, and run the cell again."
        )
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return (
            "No AWS credentials found. In SageMaker Studio the execution role provides them; on a laptop run "
            "`aws configure` or set AWS_PROFILE; to work offline, run the notebooks with `make tutorial`, "
            "which starts the local AWS endpoint."
        )
    if isinstance(error, NoRegionError):
        return "No AWS region is set. Set AWS_DEFAULT_REGION (for example us-east-1) or run `aws configure`."
    if isinstance(error, EndpointConnectionError):
        return (
            f"Cannot reach AWS at {error.kwargs.get('endpoint_url')}. Check your network; offline, check that the "
            "local AWS endpoint is running (AWS_ENDPOINT_URL points at it)."
        )
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        operation = error.operation_name
        if code == "NoSuchBucket":
            return (
                f"The S3 bucket does not exist ({operation}: {message or code}). Check the bucket name, or let the "
                "SageMaker session create its default bucket (mnist_s3.default_bucket())."
            )
        if code in ACCESS_DENIED_CODES:
            return (
                f"Access denied to {operation}: {message}. Your role lacks a permission this workbook needs; "
                "the README lists a least-privilege IAM policy to attach to it."
            )
        return f"AWS refused {operation} ({code}): {message}"
    raise TypeError(f"not an AWS error: {error!r}")


def show_aws_errors_briefly() -> None:
    """In IPython, print AWS errors as one clear message (run `%tb` for the full trace)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("show_aws_errors_briefly() works in a notebook or IPython only")

    def handler(shell, kind, error, traceback, tb_offset=None):  # IPython's custom_exc signature
        print(f"{type(error).__name__}: {explain(error)}\n(run %tb to see the full trace)")
        return None

    shell.set_custom_exc(AWS_ERRORS + sdk_errors(), handler)
