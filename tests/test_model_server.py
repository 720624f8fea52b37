"""Tests of tools/local_sagemaker/model_server.py: SageMaker's PyTorch serving contract on 127.0.0.1.

Each model folder is laid out as SageMaker unpacks a model.tar.gz: the model files at the root, the
handlers in code/. The workbook's own model and code/inference.py answer as the handlers do in-process;
scripts that are not the workbook's (all four handlers of another network, only model_fn, no code at
all) answer through their own handlers or the toolkits' defaults; errors carry the handler's status.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import torch
from PIL import Image
from torch import nn

import inference
import mnist_model
from local_sagemaker import model_server
from mnist_data import load_split
from support import wait_for

REPO = Path(__file__).resolve().parents[1]


def unpacked_model(tmp_path: Path, files: dict[str, bytes | Path]) -> Path:
    """Pack `files` (archive name -> bytes or a file) as model.tar.gz, then unpack it as SageMaker does."""
    archive_path = tmp_path / "model.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        for name, content in files.items():
            if isinstance(content, Path):
                archive.add(content, arcname=name)
            else:
                member = tarfile.TarInfo(name)
                member.size = len(content)
                archive.addfile(member, io.BytesIO(content))
    model_dir = tmp_path / "opt-ml-model"
    with tarfile.open(archive_path) as archive:
        archive.extractall(model_dir, filter="data")
    return model_dir


def session() -> requests.Session:
    """An HTTP session that never goes through a proxy: the server is on this machine."""
    client = requests.Session()
    client.trust_env = False
    return client


def invoke(server: model_server.ModelServer, body: bytes | str, content_type: str | None,
           accept: str | None = None) -> requests.Response:
    headers = {name: value for name, value in (("Content-Type", content_type), ("Accept", accept)) if value}
    return session().post(f"{server.url}/invocations", data=body, headers=headers, timeout=60)


def family_of(server: model_server.ModelServer) -> list[psutil.Process]:
    """The server's process and its workers."""
    parent = psutil.Process(server.process.pid)
    return [parent, *parent.children(recursive=True)]


def stop_and_check_nothing_is_left(server: model_server.ModelServer) -> int:
    """Stop the server; fail if any of its processes still runs; return its exit status."""
    family = family_of(server)
    returncode = server.stop()
    assert [process.pid for process in family if process.is_running()] == []
    return returncode


# --- The workbook's model and code/inference.py --------------------------------------------------


