"""scripts/setup.sh's torch choice (``--print-torch``: decides, installs nothing): a GPU takes torch
from the default index (the CUDA build); no GPU takes the CPU wheel from PyTorch's CPU index when it
answers, else the default index. nvidia-smi is a fake on PATH; the CPU index is a real HTTP server on
127.0.0.1 (or a closed port), so the test never leaves the machine."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup.sh"


def fake_nvidia_smi(folder: Path, gpu: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "nvidia-smi"
    if gpu:
        tool.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)'\n")
    else:  # a driver-less machine with the tool installed: it fails, as the real one does
        tool.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver.'\n"
                        "exit 9\n")
    tool.chmod(0o755)
    return folder


def plan(bin_dir: Path, cpu_index: str) -> list[str]:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable,
           "MEDLOOP_TORCH_CPU_INDEX": cpu_index}
    env.pop("MEDLOOP_TORCH_INDEX", None)
    out = subprocess.run(["bash", str(SCRIPT), "--print-torch"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


@pytest.fixture()
def cpu_index(tmp_path: Path) -> Iterator[str]:
    """A wheel index on 127.0.0.1 with a torch page."""
    root = tmp_path / "index"
    (root / "torch").mkdir(parents=True)
    (root / "torch" / "index.html").write_text("<a href='torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl'>torch</a>")
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_gpu_takes_the_cpu_index_when_it_answers(tmp_path: Path, cpu_index: str) -> None:
    why, pip = plan(fake_nvidia_smi(tmp_path / "bin", gpu=False), cpu_index)
    assert why.startswith("no GPU: CPU wheel")
    assert pip == f"pip install torch==2.13.0 --index-url {cpu_index}"


def test_no_gpu_and_no_cpu_index_falls_back_to_the_default_index(tmp_path: Path) -> None:
    why, pip = plan(fake_nvidia_smi(tmp_path / "bin", gpu=False), f"http://127.0.0.1:{closed_port()}/whl/cpu")
    assert "does not answer" in why
    assert pip == "pip install torch==2.13.0"  # the default index, no --index-url


def test_gpu_takes_torch_with_medloop_from_the_default_index(tmp_path: Path, cpu_index: str) -> None:
    why, pip = plan(fake_nvidia_smi(tmp_path / "bin", gpu=True), cpu_index)
    assert why.startswith("GPU found") and "--index-url" not in pip and "torch==" not in pip
