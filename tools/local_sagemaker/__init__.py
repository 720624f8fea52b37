"""The offline SageMaker behind the local AWS endpoint: moto's server, patched so that resources really run here.

moto stores SageMaker requests and reports each resource finished at once. `install()` overrides its
responses, in the endpoint's own process (`tools/local_aws.py serve`), so that what a notebook creates
really runs on this machine and behaves as SageMaker's resource does. One module per SageMaker resource,
over shared pieces that follow SageMaker's own contract:

| module             | SageMaker                                                                           |
| ------------------ | ----------------------------------------------------------------------------------- |
| `training_jobs.py` | training jobs: Create/Stop/UpdateTrainingJob, attempts, RetryStrategy, statuses     |
| `tuning_jobs.py`   | hyperparameter tuning jobs: Create/Describe/Stop, trials as training jobs, counters  |
| `tuning_strategies.py` | how a tuning job picks its trials: Random, Grid, Bayesian; early stopping       |
| `framework_container.py` | jobs without ContainerEntrypoint, as the framework images run sagemaker_program |
| `hosting.py`       | models, endpoint configs, real-time and serverless endpoints, InvokeEndpoint        |
| `transform_jobs.py` | batch transform jobs: an S3 prefix through the model's handlers, `.out` objects    |
| `serving_container.py` | the inference container: model.tar.gz as /opt/ml/model, the image, its log      |
| `model_server.py`  | the PyTorch serving container's model server: /ping, /invocations, the handlers     |
| `container.py`     | the training container's contract: /opt/ml, its config files, the SM_* variables    |
| `s3_io.py`         | channel downloads from S3, checkpoint and TensorBoard syncs, model.tar.gz packing   |
| `processes.py`     | the container's processes: mount namespace, SIGTERM, grace period, SIGKILL          |
| `job_logs.py`      | CloudWatch Logs streams, metric definitions, FailureReason                          |
| `moto_patch.py`    | the one moto version patched, and how a module overrides moto's SageMaker responses |

A new resource (endpoints, batch transform, tuning jobs, pipelines) is a new module with an
`install(state_dir)` that overrides its operations and returns something with `shutdown()`, and one
more name in RESOURCE_MODULES.

The resource modules are imported by `install()` only: the shared pieces (container.py, s3_io.py) are
also used by the tests and the benchmark, which must not patch moto or depend on its version.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

# The modules whose install(state_dir) overrides moto's responses for one kind of SageMaker resource.
RESOURCE_MODULES = ("training_jobs", "tuning_jobs", "hosting", "transform_jobs")


class Resource(Protocol):
    """What a resource module's install() returns: the running resources, ended by shutdown()."""

    def shutdown(self) -> None:
        """Stop what still runs and put moto's own responses back."""


class LocalSageMaker:
    """The installed resource modules of one endpoint."""

    def __init__(self, resources: dict[str, Resource]) -> None:
        self.resources = resources

    def shutdown(self) -> None:
        """Shut every resource down, the last installed first."""
        for resource in reversed(list(self.resources.values())):
            resource.shutdown()


def install(state_dir: Path) -> LocalSageMaker:
    """Install every resource module in RESOURCE_MODULES, each with its folder under state_dir."""
    installed = LocalSageMaker({})
    try:
        for name in RESOURCE_MODULES:
            installed.resources[name] = importlib.import_module(f"{__name__}.{name}").install(state_dir)
    except BaseException:
        installed.shutdown()  # what was installed before the failure must not keep its patches
        raise
    return installed