@pytest.fixture(scope="module")
def workbook_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained MNISTClassifier (seeded) saved by mnist_model, with code/ repacked beside it, as the SDK does."""
    work = tmp_path_factory.mktemp("workbook-model")
    torch.manual_seed(0)
    mnist_model.save_model(mnist_model.MNISTClassifier(), work)
    files: dict[str, bytes | Path] = {mnist_model.MODEL_FILE: work / mnist_model.MODEL_FILE}
    for path in sorted((REPO / "code").iterdir()):
        if path.is_file() and path.suffix in (".py", ".txt"):
            files[f"code/{path.name}"] = path
    return unpacked_model(work, files)


@pytest.fixture(scope="module")
def workbook_server(
    workbook_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[model_server.ModelServer]:
    log = tmp_path_factory.mktemp("logs") / "workbook-server.log"
    server = model_server.serve(workbook_model_dir, environment={"SAGEMAKER_PROGRAM": "inference.py"}, log_path=log)
    yield server
    stop_and_check_nothing_is_left(server)


@pytest.fixture(scope="module")
def digits(mirror_dir: Path) -> np.ndarray:
    return load_split(mirror_dir, "test")[0][:20].numpy()


def picture(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(255 - image).resize((84, 84)).save(buffer, fmt)
    return buffer.getvalue()


def test_ping_answers_once_the_model_is_loaded(workbook_server) -> None:
    response = session().get(f"{workbook_server.url}/ping", timeout=10)
    assert (response.status_code, response.json()) == (200, {"status": "Healthy"})


def test_the_workbook_model_answers_as_its_handlers_do_in_process(workbook_server, workbook_model_dir, digits) -> None:
    model = inference.model_fn(str(workbook_model_dir))
    npy = io.BytesIO()
    np.save(npy, digits)
    requests_by_format = {
        "JSON": (json.dumps(digits.tolist()), "application/json"),
        "JSON with a charset": (json.dumps((digits / 255).tolist()), "application/json; charset=utf-8"),
        ".npy": (npy.getvalue(), "application/x-npy"),
        "PNG": (picture(digits[0], "PNG"), "image/png"),
        "JPEG": (picture(digits[1], "JPEG"), "image/jpeg"),
    }
    for name, (body, content_type) in requests_by_format.items():
        response = invoke(workbook_server, body, content_type, accept="application/json")
        assert response.status_code == 200, f"{name}: {response.text}"
        assert response.headers["Content-Type"] == "application/json"
        expected = json.loads(inference.output_fn(inference.predict_fn(inference.input_fn(body, content_type), model),
                                                  "application/json"))["predictions"]
        served = response.json()["predictions"]
        assert [p["digit"] for p in served] == [p["digit"] for p in expected], name
        np.testing.assert_allclose([p["probabilities"] for p in served], [p["probabilities"] for p in expected],
                                   atol=2e-6, err_msg=name)


def test_no_accept_or_any_accept_gets_the_default_json(workbook_server, digits) -> None:
    body = json.dumps(digits[:1].tolist())
    for accept in (None, "*/*"):
        response = invoke(workbook_server, body, "application/json", accept=accept)
        assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
        assert len(response.json()["predictions"]) == 1


def test_a_handlers_client_error_comes_back_with_its_status_and_message(workbook_server, digits) -> None:
    good = json.dumps(digits[:1].tolist())
    expected = invoke(workbook_server, good, "application/json").json()
    refusals = [
        (b"[]", "application/json", None, 400, "the batch is empty"),
        (b"GIF89a", "image/gif", None, 415, "content type 'image/gif' is not supported"),
        (good, "application/json", "text/csv", 406, "accept type 'text/csv' is not supported"),
        (b"\x89PNG\r\n\x1a\n broken", "image/png", None, 400, "not a readable PNG"),
    ]
    for body, content_type, accept, status, message in refusals:
        response = invoke(workbook_server, body, content_type, accept)
        assert (response.status_code, message in response.text) == (status, True), response.text
        assert invoke(workbook_server, good, "application/json").json() == expected, f"not serving after {status}"


# --- A script that is not the workbook's: another network, all four handlers -----------------------

TINY_REGRESSOR = '''
"""A two-layer regressor served with all four handlers: CSV in, JSON or CSV out."""
import json
import os

import torch
from torch import nn


class ClientError(Exception):
    """What the toolkit's BaseInferenceToolkitError carries: an HTTP status and a message."""

    def __init__(self, status_code, message):
        super().__init__(message)
        self.status_code, self.message = status_code, message


def network():
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def model_fn(model_dir):
    model = network()
    model.load_state_dict(torch.load(os.path.join(model_dir, "weights.pth"), weights_only=True))
    return model.eval()


def input_fn(body, content_type):
    if content_type != "text/csv":
        raise ClientError(415, f"this regressor reads text/csv, not {content_type}")
    if not isinstance(body, str):
        raise TypeError("the toolkit hands a CSV body to input_fn as text")
    return torch.tensor([[float(value) for value in line.split(",")] for line in body.strip().splitlines()])


def predict_fn(data, model):
    with torch.no_grad():
        return model(data)


def output_fn(prediction, accept):
    if accept == "application/json":
        answer = {"outputs": prediction.tolist(), "scale": os.environ["OUTPUT_SCALE"]}
        return json.dumps(answer), "application/vnd.tiny+json"
    if accept == "text/csv":
        return "\\n".join(",".join(f"{value:.6f}" for value in row) for row in prediction.tolist())
    raise ClientError(406, f"this regressor answers application/json or text/csv, not {accept}")
