"""A model server with the contract of SageMaker's PyTorch inference container, on 127.0.0.1.

SageMaker unpacks a model's `model.tar.gz` into /opt/ml/model and starts the container, whose inference
toolkit (sagemaker-inference-toolkit, with the PyTorch toolkit's defaults) serves it with TorchServe.
This server keeps that contract for a model folder laid out the same way:

    model.pt ...               the model files, at the root
    code/inference.py          the handlers (SAGEMAKER_PROGRAM names another module)
    code/requirements.txt      optional: packages the container would pip-install at start

- `GET /ping` answers 200 once the model is loaded; `POST /invocations` runs the request through the
  module's `model_fn` (once per worker, at start), then `input_fn(body, content_type)`,
  `predict_fn(data, model)` and `output_fn(prediction, accept)`, or its `transform_fn(model, body,
  content_type, accept)`. A missing handler is the toolkits' default (`default_model_fn` and the rest,
  below). Content-Type and Accept reach the handlers as sent, a JSON or CSV body as text; an Accept of
  `*/*` or none becomes SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT (default application/json). The response's
  Content-Type is the one `output_fn` returns with the body as a `(body, content_type)` tuple, else the
  Accept, as in the toolkit.
- An exception that carries an HTTP status (`status_code`, as the toolkit's BaseInferenceToolkitError
  and code/inference.InvalidInput do) is answered with that status and its message; any other with 500
  and the exception's line. The traceback goes to the log; the worker goes on serving.
- SAGEMAKER_MODEL_SERVER_WORKERS worker processes (default 1 here; TorchServe's is one per vCPU), each
  loading the model and answering one invocation at a time, as TorchServe's workers do. Unless the
  model's environment sets OMP_NUM_THREADS, each worker's torch gets the machine's CPUs divided by the
  workers (torch's own default, one thread per CPU in every worker, oversubscribes a small machine).
- SAGEMAKER_CONTAINER_LOG_LEVEL (Python's numeric levels: 10 DEBUG, 20 INFO) sets the log level; log
  lines go to stdout and stderr, for the hosting module to forward to CloudWatch Logs (`serve`'s
  `on_line`). A line per request (uvicorn's access log) is written at DEBUG only.
- SAGEMAKER_SUBMIT_DIRECTORY is /opt/ml/model/code (what SageMaker SDKs set after repacking the code into
  the model) or unset; an S3 URI must be unpacked into the model's code/ by whoever starts the server.

Where it differs: nothing is installed. This machine is offline and the server runs in the workbook's
environment, so each line of code/requirements.txt must already be satisfied there, or the server
refuses to start and names it. The default input_fn loads .npy bodies without pickle (the toolkit allows
it). Handlers that take TorchServe's extra `context` argument are not supported.

`serve(model_dir)` starts it as a subprocess (`python -m local_sagemaker.model_server --model-dir DIR
--port PORT`, with the code folder and tools/ on PYTHONPATH) and returns once /ping answers 200.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import psutil
import torch
import uvicorn
from packaging.requirements import InvalidRequirement, Requirement
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

MODULE = "local_sagemaker.model_server"  # how the command and its workers import this module
HOST = "127.0.0.1"  # this machine only: nothing outside it may reach a model
JSON, CSV, NPY, ANY = "application/json", "text/csv", "application/x-npy", "*/*"
TEXT_TYPES = (JSON, CSV)  # bodies the toolkit hands to input_fn as text, decoded as UTF-8
DEFAULT_PROGRAM = "inference.py"
CONTAINER_CODE_DIR = "/opt/ml/model/code"
DEFAULT_MODEL_FILE = "model.pt"
# Where the command tells its workers the model is: uvicorn starts each worker as a fresh process.
MODEL_DIR_VARIABLE = "LOCAL_SAGEMAKER_MODEL_DIR"
TOOLS_DIR = Path(__file__).resolve().parents[1]  # holds the local_sagemaker package the workers import
STARTUP_TIMEOUT_S = 600.0  # SageMaker's longest wait for a container's first successful /ping
STOP_GRACE_S = 30.0
POLL_S = 0.05
# Starts the log line that says why the server cannot serve; serve() quotes that line when it fails.
CANNOT_SERVE = "the model server cannot serve:"
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"

logger = logging.getLogger("local_sagemaker.model_server")


# --- The toolkits' default handlers ----------------------------------------------------------------


class UnsupportedFormatError(Exception):
    """A content type the default handlers cannot decode or encode (the toolkit answers it with a 500)."""

    def __init__(self, content_type: str | None) -> None:
        super().__init__(
            f"Content type {content_type} is not supported by the default handlers: write an input_fn to decode "
            "the request or an output_fn to encode the response"
        )


def device() -> torch.device:
    """The device the PyTorch toolkit's defaults use: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_model_fn(model_dir: str) -> torch.nn.Module:
    """The PyTorch toolkit's default: a TorchScript model.pt, or the folder's only .pt or .pth file."""
    folder = Path(model_dir)
    path = folder / DEFAULT_MODEL_FILE
    if not path.is_file():
        candidates = sorted(item.name for item in folder.iterdir() if item.suffix in (".pt", ".pth") and item.is_file())
        if len(candidates) != 1:
            raise ValueError(f"Exactly one .pth or .pt file is required for PyTorch models in {folder}: {candidates}")
        path = folder / candidates[0]
    try:
        return torch.jit.load(path, map_location=device())
    except RuntimeError as error:
        raise RuntimeError(
            f"Failed to load {path}: the default model_fn loads TorchScript only; save the model with "
            "torch.jit.save, or write a model_fn"
        ) from error


