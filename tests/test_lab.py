"""`make lab`: JupyterLab on 127.0.0.1 whose kernels reach the local AWS endpoint and the loopback mirror,
driven as a reader's browser drives it (the Jupyter server's REST API and kernel websocket), then stopped."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import nbformat
import psutil
import pytest
import websocket

from support import aws_clients, free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_01 = "notebooks/01_download_and_explore.ipynb"
START_TIMEOUT_S = 240
CELL_TIMEOUT_S = 240


class Lab:
    """A running `make lab`: its URL and token, and the state folder of its endpoint."""

    def __init__(self, port: int, token: str, state_dir: Path, process: subprocess.Popen) -> None:
        self.url, self.token, self.state_dir, self.process = f"http://127.0.0.1:{port}", token, state_dir, process

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """Call the Jupyter server's REST API with the token; return the JSON answer."""
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)


def answers(lab: Lab) -> bool:
    """True once the server answers its status API; fails at once if `make lab` exited."""
    assert lab.process.poll() is None, f"make lab exited with {lab.process.returncode}: {(lab.state_dir / 'lab.log').read_text()[-3000:]}"
    try:
        lab.api("GET", "/api/status")
        return True
    except OSError:
        return False


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """`make lab MNIST=loopback` on a free port, with Jupyter's own folders under tmp_path; stopped after."""
    port, token, state_dir = free_port(), secrets.token_hex(16), tmp_path / "lab"
    state_dir.mkdir()
    env = {
        **os.environ, "JUPYTER_TOKEN": token, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
    }
    for name in ("AWS_ENDPOINT_URL", "MNIST_MIRRORS", "MNIST_SHA256SUMS"):
        env.pop(name, None)  # whatever the kernels get must come from make lab
    # -o: the test uses the installed environment as it is; `make lab` would otherwise reinstall it after
    # any change to environment.yml.
    command = ["make", "-o", ".venv/.tutorial-installed", "-o", ".venv/.test-installed", "lab", "MNIST=loopback",
               f"LAB_ARGS=--port {port} --state-dir {state_dir}"]
    with open(state_dir / "lab.log", "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    running = Lab(port, token, state_dir, process)
    try:
        wait_for(lambda: answers(running), f"JupyterLab to answer at {running.url}", timeout_s=START_TIMEOUT_S)
        yield running
    finally:
        make = psutil.Process(process.pid)
        started = [make, *make.children(recursive=True)] if process.poll() is None else []
        os.killpg(process.pid, signal.SIGTERM)  # as a terminal's Ctrl-C reaches the whole group
        process.wait(timeout=60)
        survivors = [child for child in started if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
        for survivor in survivors:
            survivor.kill()
        assert survivors == [], f"still running after make lab stopped: {survivors}"


def run_cell(lab: Lab, kernel_id: str, code: str) -> str:
    """Execute code in the kernel through the server's websocket, as JupyterLab does; return what it printed."""
    channel = websocket.create_connection(
        f"ws://127.0.0.1:{lab.url.rsplit(':', 1)[1]}/api/kernels/{kernel_id}/channels",
        header=[f"Authorization: token {lab.token}"], timeout=CELL_TIMEOUT_S,
    )
    message_id = uuid.uuid4().hex
    channel.send(json.dumps({
        "header": {"msg_id": message_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                   "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False,
                    "stop_on_error": True},
    }))
    printed = []
    try:
        while True:
            message = json.loads(channel.recv())
            if message.get("parent_header", {}).get("msg_id") != message_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                printed.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                printed.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                raise AssertionError(f"the cell failed: {content['ename']}: {content['evalue']}\n{code}")
            elif kind == "execute_reply":
                assert content["status"] == "ok", content
                return "".join(printed)
    finally:
        channel.close()


def notebook_cell(containing: str) -> str:
    """The source of notebook 01's one code cell that contains `containing`."""
    (source,) = [cell.source for cell in nbformat.read(REPO / NOTEBOOK_01, as_version=4).cells
                 if cell.cell_type == "code" and containing in cell.source]
    return source


def test_make_lab_serves_jupyterlab_whose_kernels_reach_the_local_endpoint_and_the_mirror(lab: Lab, tmp_path: Path) -> None:
    # Only 127.0.0.1 listens on JupyterLab's port.
    port = int(lab.url.rsplit(":", 1)[1])
    listening = [connection.laddr.ip for connection in psutil.net_connections("inet")
                 if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port]
    assert listening == ["127.0.0.1"]
    assert "JupyterLab" in urllib.request.urlopen(f"{lab.url}/lab?token={lab.token}", timeout=30).read().decode()

    # Open notebook 01 as a reader does, then step through its cells: imports, settings, download, upload.
    session = lab.api("POST", "/api/sessions", {"path": NOTEBOOK_01, "type": "notebook", "kernel": {"name": "python3"}})
    kernel_id = session["kernel"]["id"]
    run_cell(lab, kernel_id, notebook_cell("import aws_errors"))
    data_dir = tmp_path / "data"
    run_cell(lab, kernel_id, f"DATA_DIR = {str(data_dir)!r}\nS3_PREFIX = 'from-lab'\nPROGRESS = False")
    mirrors = run_cell(lab, kernel_id, notebook_cell("sources_from_env"))
    run_cell(lab, kernel_id, notebook_cell("download_mnist(data_dir, mirrors"))
    uploaded = run_cell(lab, kernel_id, notebook_cell("upload_mnist"))

    # The kernel's environment came from make lab: its endpoint and its mirror.
    env = json.loads((lab.state_dir / "local-aws" / "env.json").read_text())
    assert mirrors.startswith("['http://127.0.0.1:")
    assert f"AWS: the local AWS endpoint at {env['AWS_ENDPOINT_URL']}" in uploaded
    (s3,) = aws_clients(env["AWS_ENDPOINT_URL"], "s3")
    (bucket,) = [entry["Name"] for entry in s3.list_buckets()["Buckets"]]
    keys = sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix="from-lab/")["Contents"])
    assert keys == ["from-lab/test/t10k-images-idx3-ubyte.gz", "from-lab/test/t10k-labels-idx1-ubyte.gz",
                    "from-lab/train/train-images-idx3-ubyte.gz", "from-lab/train/train-labels-idx1-ubyte.gz"]
    for key in keys:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == (data_dir / Path(key).name).read_bytes()
    mirror_files = {path.name: path.read_bytes() for path in (lab.state_dir / "mirror").glob("*.gz")}
    assert {path.name: path.read_bytes() for path in data_dir.glob("*.gz")} == mirror_files  # from make lab's mirror