'''


def tiny_network() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).eval()


@pytest.fixture(scope="module")
def regressor_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[model_server.ModelServer]:
    work = tmp_path_factory.mktemp("tiny-regressor")
    weights = io.BytesIO()
    torch.save(tiny_network().state_dict(), weights)
    files = {"weights.pth": weights.getvalue(), "code/tiny_regressor.py": TINY_REGRESSOR.encode()}
    model_dir = unpacked_model(work, files)
    environment = {"SAGEMAKER_PROGRAM": "tiny_regressor.py", "OUTPUT_SCALE": "metres"}
    server = model_server.serve(model_dir, environment=environment, log_path=work / "server.log")
    yield server
    stop_and_check_nothing_is_left(server)


ROWS = [[0.5, -1.0, 2.0], [3.0, 0.25, -0.75]]


def test_another_networks_handlers_answer_with_their_own_content_type(regressor_server) -> None:
    with torch.no_grad():
        expected = tiny_network()(torch.tensor(ROWS)).tolist()
    csv = "\n".join(",".join(str(value) for value in row) for row in ROWS)

    as_json = invoke(regressor_server, csv, "text/csv", accept="application/json")
    assert as_json.status_code == 200, as_json.text
    assert as_json.headers["Content-Type"] == "application/vnd.tiny+json"  # the type output_fn returned
    assert as_json.json()["scale"] == "metres"  # the model's environment reaches the handlers
    np.testing.assert_allclose(as_json.json()["outputs"], expected, atol=1e-6)

    as_csv = invoke(regressor_server, csv, "text/csv", accept="text/csv")
    assert as_csv.headers["Content-Type"].startswith("text/csv")  # output_fn returned a body only: the Accept
    np.testing.assert_allclose(np.loadtxt(io.StringIO(as_csv.text), delimiter=",", ndmin=2), expected, atol=1e-6)


def test_another_scripts_errors_keep_their_status_and_a_crash_is_a_500_with_its_line(regressor_server) -> None:
    answers = [
        invoke(regressor_server, "1,2,3", "application/json"),
        invoke(regressor_server, "1,2,3", "text/csv", accept="image/png"),
        invoke(regressor_server, "1,2,x", "text/csv"),
    ]
    assert [(answer.status_code, answer.text) for answer in answers] == [
        (415, "this regressor reads text/csv, not application/json"),
        (406, "this regressor answers application/json or text/csv, not image/png"),
        (500, "ValueError: could not convert string to float: 'x'"),
    ]
    assert invoke(regressor_server, "1,2,3", "text/csv").status_code == 200
    assert "invocation:" not in regressor_server.log_path.read_text()  # debug lines only at log level 10


# --- Only model_fn, and no code at all: the toolkits' defaults ------------------------------------

ONLY_MODEL_FN = '''
import os

import torch


def model_fn(model_dir):
    model = torch.nn.Linear(3, 2)
    model.load_state_dict(torch.load(os.path.join(model_dir, "linear.pth"), weights_only=True))
    return model
