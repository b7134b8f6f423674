"""The ledger rules on a real SQLite file and a real PostgreSQL database (``ledger_url``, see
tests/ledger_backends.py): pseudo never replaces human, history, WAL, rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, text

from medloop.ledger import HumanLabelExists, Label, Ledger, Sample, active_label, add_human_label, add_pseudo_label
from medloop.ledger.queries import pool_sizes


def _ledger(url: str) -> Ledger:
    return Ledger.open(url)


def _sample(s, uid: str, split: str = "pool") -> int:
    row = Sample(uid=uid, content_hash=uid * 4, image_path=f"images/{uid}.png", original_path=None,
                 source="test", split=split, height=16, width=16, channels=1)
    s.add(row)
    s.flush()
    return row.id


def test_wal_mode_on(tmp_path: Path) -> None:
    ledger = _ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    with ledger.reading() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    ledger.close()


def test_pseudo_never_replaces_human(ledger_url: str) -> None:
    ledger = _ledger(ledger_url)
    with ledger.transaction() as s:
        sid = _sample(s, "a")
        add_human_label(s, sid, class_name="benign", mask_path=None, author="ann")
    with pytest.raises(HumanLabelExists):
        with ledger.transaction() as s:
            add_pseudo_label(s, sid, class_name="malignant", mask_path=None, ignore_path=None,
                             round_id=1, selector="ups", thresholds={"tau_c": 0.9})
    with ledger.reading() as s:
        assert active_label(s, sid, "human").class_name == "benign"
        assert s.scalars(select(Label).where(Label.kind == "pseudo")).all() == []
    ledger.close()


def test_human_update_keeps_history_and_retires_pseudo(ledger_url: str) -> None:
    ledger = _ledger(ledger_url)
    with ledger.transaction() as s:
        sid = _sample(s, "b")
        add_pseudo_label(s, sid, class_name="normal", mask_path=None, ignore_path=None,
                         round_id=1, selector="ups", thresholds={})
        add_human_label(s, sid, class_name="benign", mask_path=None, author="ann1")
        add_human_label(s, sid, class_name="malignant", mask_path=None, author="ann2")
    with ledger.reading() as s:
        rows = s.scalars(select(Label).where(Label.sample_id == sid).order_by(Label.id)).all()
        assert [(r.kind, r.class_name, r.active) for r in rows] == [
            ("pseudo", "normal", False), ("human", "benign", False), ("human", "malignant", True)
        ]
        assert rows[1].superseded_at is not None
        assert pool_sizes(s)["pool"] == {"samples": 1, "human": 1, "pseudo": 0, "truth": 0, "unlabeled": 0}
    ledger.close()


def test_transaction_rolls_back_as_a_whole(ledger_url: str) -> None:
    ledger = _ledger(ledger_url)
    with pytest.raises(RuntimeError):
        with ledger.transaction() as s:
            sid = _sample(s, "c")
            add_human_label(s, sid, class_name="benign", mask_path=None, author="ann")
            raise RuntimeError("crash in the middle of a write")
    with ledger.reading() as s:
        assert s.scalars(select(Sample)).all() == []
        assert s.scalars(select(Label)).all() == []
    ledger.close()


def test_new_pseudo_supersedes_old_only_on_its_sample_and_retire_by_round(ledger_url: str) -> None:
    from medloop.ledger import retire_pseudo_labels

    ledger = _ledger(ledger_url)
    with ledger.transaction() as s:
        a, b = _sample(s, "d"), _sample(s, "e")
        for sid in (a, b):
            add_pseudo_label(s, sid, class_name="benign", mask_path=None, ignore_path=None,
                             round_id=1, selector="ups", thresholds={})
        add_pseudo_label(s, a, class_name="malignant", mask_path=None, ignore_path=None,
                         round_id=2, selector="ups", thresholds={})
        add_human_label(s, b, class_name="normal", mask_path=None, author="ann")
        assert retire_pseudo_labels(s, 2) == 0  # b's round-1 pseudo was already retired by its human label
    with ledger.reading() as s:
        rows = s.scalars(select(Label).order_by(Label.id)).all()
        assert [(r.sample_id, r.kind, r.round_id, r.active) for r in rows] == [
            (a, "pseudo", 1, False), (b, "pseudo", 1, False), (a, "pseudo", 2, True), (b, "human", None, True)
        ]
    with ledger.transaction() as s:
        assert retire_pseudo_labels(s, 3) == 1
        assert active_label(s, a, "pseudo") is None and active_label(s, b, "human").class_name == "normal"
    ledger.close()


def test_postgresql_url_without_driver_uses_psycopg(postgres_server) -> None:  # noqa: ANN001
    """``postgresql://`` (and ``postgres://``, as servers print it) opens with psycopg 3, the driver
    medloop depends on (SQLAlchemy's default for that URL is psycopg2, which is not installed)."""
    url = postgres_server.url(postgres_server.create_database())
    assert url.startswith("postgresql+psycopg://")
    for plain in (url.replace("postgresql+psycopg://", "postgresql://"), url.replace("postgresql+psycopg://",
                                                                                    "postgres://")):
        ledger = Ledger.open(plain)
        try:
            assert ledger.engine.dialect.driver == "psycopg"
            with ledger.transaction() as s:
                _sample(s, f"u{len(plain)}")
        finally:
            ledger.close()


def test_non_finite_floats_in_json_columns(ledger_url: str) -> None:
    """NaN / inf in a JSON column (a diverged model's probabilities, an undefined metric) is written as null on
    every backend; before, PostgreSQL refused the whole row (``invalid input syntax for type json``) while
    SQLite stored a non-JSON ``NaN`` token."""
    import numpy as np

    from medloop.ledger import Prediction, Round

    ledger = _ledger(ledger_url)
    with ledger.transaction() as s:
        sid = _sample(s, "nan")
        s.add(Prediction(round_id=1, sample_id=sid, model_version="m", probs=[float("nan"), 0.25, float("inf")],
                         pred_class=1, confidence=0.25))
        s.add(Round(id=1, status="done", metrics={"auc": float("nan"), "ece": 0.1, "bins": [{"c": -float("inf")}]}))
    with ledger.reading() as s:
        pred = s.scalars(select(Prediction)).one()
        assert pred.probs == [None, 0.25, None]
        assert np.isnan(np.asarray(pred.probs, dtype=float)[[0, 2]]).all()  # numeric readers get NaN back
        assert s.get(Round, 1).metrics == {"auc": None, "ece": 0.1, "bins": [{"c": None}]}
    ledger.close()


def test_bulk_pseudo_labels_skip_human_supersede_pseudo_and_bind_in_chunks(ledger_url: str) -> None:
    """``add_pseudo_labels`` is the same rule set-based: a sample with a human label is skipped and
    reported, an earlier pseudo-label becomes history; 25,000 samples (more ids than SQLite binds in
    one statement, 32,766, once both lists are counted) go through in chunks."""
    from sqlalchemy import func, insert

    from medloop.ledger import PseudoLabelRow, add_pseudo_labels, human_labelled
    from medloop.ledger.store import ID_CHUNK

    n = 25_000
    assert n > ID_CHUNK
    ledger = _ledger(ledger_url)
    with ledger.transaction() as s:
        s.execute(insert(Sample), [{"uid": f"b{i}", "content_hash": f"hash-b{i}", "image_path": f"images/b{i}.png",
                                    "source": "test", "split": "pool", "height": 8, "width": 8, "channels": 1}
                                   for i in range(n)])
        ids = s.scalars(select(Sample.id).order_by(Sample.id)).all()
        humans = ids[::1000]  # 25 samples with a human label
        for sid in humans:
            add_human_label(s, sid, class_name="benign", mask_path=None, author="ann")
        add_pseudo_label(s, ids[1], class_name="normal", mask_path=None, ignore_path=None, round_id=1,
                         selector="ups", thresholds={})
    rows = [PseudoLabelRow(sid, "malignant", None, None) for sid in ids]
    with ledger.transaction() as s:
        assert human_labelled(s, ids) == set(humans)
        written, skipped = add_pseudo_labels(s, rows, round_id=2, selector="ups", thresholds={"tau_c": 0.9})
    assert sorted(skipped) == sorted(humans) and len(written) == n - len(humans)
    with ledger.reading() as s:
        active = dict(s.execute(select(Label.kind, func.count()).where(Label.active.is_(True))
                                .group_by(Label.kind)).all())
        assert active == {"human": len(humans), "pseudo": n - len(humans)}
        assert active_label(s, humans[3], "human").class_name == "benign"
        assert active_label(s, humans[3], "pseudo") is None
        old = s.scalars(select(Label).where(Label.sample_id == ids[1]).order_by(Label.id)).all()
        assert [(r.class_name, r.round_id, r.active) for r in old] == [("normal", 1, False), ("malignant", 2, True)]
        assert old[0].superseded_at is not None and old[1].thresholds == {"tau_c": 0.9}
        assert old[1].author == "round-2/ups"
    ledger.close()
