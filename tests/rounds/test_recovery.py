"""Recovery instead of dead ends: a truncated warm-start checkpoint, a failure that cannot be recorded,
a round killed mid-run, a read-only or full campaign folder.

Every fault is caused for real: the checkpoint file is cut short on disk; the ledger is made read-only
while a step runs (SQLite: ``chattr +i`` on its files; PostgreSQL: the database switched to read-only
transactions and the ledger's connections dropped, as a failover to a standby does); the round runs in
a real subprocess killed with SIGKILL; the campaign folder is a read-only bind mount or a tiny tmpfs
filled to the last byte. The mounts and ``chattr`` need root (``CAP_SYS_ADMIN`` / ``CAP_LINUX_IMMUTABLE``):
elsewhere those cases skip with the reason.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from support import TINY, checkpoint_train_round, ingest_synthetic, tiny_campaign, tiny_score_samples, write_config

from medloop.ledger import Ledger, RoundStep
from medloop.rounds.orchestrator import RoundStepFailed, run_round
from medloop.trainers.checkpoints import (
    MODEL_FILE,
    CheckpointError,
    build_model,
    load_state,
    model_spec,
    save_checkpoint,
)

HERE = Path(__file__).parent
PY = sys.executable
STAND_INS = {"train_round": checkpoint_train_round([0.6, 0.7, 0.8]), "score_samples": tiny_score_samples,
             "tracking": False}


def _cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The real command line, as a user runs it (``medloop.cli:main``)."""
    return subprocess.run([PY, "-m", "medloop.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "250", **(env or {})})


def _one_clear_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "│" not in stderr
    return lines[0]


def _truncate(path: Path) -> int:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    return size


def _steps(c) -> dict[tuple[int, str], RoundStep]:  # noqa: ANN001
    led = Ledger.open(c.ledger)
    try:
        with led.reading() as s:
            rows = s.scalars(select(RoundStep)).all()
            s.expunge_all()
    finally:
        led.close()
    return {(r.round_id, r.step): r for r in rows}


# ---- a truncated warm-start checkpoint ------------------------------------------------------------------


def test_truncated_checkpoint_file_is_named(tmp_path: Path) -> None:
    c = tiny_campaign(tmp_path / "camp")
    folder = save_checkpoint(tmp_path / "ckpt", build_model(model_spec(c, width=4, depth=2)), {"model": {}})
    full = _truncate(folder / MODEL_FILE)
    with pytest.raises(CheckpointError) as info:
        load_state(folder)
    msg = str(info.value)
    assert msg.startswith(f"{folder}/{MODEL_FILE}: unreadable checkpoint file ({full // 2} bytes;")
    assert "truncated or corrupt" in msg
    (folder / MODEL_FILE).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"model\.pt: unreadable checkpoint file \(0 bytes"):
        load_state(folder)


@pytest.fixture
def small(tmp_path: Path):  # noqa: ANN201
    """A tiny campaign whose model trains in-process in seconds (num_workers 0), ingested."""
    c = tiny_campaign(tmp_path / "camp", model={"name": "mtunet", "width": 4, "depth": 2},
                      compute={"num_workers": 0, "epochs": 1, "batch_size": 8, "patience": None})
    ingest_synthetic(c)
    return c


def test_truncated_warm_start_names_the_file_and_cold_start_trains_from_scratch(small, tmp_path: Path) -> None:
    """Round 1 leaves a real checkpoint; cut short, it stops round 2 with its name and the ways out (the
    real trainer is never reached: before, a torch zip error that named no file, at every retry).
    ``medloop round --cold-start`` then trains round 2 from the model's initialisation."""
    assert run_round(small, extras=STAND_INS).status == "done"
    model_pt = small.checkpoints / "round-1" / MODEL_FILE
    _truncate(model_pt)
    cfg = write_config(small, tmp_path / "campaign.toml")
    for _attempt in range(2):  # the same clear stop every time, not a different error on the retry
        r = _cli("round", "--force", "--config", str(cfg))
        assert r.returncode == 1
        line = _one_clear_line(r.stderr)
        assert f"{model_pt}: unreadable checkpoint file" in line and "truncated or corrupt" in line
        assert "medloop round --cold-start" in line and "medloop round --restore-checkpoint" in line
    assert _steps(small)[(2, "train")].state == "failed"
    # cold start: real training in-process; the run is killed right after the train step commits
    r = _cli("round", "--cold-start", "--config", str(cfg), env={"MEDLOOP_TEST_CRASH_AT": "train:after-commit"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    train = _steps(small)[(2, "train")]
    assert train.state == "done" and train.detail["cold_start"] is True and train.detail["warm_start"] is None
    state, _meta, _ = load_state(train.detail["checkpoint_path"])
    assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_restore_checkpoint_from_the_registered_model(campaign, tmp_path: Path) -> None:
    """``--restore-checkpoint`` puts round 1's checkpoint back from its registered MLflow model version
    (the damaged folder kept aside) and round 2 warm-starts from it."""
    extras = {**STAND_INS, "tracking": True}
    assert run_round(campaign, extras=extras).status == "done"
    folder = campaign.checkpoints / "round-1"
    original, _, _ = load_state(folder)
    _truncate(folder / MODEL_FILE)
    cfg = write_config(campaign, tmp_path / "campaign.toml")
    r = _cli("round", "--force", "--restore-checkpoint", "--config", str(cfg),
             env={"MEDLOOP_TEST_CRASH_AT": "sync:before"})  # restore, then stop once the round has begun
    assert f"restored round 1's checkpoint {folder} from MLflow model 'medloop-tiny' version 1" in r.stdout, \
        r.stdout + r.stderr[-3000:]
    restored, _, _ = load_state(folder)
    assert restored.keys() == original.keys() and all(torch.equal(restored[k], original[k]) for k in original)
    kept = [p for p in folder.parent.iterdir() if p.name.startswith("round-1.damaged-")]
    assert len(kept) == 1 and (kept[0] / MODEL_FILE).stat().st_size < (folder / MODEL_FILE).stat().st_size
    out = run_round(campaign, extras=extras, force=True)
    assert out.status == "done" and _steps(campaign)[(2, "train")].detail["warm_start"] == str(folder)


def test_restore_without_a_registered_model_says_so(campaign, tmp_path: Path) -> None:
    cfg = str(write_config(campaign, tmp_path / "c.toml"))
    assert run_round(campaign, extras=STAND_INS).status == "done"  # tracking off: no MLflow store at all
    r = _cli("round", "--restore-checkpoint", "--config", cfg)
    assert r.returncode == 1
    line = _one_clear_line(r.stderr)
    assert "no MLflow store at" in line and "--cold-start" in line
    assert not Path(campaign.tracking_uri.removeprefix("sqlite:///")).exists()  # and none was created
    assert run_round(campaign, extras={**STAND_INS, "tracking": True, "log_model": False},
                     force=True).status == "done"  # a store, no registered version
    r = _cli("round", "--restore-checkpoint", "--config", cfg)
    assert r.returncode == 1
    line = _one_clear_line(r.stderr)
    assert "has no version for round 2" in line and "--cold-start" in line


# ---- a failure while recording a failure; a round killed mid-run -------------------------------------------


def _make_ledger_read_only(c, request: pytest.FixtureRequest) -> None:  # noqa: ANN001
    """Really make the ledger refuse writes (undone at the end of the test)."""
    if c.ledger.startswith("sqlite"):
        db = Path(c.ledger.removeprefix("sqlite:///"))
        # the database and its write-ahead log (not the -shm index, which SQLite maps into memory: an
        # immutable mapping is a bus error, not a failed write)
        files = [p for p in (db, Path(f"{db}-wal")) if p.exists()]
        done = subprocess.run(["chattr", "+i", *map(str, files)], capture_output=True, text=True)
        request.addfinalizer(lambda: subprocess.run(["chattr", "-i", *map(str, files)], capture_output=True))
        if done.returncode != 0:
            pytest.skip(f"cannot make the ledger immutable (chattr +i needs root): {done.stderr.strip()}")
    else:
        server = request.getfixturevalue("postgres_server")
        db = c.ledger.split("/")[3].split("?")[0]
        server.psql(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
        server.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' "
                    "AND pid <> pg_backend_pid()")
        request.addfinalizer(lambda: server.psql(f'ALTER DATABASE "{db}" SET default_transaction_read_only = off'))


def test_failure_while_recording_a_failure_is_one_message(ledger_url: str, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    """The train step fails and, at that moment, the ledger refuses writes (the failure cannot be recorded):
    one RoundStepFailed naming both errors (before: the ledger's error with a traceback); the step stays
    ``running`` (shown as interrupted), and once the ledger is writable again the round resumes."""
    c = tiny_campaign(tmp_path / "camp", ledger_url=ledger_url)
    ingest_synthetic(c)

    def train_on_a_dying_disk(ctx):  # noqa: ANN001, ANN202
        _make_ledger_read_only(ctx.campaign, request)
        # the step's own write fails the same way (the checkpoint it was saving)
        raise OSError(errno.EROFS, "Read-only file system", str(ctx.campaign.checkpoints / "round-1"))

    with pytest.raises(RoundStepFailed) as info:
        run_round(c, steps={"train": train_on_a_dying_disk}, extras={**TINY, "tracking": False})
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("round 1: step 'train' failed: OSError: [Errno 30] Read-only file system")
    expected = ("OperationalError: disk I/O error" if c.ledger.startswith("sqlite")  # the immutable WAL
                else "ReadOnlySqlTransaction: cannot execute UPDATE in a read-only transaction")
    assert f"Recording the failure in the ledger failed too ({expected})" in msg
    assert "`medloop status` shows it interrupted" in msg
    _undo_read_only(c, request)  # (the finalizer undoes it too when an assertion above fails)
    assert _steps(c)[(1, "train")].state == "running"
    status = _cli("status", "--config", str(write_config(c, tmp_path / "c.toml")))
    assert status.returncode == 0, status.stderr[-2000:]
    assert "train:interrupted" in status.stdout and "interrupted: no process runs this round" in status.stdout
    out = run_round(c, extras={**TINY, "tracking": False})
    assert out.status == "done" and out.resumed


def _undo_read_only(c, request: pytest.FixtureRequest) -> None:  # noqa: ANN001
    if c.ledger.startswith("sqlite"):
        db = Path(c.ledger.removeprefix("sqlite:///"))
        subprocess.run(["chattr", "-i", *(str(p) for p in (db, Path(f"{db}-wal")) if p.exists())], capture_output=True)
    else:
        server = request.getfixturevalue("postgres_server")
        db = c.ledger.split("/")[3].split("?")[0]
        server.psql(f'ALTER DATABASE "{db}" SET default_transaction_read_only = off')


def test_status_shows_a_killed_round_as_interrupted(campaign, tmp_path: Path) -> None:
    """While a real `round` subprocess holds the campaign lock its round is `running`; after kill -9 it is
    `interrupted` (before: `running` forever), and the next round resumes it."""
    cfg = write_config(campaign, tmp_path / "campaign.toml")
    hold = tmp_path / "release"
    proc = subprocess.Popen([PY, str(HERE / "round_runner.py"), str(cfg), "--tiny", "--no-tracking", "--hold",
                             str(hold)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "holding").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the round never reached its sync step"
            time.sleep(0.2)
        live = _cli("status", "--config", str(cfg))
        assert live.returncode == 0, live.stderr[-2000:]
        assert "sync:running" in live.stdout and "interrupted" not in live.stdout
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    dead = _cli("status", "--config", str(cfg))
    assert dead.returncode == 0, dead.stderr[-2000:]
    assert "sync:interrupted" in dead.stdout and "sync:running" not in dead.stdout
    assert "interrupted: no process runs this round any more; `medloop round` resumes it" in dead.stdout
    row = [ln for ln in dead.stdout.splitlines() if "sync:interrupted" in ln][0]
    assert row.count("interrupted") == 2  # the round itself, not only its step
    out = run_round(campaign, extras={**TINY, "tracking": False})
    assert out.status == "done" and out.resumed


# ---- a read-only or full campaign folder --------------------------------------------------------------------


def _mount(args: list[str], request: pytest.FixtureRequest, target: Path) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount ({' '.join(args)}): {done.stderr.strip()} (needs root with CAP_SYS_ADMIN)")
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(target)], capture_output=True))


def test_read_only_campaign_folder_is_one_clear_line(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    c = tiny_campaign(tmp_path / "camp")
    ingest_synthetic(c)
    cfg = write_config(c, tmp_path / "campaign.toml")
    folder = c.folder.resolve()
    _mount(["--bind", str(folder), str(folder)], request, folder)
    _mount(["-o", "remount,bind,ro", str(folder)], request, folder)
    for args in (["round"], ["ingest", "synthetic"]):
        r = _cli(*args, "--config", str(cfg))
        assert r.returncode == 1, (args, r.stdout, r.stderr[-3000:])
        line = _one_clear_line(r.stderr)
        assert line.startswith(f"medloop: campaign 'tiny' ({folder}) cannot be written:"), line
        assert f"{folder} is on a file system mounted read-only" in line


def test_full_campaign_folder_is_one_clear_line(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], request, disk)
    c = tiny_campaign(disk / "camp")
    ingest_synthetic(c)
    cfg = write_config(c, tmp_path / "campaign.toml")
    with open(disk / "filler", "wb") as f:  # the rest of the disk, to the last byte
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    for unit in (4096, 512, 1):
        try:
            with open(disk / f"filler-{unit}", "wb") as f:
                while True:
                    f.write(b"\0" * unit)
                    f.flush()
        except OSError:
            pass
    assert shutil.disk_usage(disk).free < 4096
    r = _cli("round", "--config", str(cfg))
    assert r.returncode == 1, (r.stdout, r.stderr[-3000:])
    line = _one_clear_line(r.stderr)
    assert line.startswith(f"medloop: campaign 'tiny' ({c.folder.resolve()}) cannot be written:"), line
    assert f"the disk of {c.folder.resolve()} is full" in line