'''


def linear() -> nn.Module:
    torch.manual_seed(2)
    return nn.Linear(3, 2).eval()


def defaults_cases(server: model_server.ModelServer) -> None:
    """The default input_fn (JSON, CSV, .npy), predict_fn and output_fn (JSON, CSV, .npy) give the model's outputs."""
    with torch.no_grad():
        expected = linear()(torch.tensor(ROWS)).numpy()
    npy = io.BytesIO()
    np.save(npy, np.array(ROWS, dtype=np.float32))
    for body, content_type in ((json.dumps(ROWS), "application/json"), ("0.5,-1,2\n3,0.25,-0.75", "text/csv"),
                               (npy.getvalue(), "application/x-npy")):
        response = invoke(server, body, content_type, accept="application/json")
        assert (response.status_code, response.headers["Content-Type"]) == (200, "application/json"), response.text
        np.testing.assert_allclose(response.json(), expected, atol=1e-6, err_msg=content_type)
    as_csv = invoke(server, json.dumps(ROWS), "application/json", accept="text/csv")
    assert as_csv.headers["Content-Type"].startswith("text/csv")
    np.testing.assert_allclose(np.loadtxt(io.StringIO(as_csv.text), delimiter=","), expected, atol=1e-6)
    as_npy = invoke(server, json.dumps(ROWS), "application/json", accept="application/x-npy, application/json")
    assert as_npy.headers["Content-Type"] == "application/x-npy"  # the first type of the Accept it can write
    np.testing.assert_allclose(np.load(io.BytesIO(as_npy.content)), expected, atol=1e-6)
    unsupported = invoke(server, "1 2 3", "text/plain")
    assert unsupported.status_code == 500  # as in the toolkit: its UnsupportedFormatError carries no status
    assert unsupported.text.startswith("UnsupportedFormatError: Content type text/plain is not supported")


def test_a_script_with_only_model_fn_is_served_by_the_default_handlers(tmp_path: Path) -> None:
    weights = io.BytesIO()
    torch.save(linear().state_dict(), weights)
    files = {"linear.pth": weights.getvalue(), "code/inference.py": ONLY_MODEL_FN.encode()}
    model_dir = unpacked_model(tmp_path, files)
    server = model_server.serve(model_dir, log_path=tmp_path / "server.log")
    try:
        defaults_cases(server)
    finally:
        stop_and_check_nothing_is_left(server)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # PyTorch 2.14 points to torch.export instead
def test_a_torchscript_model_without_code_is_served_entirely_by_the_defaults(tmp_path: Path) -> None:
    scripted = io.BytesIO()
    torch.jit.save(torch.jit.script(linear()), scripted)
    model_dir = unpacked_model(tmp_path, {"model.pt": scripted.getvalue()})
    environment = {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv", "SAGEMAKER_CONTAINER_LOG_LEVEL": "10"}
    server = model_server.serve(model_dir, environment=environment, log_path=tmp_path / "server.log")
    try:
        defaults_cases(server)
        no_accept = invoke(server, json.dumps(ROWS), "application/json")
        assert no_accept.headers["Content-Type"].startswith("text/csv")  # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
    finally:
        stop_and_check_nothing_is_left(server)
    log = (tmp_path / "server.log").read_text()
    assert "holds no inference.py: serving with the default handlers only" in log
    assert "DEBUG [" in log and "invocation: 38 bytes of application/json, accept text/csv" in log  # level 10


# --- Workers, loopback only, stopping --------------------------------------------------------------

BARRIER = '''
"""Each worker marks that it loaded the model; an invocation waits until two workers are busy at once."""
import os
import time
from pathlib import Path

MARKERS = Path(os.environ["MARKERS"])


def model_fn(model_dir):
    (MARKERS / f"loaded-{os.getpid()}").touch()
    return "model"


def input_fn(body, content_type):
    return body


def predict_fn(data, model):
    (MARKERS / f"busy-{os.getpid()}").touch()
    deadline = time.monotonic() + float(os.environ["BARRIER_TIMEOUT_S"])
    while len(list(MARKERS.glob("busy-*"))) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("only one worker was busy: the other never took the second request")
        time.sleep(0.02)
    return os.getpid()


def output_fn(prediction, accept):
    return str(prediction)
