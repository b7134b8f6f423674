"""The local Ray medloop starts: it listens on 127.0.0.1 only, it is shut down at exit, and what a
driver killed with SIGKILL leaves behind is reaped at the next start. Real Ray, real processes.

Every Ray here runs in a temp folder this test owns (a short one under /tmp: Ray's socket paths must
stay under 107 characters); only processes of that folder are ever stopped, by medloop's own reaper,
and the test checks that a process of a live owner and an unrelated process survive the reaping.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from medloop.trainers.ray_local import processes_of, reap_leftovers

# a driver: start the local Ray through medloop's helper, start an actor (workers, agents), report, then
# wait until stdin closes and exit normally (atexit shuts the local Ray down)
DRIVER = """
import json, os, sys
from pathlib import Path
import ray
from medloop.trainers.ray_local import start_local_ray

folder = start_local_ray(Path(sys.argv[1]), num_cpus=1)

@ray.remote(num_cpus=0)
class Probe:
    def pid(self):
        return os.getpid()

probe = Probe.remote()
print(json.dumps({"folder": str(folder), "pid": os.getpid(), "actor": ray.get(probe.pid.remote())}), flush=True)
sys.stdin.read()
"""


@pytest.fixture()
def base() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="mlrt", dir="/tmp"))
    try:
        yield folder
    finally:
        for proc in processes_of(folder):  # only processes of this test's own folder, should any be left
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


def start_driver(base: Path) -> tuple[subprocess.Popen[str], dict]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(base)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"the driver exited with {proc.wait()} before reporting")
    return proc, json.loads(line)


def listening(pids: list[int]) -> list[tuple[int, str, int]]:
    out = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        out += [(pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.timeout(300)
def test_local_ray_listens_on_loopback_only_and_stops_at_exit(base: Path) -> None:
    driver, info = start_driver(base)
    folder = Path(info["folder"])
    try:
        assert folder.parent == base and (folder / "owner.json").is_file()
        pids = [p.pid for p in processes_of(folder)] + [info["pid"]]
        assert info["actor"] in pids  # the actor's worker runs from the folder
        names = {psutil.Process(p).name() for p in pids if alive([p])}
        assert {"gcs_server", "raylet"} <= names, names
        sockets = listening(pids)
        assert len(sockets) >= 3, sockets  # gcs_server, raylet, the workers: something to check
        wide = [s for s in sockets if not is_loopback(s[1])]
        assert not wide, f"listening beyond 127.0.0.1: {wide}"
    finally:
        assert driver.stdin is not None
        driver.stdin.close()  # normal exit: atexit shuts the local Ray down
        rc = driver.wait(timeout=120)
    assert rc == 0
    time.sleep(2)
    assert alive(pids) == [], "processes of the local Ray outlived its driver's normal exit"
    assert not folder.exists()


@pytest.mark.timeout(420)
def test_sigkill_leftovers_are_reaped_at_the_next_start_and_nothing_else(base: Path) -> None:
    first, info = start_driver(base)
    old = Path(info["folder"])
    old_pids = [p.pid for p in processes_of(old)]
    assert info["actor"] in old_pids and len(old_pids) >= 4, old_pids
    bystander = subprocess.Popen(["sleep", "600"])  # not Ray, not in the folder: must survive
    second = None
    try:
        first.kill()  # SIGKILL: no atexit, no shutdown
        first.wait(timeout=30)
        time.sleep(5)
        # (Ray 2.60 leaves its DashboardAgent and RuntimeEnvAgent running here, re-parented, ~90 MB each)
        second, info2 = start_driver(base)  # the next start reaps what the dead owner left
        new = Path(info2["folder"])
        assert alive(old_pids) == [], f"left running after the next start: {alive(old_pids)}"
        assert not old.exists() and new.is_dir()
        # a live owner's Ray is not a leftover: reaping again stops nothing
        new_pids = [p.pid for p in processes_of(new)]
        assert reap_leftovers(base) == []
        assert alive(new_pids) == new_pids and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        if second is not None:
            assert second.stdin is not None
            second.stdin.close()
            second.wait(timeout=120)