def default_input_fn(body: str | bytes, content_type: str | None) -> torch.Tensor:
    """The toolkit's default decoding: JSON, CSV or .npy into a tensor on the defaults' device."""
    if content_type == JSON:
        array = np.array(json.loads(body))
    elif content_type == CSV:
        array = np.genfromtxt(io.StringIO(body), delimiter=",")
    elif content_type == NPY:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    else:
        raise UnsupportedFormatError(content_type)
    # As the toolkit: text formats become float32, an .npy array keeps its dtype.
    tensor = torch.tensor(array, dtype=torch.float32) if content_type in TEXT_TYPES else torch.from_numpy(array)
    return tensor.to(device())


def default_predict_fn(data: torch.Tensor, model: torch.nn.Module) -> Any:
    """The PyTorch toolkit's default: the model in eval mode, called on the data without gradients."""
    with torch.no_grad():
        model = model.to(device()).eval()
        return model(data.to(device()))


def default_output_fn(prediction: Any, accept: str) -> tuple[bytes, str]:
    """The toolkit's default encoding: the first type of the Accept header among JSON, CSV and .npy."""
    if isinstance(prediction, torch.Tensor):
        prediction = prediction.detach().cpu().numpy().tolist()
    for content_type in accept.replace(" ", "").split(","):
        if content_type == JSON:
            return json.dumps(prediction, default=_as_list).encode(), JSON
        if content_type == CSV:
            stream = io.StringIO()
            np.savetxt(stream, prediction, delimiter=",", fmt="%s")
            return stream.getvalue().encode(), CSV
        if content_type == NPY:
            stream = io.BytesIO()
            np.save(stream, prediction)
            return stream.getvalue(), NPY
    raise UnsupportedFormatError(accept)


def _as_list(value: Any) -> list:
    """A numpy array or scalar inside a prediction, for json.dumps (as the toolkit's encoder does)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"the prediction holds a {type(value).__name__}, which JSON cannot encode: write an output_fn")


# --- The user's module -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Handlers:
    """The functions that serve a model: the module's own, the defaults where it has none."""

    model_fn: Callable[[str], Any]
    transform_fn: Callable[[Any, Any, str | None, str], Any]
    source: str  # which module they come from, for the log


def load_handlers(code_dir: Path, program: str | None) -> Handlers:
    """Import the module SAGEMAKER_PROGRAM names (default inference.py) from code_dir; fill in the defaults.

    code_dir must already be on sys.path (the command puts it first on PYTHONPATH, as the toolkit does).
    """
    module_name = (program or DEFAULT_PROGRAM).removesuffix(".py")
    if not (code_dir / f"{module_name}.py").is_file():
        if program:
            raise FileNotFoundError(f"SAGEMAKER_PROGRAM is {program!r}, but {code_dir} holds no {module_name}.py")
        logger.warning("%s holds no %s: serving with the default handlers only", code_dir, DEFAULT_PROGRAM)
        return Handlers(default_model_fn, _default_transform(default_input_fn, default_predict_fn, default_output_fn),
                        "the default handlers")
    module = importlib.import_module(module_name)
    transform_fn = getattr(module, "transform_fn", None)
    steps = [getattr(module, name, None) for name in ("input_fn", "predict_fn", "output_fn")]
    if transform_fn and any(steps):
        raise ValueError(f"{module.__file__} defines transform_fn and input_fn, predict_fn or output_fn: keep one way")
    if transform_fn is None:
        defaults = (default_input_fn, default_predict_fn, default_output_fn)
        transform_fn = _default_transform(*(own or default for own, default in zip(steps, defaults)))
    return Handlers(getattr(module, "model_fn", default_model_fn), transform_fn, str(module.__file__))


