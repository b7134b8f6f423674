"""A queue to push for the Label Studio tests and the push benchmark: a campaign below the server's document
root with samples, images, predictions (class + mask) and queued AnnotationTask intents, built with the ledger
API."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medloop.data.imagestore import ImageStore, content_hash
from medloop.ledger import AnnotationTask, Ledger, Prediction, Sample


@dataclass
class Queue:
    campaign: object
    ledger: Ledger
    store: ImageStore
    uids: list[str]
    sample_ids: dict[str, int]
    pred_masks: dict[str, np.ndarray] = field(default_factory=dict)
    pred_class: dict[str, str] = field(default_factory=dict)
    audit: set[str] = field(default_factory=set)

    def client(self):
        from medloop.labeling.client import connect

        return connect(self.campaign)


def lesion(h: int, w: int, i: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[5 + i % 7: 20 + i % 11, 8 + i % 5: 30 + i % 13] = 1
    return m


def soft_lesion(size: int, i: int) -> np.ndarray:
    """A smooth model-size lesion probability (float16, as scoring writes ``arrays/prob/...``)."""
    yy, xx = np.mgrid[:size, :size]
    cy = 0.45 + 0.01 * (i % 5)
    d = np.sqrt(((yy + 0.5) / size - cy) ** 2 / 0.18 ** 2 + ((xx + 0.5) / size - 0.5) ** 2 / 0.25 ** 2)
    return (1.0 / (1.0 + np.exp((d - 1.0) * 10.0))).astype(np.float16)


def build_queue(campaign, n: int, *, size: int = 64, round_id: int = 1, audit_every: int = 3,
                with_predictions: bool = True, seed: int = 0, native: tuple[int, int] | None = None,
                model_size: int | None = None) -> Queue:
    """``n`` pool samples with intents. ``native=(height, width)``: images of that size and, at
    ``model_size``, what scoring writes (lesion probability, predicted mask = probability >= 0.5,
    pixel-uncertainty map); otherwise ``size`` x ``size`` images with a block mask and no maps."""
    ledger = Ledger.open(campaign.ledger)
    store = ImageStore(campaign.store)
    rng = np.random.default_rng(seed)
    classes = campaign.data.classes
    q = Queue(campaign, ledger, store, [], {})
    with ledger.transaction() as s:
        for i in range(n):
            uid = f"{campaign.name}-s{i:05d}"
            h, w = native if native is not None else (size, size)
            img = rng.integers(0, 256, (h, w), dtype=np.uint8)
            rel = store.put_image(uid, img)
            smp = Sample(uid=uid, content_hash=content_hash(img), image_path=rel, source="synthetic", split="pool",
                         height=h, width=w, channels=1)
            s.add(smp)
            s.flush()
            q.uids.append(uid)
            q.sample_ids[uid] = smp.id
            if with_predictions:
                umap_rel = None
                if native is not None:
                    ms = model_size or size
                    prob = soft_lesion(ms, i)
                    m = (prob.astype(np.float32) >= 0.5).astype(np.uint8)
                    umap_rel = store.put_array(f"umap/round-{round_id}/{uid}",
                                               (0.25 * (1 - np.abs(2 * prob.astype(np.float32) - 1))))
                    store.put_array(f"prob/round-{round_id}/{uid}", prob)
                else:
                    m = lesion(size, size, i)
                mp = store.put_mask(f"pred/round-{round_id}/{uid}", m)
                pc = i % len(classes)
                s.add(Prediction(round_id=round_id, sample_id=smp.id, model_version=f"round-{round_id}",
                                 probs=[0.2, 0.5, 0.3], pred_class=pc, confidence=0.5, std=0.1, entropy=1.0,
                                 mutual_info=0.2, seg_uncertainty=0.3, mask_path=mp, umap_path=umap_rel,
                                 lesion_fraction=float((m > 0).mean())))  # as scoring records it
                q.pred_masks[uid] = m
                q.pred_class[uid] = classes[pc]
            audit = audit_every > 0 and i % audit_every == 0
            if audit:
                q.audit.add(uid)
            s.add(AnnotationTask(sample_id=smp.id, round_id=round_id, state="intent", is_audit=audit,
                                 score=1.0 - i / max(n, 1)))
    return q
