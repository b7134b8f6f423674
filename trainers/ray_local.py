"""The Ray a round uses: a cluster when one is named, else a local Ray on 127.0.0.1 only, owned by medloop.

* ``compute.ray_address`` (or ``RAY_ADDRESS``) names a cluster: medloop connects to it and never
  starts, stops or reaps anything there.
* Otherwise :func:`start_local_ray` starts a one-machine Ray whose processes all listen on 127.0.0.1
  (Ray's local-only mode, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the one macOS and Windows get by
  default: the node's address is the loopback one, and Ray's servers listen on all interfaces only
  for another address) in a temp folder of its own, ``<base>/<pid>-<random>/`` (base:
  ``MEDLOOP_RAY_TMPDIR``, default ``/tmp/medloop-ray-<uid>``; keep it short, Ray's socket paths must
  stay under 107 characters), with an ``owner.json`` naming the process that started it.
* :func:`shutdown_local_ray` stops it: at exit (``atexit``) and at the end of each command that ran
  rounds. A process killed with SIGKILL runs neither, and Ray's agents outlive it (they are
  re-parented, 80-100 MB each); the next :func:`start_local_ray` reaps the folders whose owner is
  gone: it stops the processes that run from such a folder (their command line names it or they hold
  a file open in it; Ray renames its processes, ``ray::DashboardAgent``, but they keep their log
  files open there), then deletes the folder. Only this user's processes are looked at, and only
  folders under the base: another user's Ray, a Ray started by hand or by another tool
  (``/tmp/ray``) is never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from medloop.config import Campaign

log = logging.getLogger("medloop.ray")

TMPDIR_ENV = "MEDLOOP_RAY_TMPDIR"
OWNER_FILE = "owner.json"
LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # node address = 127.0.0.1, servers bind it
#: a folder without a readable owner file this old is a leftover (younger: being set up right now)
ORPHAN_GRACE_S = 120.0

_started: Path | None = None  # the folder of the local Ray this process started (None: none / a cluster)


def ray_base() -> Path:
    """Where medloop's local Ray sessions live: ``MEDLOOP_RAY_TMPDIR``, else ``/tmp/medloop-ray-<uid>``."""
    env = os.environ.get(TMPDIR_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / f"medloop-ray-{os.getuid()}"


def cluster_address(campaign: Campaign | None) -> str | None:
    """The cluster to connect to: ``compute.ray_address``, else ``RAY_ADDRESS``, else None (local)."""
    return (campaign.compute.ray_address if campaign else None) or os.environ.get("RAY_ADDRESS") or None


def ensure_ray(campaign: Campaign | None = None) -> None:
    """Connect to the campaign's cluster, or start the local Ray (once per process)."""
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(campaign)
    if address:
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=True)
        return
    start_local_ray()


def cpus_per_worker(configured: int | None, cluster_cpus: float, workers: int) -> int:
    """CPUs (and torch threads) per Ray worker or actor: the configured number, else the cluster's
    CPUs shared evenly between the workers (at least 1)."""
    if configured is not None:
        return int(configured)
    return max(1, int(cluster_cpus) // max(1, workers))


def threads_per_actor(actors: int, configured: int | None = None) -> int:
    """Torch threads for each of ``actors`` CPU actors: ``configured`` when set (``compute.score_threads``),
    else the Ray cluster's CPUs shared evenly (at least 1).

    Ray starts an actor that reserves one CPU with ``OMP_NUM_THREADS=1``, so torch inside it computes on one
    core however many the machine has (on 2 cores, pool scoring ran at 0.6x). The scoring and predicting
    actors keep their one-CPU reservation, so that other Ray tasks can still be scheduled beside them, and
    set this many threads themselves."""
    if configured is not None:
        return int(configured)
    import ray

    return cpus_per_worker(None, ray.cluster_resources().get("CPU", 1), actors)


def start_local_ray(base: Path | None = None, *, num_cpus: int | None = None) -> Path:
    """Reap the leftovers of dead owners under ``base``, then start a local Ray on 127.0.0.1 in a new
    folder there; returns that folder. Ray's logs go to the driver as usual (``log_to_driver``)."""
    global _started
    if _started is not None:  # an earlier local Ray of this process, shut down by ray.shutdown() elsewhere
        shutdown_local_ray()
    base = base or ray_base()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    reap_leftovers(base)
    folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))
    me = psutil.Process()
    (folder / OWNER_FILE).write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))
    os.environ.update(LOCAL_ONLY_ENV)  # for this process and every Ray process it starts
    import ray
    from ray._private import ray_constants

    # read when ray was imported: set it too in case ray came in before the variable was set
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(_node_ip_address="127.0.0.1", _temp_dir=str(folder), include_dashboard=False,
                 num_cpus=num_cpus, log_to_driver=True)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _started = folder
    atexit.register(shutdown_local_ray)
    return folder


def shutdown_local_ray() -> None:
    """Stop the local Ray this process started, and anything of it still running; delete its folder.
    Does nothing when none was started (or when connected to a cluster)."""
    global _started
    folder, _started = _started, None
    if folder is None:
        return
    import ray

    with contextlib.suppress(Exception):  # already down, or shutting down at interpreter exit
        ray.shutdown()
    stop_processes(processes_of(folder))
    shutil.rmtree(folder, ignore_errors=True)


# ---- leftovers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    pid: int
    create_time: float

    def alive(self) -> bool:
        """The same process (pid and start time) still runs."""
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.create_time) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def read_owner(folder: Path) -> Owner | None:
    try:
        data = json.loads((folder / OWNER_FILE).read_text())
        return Owner(int(data["pid"]), float(data["create_time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_leftover(folder: Path) -> bool:
    """A session folder whose owner is gone (or that has no owner file and is not brand new)."""
    owner = read_owner(folder)
    if owner is not None:
        return not owner.alive()
    try:
        return time.time() - folder.stat().st_mtime > ORPHAN_GRACE_S
    except OSError:
        return False


def processes_of(folder: Path) -> list[psutil.Process]:
    """This user's processes that run from ``folder``: their command line names it, or they hold a
    file open below it (Ray's renamed processes keep their log files open there)."""
    root = str(folder.resolve())
    inside = (root, root + os.sep)
    uid, me = os.getuid(), os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            if proc.pid == me or proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])
            if root + os.sep in cmdline or cmdline.endswith(root) or any(
                f.path == inside[0] or f.path.startswith(inside[1]) for f in proc.open_files()
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def stop_processes(procs: list[psutil.Process], timeout: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL what is still running after ``timeout`` seconds; returns the pids stopped."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return [p.pid for p in procs]


def reap_leftovers(base: Path | None = None) -> list[int]:
    """Stop the processes of every leftover session folder under ``base`` and delete the folders;
    returns the pids stopped. Folders of live owners (another medloop running now) are left alone."""
    base = base or ray_base()
    if not base.is_dir():
        return []
    stopped: list[int] = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        if not is_leftover(folder):
            continue
        pids = stop_processes(processes_of(folder))
        if pids:
            log.warning("stopped %d process(es) left by a local Ray whose medloop process died: %s", len(pids),
                        folder)
        stopped += pids
        shutil.rmtree(folder, ignore_errors=True)
    return stopped