def _default_transform(input_fn: Callable, predict_fn: Callable, output_fn: Callable) -> Callable:
    """The toolkit's default transform_fn: decode, predict, encode."""

    def transform_fn(model: Any, body: Any, content_type: str | None, accept: str) -> Any:
        return output_fn(predict_fn(input_fn(body, content_type), model), accept)

    return transform_fn


def unsatisfied_requirements(requirements_file: Path) -> list[str]:
    """The lines of a requirements.txt that this environment does not satisfy, each with what it has."""
    problems = []
    for line in requirements_file.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            problems.append(f"{line!r} (not a requirement this server can check: {error})")
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():  # for this Python and platform
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{line} (not installed)")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{line} (installed: {installed})")
    return problems


# --- The HTTP server -------------------------------------------------------------------------------


def create_app(model_dir: Path, environment: Mapping[str, str]) -> Starlette:
    """The /ping and /invocations routes of one worker; the model loads before the worker takes requests."""
    code_dir = code_dir_of(model_dir, environment.get("SAGEMAKER_SUBMIT_DIRECTORY"))
    default_accept = environment.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or JSON
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started = time.perf_counter()
        try:
            handlers = load_handlers(code_dir, environment.get("SAGEMAKER_PROGRAM"))
            state["model"] = handlers.model_fn(str(model_dir))
        except Exception as error:  # uvicorn logs the traceback, ends the worker, and so stops the server
            logger.error("%s %s: %s", CANNOT_SERVE, type(error).__name__, error)
            raise
        state["handlers"] = handlers
        logger.info("worker %d loaded the model in %.1f s with %s", os.getpid(), time.perf_counter() - started,
                    handlers.source)
        yield

    async def ping(request: Request) -> Response:
        return JSONResponse({"status": "Healthy"})

    async def invocations(request: Request) -> Response:
        # Handlers run here, not in a thread: each worker answers one invocation at a time, as
        # TorchServe's do, and a busy worker leaves new connections to the others.
        content_type = request.headers.get("content-type")
        accept = request.headers.get("accept")
        if not accept or accept == ANY:
            accept = default_accept
        body: bytes | str = await request.body()
        logger.debug("invocation: %d bytes of %s, accept %s", len(body), content_type, accept)
        try:
            if content_type in TEXT_TYPES:
                body = body.decode("utf-8")
            result = state["handlers"].transform_fn(state["model"], body, content_type, accept)
            payload, response_type = result if isinstance(result, tuple) else (result, accept)
            if isinstance(payload, str):
                payload = payload.encode("utf-8")
            if not isinstance(payload, (bytes, bytearray)):
                raise TypeError(f"output_fn returned {type(payload).__name__}: return bytes or str, or (body, type)")
        except Exception as error:  # the toolkit answers every handler error; the worker keeps serving
            return error_response(error)
        return Response(bytes(payload), media_type=response_type)

    routes = [Route("/ping", ping, methods=["GET"]), Route("/invocations", invocations, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


def error_response(error: Exception) -> Response:
    """A handler's exception as the toolkit answers it: its own 4xx/5xx status and message, else 500."""
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and 400 <= status <= 599:
        message = getattr(error, "message", None) or str(error)
        log = logger.warning if status < 500 else logger.error
        log("invocation answered %d: %s", status, message)
        return PlainTextResponse(message, status_code=status)
    logger.error("invocation failed", exc_info=error)
    return PlainTextResponse(f"{type(error).__name__}: {error}", status_code=500)


def code_dir_of(model_dir: Path, submit_directory: str | None) -> Path:
    """The folder holding the handlers' module: the model's code/, where SAGEMAKER_SUBMIT_DIRECTORY points."""
    if submit_directory in (None, "", CONTAINER_CODE_DIR):
        return model_dir / "code"
    raise ValueError(
        f"SAGEMAKER_SUBMIT_DIRECTORY is {submit_directory!r}: the local model server serves the code in the model's "
        f"code/ folder ({CONTAINER_CODE_DIR} in the container); unpack the code there and set it to that path"
    )


def log_level(environment: Mapping[str, str]) -> int:
    """SAGEMAKER_CONTAINER_LOG_LEVEL as a logging level (SageMaker SDKs set Python's numeric levels)."""
    value = environment.get("SAGEMAKER_CONTAINER_LOG_LEVEL") or str(logging.INFO)
    if not value.isdigit():
        raise ValueError(f"SAGEMAKER_CONTAINER_LOG_LEVEL is {value!r}: use a number, such as 20 (INFO) or 10 (DEBUG)")
    return int(value)


def worker_count(environment: Mapping[str, str]) -> int:
    """SAGEMAKER_MODEL_SERVER_WORKERS as a number of worker processes; 1 when unset."""
    value = environment.get("SAGEMAKER_MODEL_SERVER_WORKERS") or "1"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"SAGEMAKER_MODEL_SERVER_WORKERS is {value!r}: use a whole number of processes, 1 or more")
    return int(value)


def threads_per_worker(workers: int) -> int:
    """The CPUs this process may use, shared out between the workers: at least one torch thread each."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def listening_socket(port: int) -> socket.socket:
    """The server's socket on HOST:port, with Nagle's algorithm off for every connection it accepts.

    uvicorn's several-worker mode leaves it on: an answer's body then waits for the client to
    acknowledge its headers, and clients delay that by 40 ms. Linux gives accepted connections the
    listening socket's TCP_NODELAY.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((HOST, port))
    listener.set_inheritable(True)  # uvicorn hands it to its worker processes
    return listener


def app_from_environment() -> Starlette:
    """The app of one worker, configured by the variables the command exported (uvicorn calls it per worker)."""
    logging.basicConfig(level=log_level(os.environ), stream=sys.stderr, format=LOG_FORMAT)
    return create_app(Path(os.environ[MODEL_DIR_VARIABLE]), os.environ)


def main(argv: Sequence[str] | None = None) -> None:
    """The command: check code/requirements.txt, then serve the model folder until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="the unpacked model.tar.gz")
    parser.add_argument("--port", type=int, required=True, help=f"the port to listen on, on {HOST}")
    arguments = parser.parse_args(argv)
    model_dir = arguments.model_dir.resolve()
    requirements = code_dir_of(model_dir, os.environ.get("SAGEMAKER_SUBMIT_DIRECTORY")) / "requirements.txt"
    if requirements.is_file() and (problems := unsatisfied_requirements(requirements)):
        sys.exit(
            f"{CANNOT_SERVE} {requirements} asks for what this environment lacks: {'; '.join(problems)}. The "
            "local model server installs nothing (it runs offline, in this environment): install them here, or "
            "change the file"
        )
    os.environ[MODEL_DIR_VARIABLE] = str(model_dir)
    workers = worker_count(os.environ)
    # Each worker's torch would otherwise start one thread per CPU: N workers on a small machine then
    # fight over its cores, and one digit took 56 ms instead of 3 ms on this project's 2-core machine.
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_worker(workers)))
    listener = listening_socket(arguments.port)
    logging.basicConfig(level=log_level(os.environ), stream=sys.stderr, format=LOG_FORMAT)
    logger.info("serving %s on http://%s:%d with %d worker(s) of %s torch thread(s)", model_dir, HOST, arguments.port,
                workers, os.environ["OMP_NUM_THREADS"])
    uvicorn.run(
        f"{MODULE}:app_from_environment", factory=True, fd=listener.fileno(),
        workers=workers, log_level=log_level(os.environ), lifespan="on",
        access_log=log_level(os.environ) <= logging.DEBUG,
        # uvicorn replaces a worker that does not answer its health check within 5 s, but a spawned worker
        # imports this module (torch) before it can answer: on a loaded machine every replacement was as
        # late, and the server never started. Workers get SageMaker's start-up time instead.
        timeout_worker_healthcheck=int(STARTUP_TIMEOUT_S),
    )


# --- Starting and stopping it ----------------------------------------------------------------------


@dataclass
class ModelServer:
    """A running model server: its URL, its process (the parent of its workers), its log file and log pump."""

    url: str
    process: subprocess.Popen
    log_path: Path | None
    pump: threading.Thread | None = None  # forwards the output line by line when serve() was given on_line

    def stop(self, grace_s: float = STOP_GRACE_S) -> int:
        """SIGTERM, as SageMaker stops a container, then SIGKILL to what is left after grace_s; the exit status."""
        workers: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            workers = psutil.Process(self.process.pid).children(recursive=True)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # uvicorn's parent stops its workers and waits for them
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)  # its own process group, workers included
        _, left = psutil.wait_procs(workers, timeout=grace_s)
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(left, timeout=grace_s)
        returncode = self.process.wait()
        self.drain()
        return returncode

    def drain(self) -> None:
        """Wait until the log pump has forwarded the last line of an ended server."""
        if self.pump is not None:
            self.pump.join()

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def serve(
    model_dir: Path,
    port: int | None = None,
    workers: int | None = None,
    environment: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
    on_line: Callable[[str], None] | None = None,
    on_start: Callable[[ModelServer], None] | None = None,
) -> ModelServer:
    """Start the model server for an unpacked model folder; return once /ping answers 200.

    `environment` is the model's (CreateModel's Environment: SAGEMAKER_PROGRAM and the rest); `workers`,
    when given, sets SAGEMAKER_MODEL_SERVER_WORKERS. The server's output goes to log_path, or to this
    process's stdout and stderr; with `on_line`, each line is also handed to it as it is printed (the
    hosting module sends them to CloudWatch Logs). `on_start` gets the server as soon as its process runs,
    before it answers /ping, so that a caller going away can stop a server that is still starting. Raises
    RuntimeError, naming the log's last line, if it ends before.
    """
    model_dir = Path(model_dir).resolve()
    variables = dict(environment or {})
    if workers is not None:
        variables["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(workers)
    worker_count(variables), log_level(variables)  # bad values are refused here, not in the subprocess
    code_dir = code_dir_of(model_dir, variables.get("SAGEMAKER_SUBMIT_DIRECTORY"))
    # As the toolkit: the code folder first on PYTHONPATH. Then this package, and nothing of the
    # workbook's: the model's code must carry every module it imports, as in the container.
    child_environment = {**os.environ, **variables, "PYTHONPATH": os.pathsep.join([str(code_dir), str(TOOLS_DIR)])}
    port = port or free_port()
    # -P: the working folder is not put on sys.path, so only code/ provides the handlers' modules.
    command = [sys.executable, "-P", "-m", MODULE, "--model-dir", str(model_dir), "--port", str(port)]
    output = open(log_path, "ab") if log_path else None
    process = subprocess.Popen(
        command, cwd=model_dir, env=child_environment, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if on_line else output, stderr=subprocess.STDOUT if output or on_line else None,
        start_new_session=True,  # its own process group
    )
    pump = None
    if on_line is not None:
        pump = threading.Thread(target=_pump, args=(process.stdout, output, on_line), daemon=True,
                                name=f"model-server log {port}")
        pump.start()
    elif output is not None:
        output.close()  # the subprocess holds its own copy
    server = ModelServer(f"http://{HOST}:{port}", process, Path(log_path) if log_path else None, pump)
    try:
        if on_start is not None:
            on_start(server)
        _wait_until_pinged(server, startup_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_pinged(server: ModelServer, timeout_s: float) -> None:
    """Poll GET /ping until it answers 200; fail if the server exits first or the time runs out."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP proxy
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (returncode := server.process.poll()) is not None:
            server.drain()  # the log's last lines say why
            raise RuntimeError(f"the model server exited with status {returncode} before answering /ping"
                               f"{_why(server.log_path)}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            with direct.open(f"{server.url}/ping", timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(POLL_S)
    raise RuntimeError(f"the model server did not answer /ping within {timeout_s:g} s{_why(server.log_path)}")


def _pump(pipe: IO[bytes], copy: IO[bytes] | None, on_line: Callable[[str], None]) -> None:
    """Copy the server's output to its log file and hand each line to on_line, until the server ends."""
    with pipe, copy if copy is not None else contextlib.nullcontext():
        for raw in iter(pipe.readline, b""):
            if copy is not None:
                copy.write(raw)
                copy.flush()
            try:
                on_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
            except Exception:  # a lost log line must not stop the pump: the server would block on a full pipe
                logger.exception("the model server's log line could not be forwarded: %r", raw)


def _why(log_path: Path | None) -> str:
    """The log line saying why the server cannot serve (else its last line), for an error message."""
    if log_path is None:
        return " (its log is in this process's output)"
    lines = [line.strip() for line in Path(log_path).read_text(errors="replace").splitlines() if line.strip()]
    reasons = [line for line in lines if CANNOT_SERVE in line] or lines[-1:]
    return f": {reasons[-1]} (log: {log_path})" if reasons else f" (its log {log_path} is empty)"


if __name__ == "__main__":
    main()