'''


def pids_marked(markers: Path, what: str) -> set[int]:
    """The process ids of the markers `what-<pid>` the BARRIER script left."""
    return {int(path.name.removeprefix(f"{what}-")) for path in markers.glob(f"{what}-*")}


def barrier_server(tmp_path: Path, workers: int, timeout_s: float) -> tuple[model_server.ModelServer, Path]:
    markers = tmp_path / "markers"
    markers.mkdir()
    model_dir = unpacked_model(tmp_path, {"code/inference.py": BARRIER.encode()})
    environment = {"MARKERS": str(markers), "BARRIER_TIMEOUT_S": str(timeout_s)}
    server = model_server.serve(model_dir, workers=workers, environment=environment, log_path=tmp_path / "server.log")
    return server, markers


def test_two_workers_each_load_the_model_and_answer_concurrent_requests(tmp_path: Path) -> None:
    server, markers = barrier_server(tmp_path, workers=2, timeout_s=120)
    try:
        wait_for(lambda: len(pids_marked(markers, "loaded")) == 2, "both workers to load the model")
        loaded_pids = pids_marked(markers, "loaded")
        assert len(loaded_pids) == 2 and server.process.pid not in loaded_pids  # two workers, not the parent
        assert loaded_pids <= {process.pid for process in family_of(server)}
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(invoke, server, b"1", "application/octet-stream")
            # The first request holds its worker until a second worker is busy too: the second request
            # can only be answered by the other process.
            wait_for(lambda: pids_marked(markers, "busy"), "the first request to reach a worker")
            second = pool.submit(invoke, server, b"2", "application/octet-stream")
            answers = [first.result(), second.result()]
        assert [answer.status_code for answer in answers] == [200, 200], [answer.text for answer in answers]
        assert {int(answer.text) for answer in answers} == loaded_pids
        listening = {
            (connection.laddr.ip, connection.laddr.port)
            for process in family_of(server)
            for connection in process.net_connections(kind="inet")
            if connection.status == psutil.CONN_LISTEN
        }
        assert listening == {("127.0.0.1", int(server.url.rsplit(":", 1)[1]))}
    finally:
        assert stop_and_check_nothing_is_left(server) == 0


def test_a_server_stuck_in_a_handler_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    server, markers = barrier_server(tmp_path, workers=1, timeout_s=3600)  # one worker: the barrier never opens
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        stuck = pool.submit(invoke, server, b"1", "application/octet-stream")
        wait_for(lambda: pids_marked(markers, "busy"), "the request to reach the worker")
        family = family_of(server)
        assert server.stop(grace_s=1) == -9  # SIGTERM could not end it: SIGKILL did
        assert [process.pid for process in family if process.is_running()] == []
        with pytest.raises(requests.ConnectionError):
            stuck.result()


# --- Refusing to start -----------------------------------------------------------------------------

FAILING_MODEL_FN = '''
def model_fn(model_dir):
    raise ValueError("weights.pth is missing from the model")
'''


@pytest.mark.parametrize(
    "files, environment, reason",
    [
        ({"code/inference.py": FAILING_MODEL_FN.encode()}, {},
         "cannot serve: ValueError: weights.pth is missing from the model"),
        ({"code/inference.py": ONLY_MODEL_FN.encode(), "code/requirements.txt": b"torch\nno-such-package==1.0\n"}, {},
         "asks for what this environment lacks: no-such-package==1.0 (not installed)"),
        ({"code/inference.py": ONLY_MODEL_FN.encode(), "code/requirements.txt": b"numpy<1\n"}, {},
         f"numpy<1 (installed: {np.__version__})"),
        ({"code/inference.py": ONLY_MODEL_FN.encode()}, {"SAGEMAKER_PROGRAM": "serve.py"},
         "SAGEMAKER_PROGRAM is 'serve.py', but"),
    ],
    ids=["model_fn fails", "a requirement is missing", "a requirement is not met", "SAGEMAKER_PROGRAM names no file"],
)
def test_a_server_that_cannot_serve_says_why_and_leaves_nothing_running(tmp_path: Path, files, environment,
                                                                          reason: str) -> None:
    model_dir = unpacked_model(tmp_path, files)
    before = {process.pid for process in psutil.Process().children(recursive=True)}
    with pytest.raises(RuntimeError, match="before answering /ping") as error:
        model_server.serve(model_dir, environment=environment, log_path=tmp_path / "server.log")
    assert reason in str(error.value)
    assert {process.pid for process in psutil.Process().children(recursive=True)} <= before


def test_bad_settings_are_refused_before_anything_starts(tmp_path: Path) -> None:
    for environment, message in (
        ({"SAGEMAKER_MODEL_SERVER_WORKERS": "two"}, "SAGEMAKER_MODEL_SERVER_WORKERS is 'two'"),
        ({"SAGEMAKER_SUBMIT_DIRECTORY": "s3://bucket/sourcedir.tar.gz"}, "unpack the code there"),
    ):
        with pytest.raises(ValueError, match=message):
            model_server.serve(tmp_path, environment=environment)


# --- Workers slower to start than uvicorn's 5 s health check ----------------------------------------

SLOW_INTERPRETER_START = '''
"""Imported by every Python started with this folder on its path: each one starts STARTUP_DELAY_S late,
as a worker importing torch does on a loaded machine, before uvicorn's health check can be answered."""
import os
import time

