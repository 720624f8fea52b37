"""The one moto this package patches, and how a resource module replaces moto's SageMaker responses.

moto 5.2.5 stores SageMaker requests and reports every resource finished at once; the resource modules
replace the response methods of the operations they really run (CreateTrainingJob, ...), and the hosting
module those of sagemaker-runtime (InvokeEndpoint, on SageMakerRuntimeResponse). Those methods
and the backend objects behind them are moto's internals, so any other moto version is refused here,
before anything is patched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import moto

MOTO_VERSION = "5.2.5"
if moto.__version__ != MOTO_VERSION:
    raise RuntimeError(
        f"tools/local_sagemaker patches the SageMaker backend of moto {MOTO_VERSION}, but moto {moto.__version__} "
        f"is installed: install moto[server]=={MOTO_VERSION} (environment.yml), or port the patches in "
        "tools/local_sagemaker/ to that version and change MOTO_VERSION in tools/local_sagemaker/moto_patch.py."
    )

# Only after the version check: these are the internals that the patches rely on.
from moto.core.utils import utcnow  # noqa: E402,F401 - the timestamps moto's responses serialise
from moto.core.responses import BaseResponse  # noqa: E402
from moto.sagemaker.responses import SageMakerResponse  # noqa: E402

Response = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class ResponsePatch:
    """Overrides installed on a moto response class, with moto's own methods (None where moto has none) kept."""

    originals: dict[str, Response | None]
    response_class: type[BaseResponse] = SageMakerResponse

    def original(self, name: str) -> Response:
        """moto's own response method `name`, for an override that extends rather than replaces it."""
        method = self.originals[name]
        if method is None:
            raise AttributeError(
                f"moto {MOTO_VERSION} has no {self.response_class.__name__}.{name}: there is nothing to extend"
            )
        return method

    def restore(self) -> None:
        """Put moto's own methods back, and remove the operations moto lacks (the endpoint is going away)."""
        for name, original in self.originals.items():
            if original is None:
                delattr(self.response_class, name)
            else:
                setattr(self.response_class, name, original)


def override_responses(
    overrides: Mapping[str, Response], response_class: type[BaseResponse] = SageMakerResponse
) -> ResponsePatch:
    """Install response methods on SageMakerResponse (or response_class) by name, e.g. "create_training_job".

    moto calls the method named after the operation, so a name moto lacks (it answers such operations
    as not implemented, e.g. "stop_training_job") adds the operation.
    """
    patch = ResponsePatch({name: vars(response_class).get(name) for name in overrides}, response_class)
    for name, method in overrides.items():
        setattr(response_class, name, method)
    return patch