time.sleep(float(os.environ.get("STARTUP_DELAY_S", "0")))
'''


def test_workers_slower_to_start_than_uvicorns_health_check_are_not_restarted(tmp_path: Path) -> None:
    # uvicorn kills a worker that does not answer its health check within 5 s, and starts another, which
    # is as slow: the model server must give its workers SageMaker's start-up time instead.
    markers = tmp_path / "markers"
    markers.mkdir()
    files = {"code/inference.py": BARRIER.encode(), "code/sitecustomize.py": SLOW_INTERPRETER_START.encode()}
    model_dir = unpacked_model(tmp_path, files)
    environment = {"MARKERS": str(markers), "BARRIER_TIMEOUT_S": "60", "STARTUP_DELAY_S": "6"}
    log = tmp_path / "server.log"
    server = model_server.serve(model_dir, workers=2, environment=environment, log_path=log, startup_timeout_s=120)
    try:
        wait_for(lambda: len(pids_marked(markers, "loaded")) == 2, "both workers to load the model")
        assert "died" not in log.read_text()
        assert len(pids_marked(markers, "loaded")) == 2  # each worker loaded the model once: none was replaced
    finally:
        assert stop_and_check_nothing_is_left(server) == 0


# --- Connections and threads of the workers ---------------------------------------------------------

CONNECTION_PROBE = '''
"""Answers, from inside the worker, how its connection to the client and its torch are set up."""
import os
import socket

import torch


def model_fn(model_dir):
    return None


def input_fn(body, content_type):
    return int(body)  # the client's port


def predict_fn(client_port, model):
    for name in os.listdir("/proc/self/fd"):
        try:
            probe = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # not a socket
            continue
        with probe:
            try:
                if probe.family == socket.AF_INET and probe.type == socket.SOCK_STREAM and probe.getpeername()[1] == client_port:
                    nodelay = probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    return {"nodelay": bool(nodelay), "threads": torch.get_num_threads()}
            except OSError:  # a listening or unconnected socket
                continue
    raise RuntimeError(f"no connection from port {client_port} in this worker")


def output_fn(prediction, accept):
    import json
    return json.dumps(prediction)
'''


def probe_server(tmp_path: Path, workers: int, environment: dict[str, str] | None = None) -> model_server.ModelServer:
    tmp_path.mkdir(parents=True, exist_ok=True)
    model_dir = unpacked_model(tmp_path, {"code/inference.py": CONNECTION_PROBE.encode()})
    return model_server.serve(model_dir, workers=workers, environment=environment, log_path=tmp_path / "server.log")


def probe(server: model_server.ModelServer, requests_on_one_connection: int = 3) -> list[dict[str, object]]:
    """Several requests on one kept-alive connection, each asking the worker about that connection."""
    import http.client

    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.connect()
    answers = []
    for _ in range(requests_on_one_connection):
        connection.request("POST", "/invocations", body=str(connection.sock.getsockname()[1]),
                           headers={"Content-Type": "text/plain"})
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body
        answers.append(json.loads(body))
    connection.close()
    return answers


@pytest.mark.parametrize("workers", [1, 2])
def test_every_connection_sends_its_answers_without_waiting_for_nagles_algorithm(tmp_path: Path, workers: int) -> None:
    # uvicorn's several-worker mode left Nagle's algorithm on: each answer on a kept-alive connection then
    # waited for the client's delayed ACK, about 40 ms, whatever the handler took.
    server = probe_server(tmp_path, workers)
    try:
        assert [answer["nodelay"] for answer in probe(server)] == [True, True, True]
    finally:
        stop_and_check_nothing_is_left(server)


def test_workers_share_the_cpus_unless_the_model_sets_its_threads(tmp_path: Path) -> None:
    cpus = len(psutil.Process().cpu_affinity())
    server = probe_server(tmp_path / "shared", workers=2)
    try:
        assert {answer["threads"] for answer in probe(server)} == {max(1, cpus // 2)}
    finally:
        stop_and_check_nothing_is_left(server)
    # One worker alone would get every CPU; the model's own OMP_NUM_THREADS wins (torch caps it at the CPUs).
    server = probe_server(tmp_path / "own", workers=1, environment={"OMP_NUM_THREADS": "1"})
    try:
        assert {answer["threads"] for answer in probe(server)} == {1}
    finally:
        stop_and_check_nothing_is_left(server)
