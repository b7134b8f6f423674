"""Campaign configuration: one TOML file validated with pydantic.

Every field has a default, so a campaign needs no file at all (``medloop demo``).
Unknown keys and wrong types are errors that name the key and the expected type.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

CLASSES_DEFAULT = ["normal", "benign", "malignant"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_bool(cls, value: Any, info: ValidationInfo) -> Any:
        """A boolean key takes only true or false: pydantic's lax mode would read "yes", "off", 1 or
        "0" as booleans, so a quoted or misspelt value would switch a feature silently."""
        name = info.field_name
        if name is not None and cls.model_fields[name].annotation is bool and not isinstance(value, bool):
            raise PydanticCustomError("bool_type", "Input should be true or false (a TOML boolean, unquoted)")
        return value


class DataConfig(_Section):
    """Where images come from and how they are split."""

    source: Literal["synthetic", "busi", "generic"] = Field(
        "synthetic", description="dataset format: synthetic phantoms, BUSI layout or images/+masks/+labels.csv"
    )
    path: str | None = Field(None, description="dataset root for busi / generic (ignored for synthetic)")
    classes: list[str] = Field(default_factory=lambda: list(CLASSES_DEFAULT), description="class names, in label order")
    image_size: int = Field(64, ge=16, le=1024, description="side of the square image the model sees (pixels)")
    channels: int = Field(1, ge=1, le=3, description="1 (grey) or 3 (RGB) input channels")
    n_samples: int = Field(240, ge=6, description="synthetic: number of phantoms to generate")
    class_mix: list[float] = Field(default_factory=lambda: [0.2, 0.5, 0.3], description="synthetic: class proportions")
    difficulty: float = Field(0.3, ge=0.0, le=1.0, description="synthetic: 0 = classes well apart, 1 = heavy overlap")
    split: list[float] = Field(default_factory=lambda: [0.7, 0.15, 0.15], description="train / val / test fractions")
    unlabeled_fraction: float = Field(
        0.8, ge=0.0, lt=1.0, description="fraction of the train split moved to the unlabeled pool (labels kept hidden)"
    )
    seed: int = Field(0, description="seed for generation and splits")
    no_lesion_class: str | None = Field(
        "normal",
        description="class whose cases have no lesion (BUSI 'normal'): predicted, it gives an empty mask, and "
        "pseudo-masks must agree with it (unset or absent from classes: no such class)",
    )
    duplicate_threshold: float = Field(
        0.99,
        ge=0.0,
        le=1.0,
        description="near-duplicate images (correlation of 32x32 thumbnails >= this) stay in one split; "
        "1.0 = only exact copies",
    )
    intensity_window: list[float] | None = Field(
        None,
        description="[lo, hi]: images deeper than 8 bits (16-bit, signed, float) map lo..hi to 0..255, "
        "pixels outside counted in a warning (unset: min-max per image)",
    )
    min_image_size: int = Field(
        32, ge=1, description="ingest warns about an image whose short side is below this (pixels), naming the file"
    )
    # ---- volumes (NIfTI / DICOM series; detected from the files, docs/volumes.md) ----
    sequences: list[str] | None = Field(
        None, description="volumes: one file per sequence, images/<case>_<sequence>.nii.gz, stacked in this order "
        "(e.g. [\"t1\", \"t1ce\", \"t2\", \"flair\"]); unset: one file (3D, or 4D with the sequences last) per case",
    )
    spacing: list[float] | None = Field(
        None, description="volumes: resample every case to this voxel size in mm [x, y, z] (canonical RAS axes) "
        "at ingest (unset: each keeps its own)",
    )
    intensity: Literal["auto", "ct", "mri", "none"] = Field(
        "auto", description="volumes: ct = window data.ct_window to [0, 1]; mri = z-score within the body per "
        "sequence; auto = ct when the volume holds Hounsfield units (a voxel below -500), else mri; none = as stored",
    )
    ct_window: list[float] = Field(
        default_factory=lambda: [-600.0, 1500.0],
        description="volumes, CT: [level, width] in HU (default the lung window; soft tissue is [40, 400])",
    )
    volume_size: list[int] = Field(
        default_factory=lambda: [32, 64, 64],
        description="volumes: [slices, rows, columns] the 3D model sees (each divisible by 2**model depth); "
        "stored volumes keep their own size",
    )
    patch_size: list[int] | None = Field(
        None,
        description="volumes: [slices, rows, columns] of the patches the 3D model trains on, cut at random from "
        "the data.volume_size grid (half of them centred on a lesion voxel); validation, scoring and evaluation "
        "cover the whole grid with a sliding window (MONAI, overlapping patches); unset: the model sees the grid",
    )
    regions: list[str] | None = Field(
        None, description="names of the mask's region labels 1..R (images: grey PNG label masks; volumes), e.g. "
        "[\"oedema\", \"core\", \"enhancing\"]: the model segments each region (R + 1 classes with the background) "
        "and reports Dice / HD95 per region; unset: every label > 0 is one lesion",
    )
    region_groups: dict[str, list[int]] | None = Field(
        None, description="with data.regions: composite regions reported beside each region, name -> "
        "labels (BraTS: {whole_tumour = [1, 2, 3], tumour_core = [2, 3], enhancing_tumour = [3]})",
    )
    group_pattern: str | None = Field(
        None, description="regular expression on a case's file name whose first group is its patient: cases of "
        "one patient stay in one split (LIDC: '^(.+)_R_\\d+'); unset: no grouping by name",
    )

    @property
    def seg_classes(self) -> int:
        """Segmentation classes of the model: background + one per region (2 without ``regions``)."""
        return 2 if self.regions is None else len(self.regions) + 1

    def region_sets(self) -> dict[str, list[int]]:
        """What per-region metrics report: each named region, then each composite of ``region_groups``."""
        if self.regions is None:
            return {}
        out = {name: [i + 1] for i, name in enumerate(self.regions)}
        out.update({name: [int(v) for v in labels] for name, labels in (self.region_groups or {}).items()})
        return out

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if len(self.split) != 3 or abs(sum(self.split) - 1.0) > 1e-6:
            raise ValueError("data.split: expected three fractions (train, val, test) that sum to 1")
        if self.source == "synthetic" and len(self.class_mix) != len(self.classes):
            raise ValueError("data.class_mix: expected one proportion per class in data.classes")
        window = self.intensity_window
        if window is not None and (len(window) != 2 or not window[0] < window[1]):
            raise ValueError(f"data.intensity_window: expected [lo, hi] with lo < hi (got {window})")
        if len(self.volume_size) != 3 or min(self.volume_size) < 1:
            raise ValueError(f"data.volume_size: expected [slices, rows, columns], each >= 1 (got {self.volume_size})")
        patch = self.patch_size
        if patch is not None and (len(patch) != 3 or min(patch) < 1
                                  or any(p > v for p, v in zip(patch, self.volume_size))):
            raise ValueError(f"data.patch_size: expected [slices, rows, columns], each >= 1 and at most "
                             f"data.volume_size = {self.volume_size} (got {patch})")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ValueError(f"data.spacing: expected [x, y, z] in mm, each > 0 (got {self.spacing})")
        if len(self.ct_window) != 2 or self.ct_window[1] <= 0:
            raise ValueError(f"data.ct_window: expected [level, width] with width > 0 (got {self.ct_window})")
        if self.group_pattern is not None:
            import re

            try:
                groups = re.compile(self.group_pattern).groups
            except re.error as err:
                raise ValueError(f"data.group_pattern: not a regular expression ({err})") from None
            if groups < 1:
                raise ValueError("data.group_pattern: expected a group ( ... ) that captures the patient")
        if self.regions is not None:
            if not self.regions or len(set(self.regions)) != len(self.regions) or len(self.regions) > 254:
                raise ValueError(f"data.regions: expected 1 to 254 distinct region names (got {self.regions})")
        if self.region_groups is not None:
            if self.regions is None:
                raise ValueError("data.region_groups: needs data.regions (the labels it combines)")
            for name, labels in self.region_groups.items():
                if not labels or any(not 1 <= int(v) <= len(self.regions) for v in labels):
                    raise ValueError(f"data.region_groups.{name}: expected region labels 1..{len(self.regions)} "
                                     f"(data.regions = {self.regions}), got {labels}")
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ValueError("data.classes: expected at least two distinct class names")
        if self.no_lesion_class is not None and self.no_lesion_class not in self.classes:
            if "no_lesion_class" in self.model_fields_set:
                raise ValueError(
                    f"data.no_lesion_class: {self.no_lesion_class!r} is not one of data.classes {self.classes}"
                )
            self.__dict__["no_lesion_class"] = None  # the default "normal" where there is no such class
        return self


class ModelConfig(_Section):
    """Which joint model to train (by registry name) and its size."""

    name: str = Field("mtunet", description="mtunet | jrl | mttu | tim_upa | uml; volumes: mtunet3d | mttu3d "
                      "(mtunet and mttu train as their 3D versions on volumes)")
    width: int = Field(16, ge=4, description="channels of the first encoder level")
    depth: int | None = Field(
        None, ge=2, le=6,
        description="number of down-sampling levels (unset: the model's own, mtunet/tim_upa 4, jrl 5, mttu/uml 3)",
    )
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="MC-dropout rate")
    dropout_placement: list[str] = Field(
        default_factory=lambda: ["decoder", "classifier"],
        description="where dropout sits: bottleneck, decoder (every level), last_decoder (the last level only: "
        "MC passes cost little more than one on mtunet), classifier",
    )
    cls_head: Literal["softmax", "evidential"] | None = Field(
        None, description="classification head: softmax | evidential (unset: the model's own, evidential for uml)"
    )
    seg_head: Literal["softmax", "evidential"] | None = Field(
        None, description="segmentation head: softmax | evidential (unset: the model's own, evidential for uml)"
    )
    weights: str | None = Field(
        None, description="local weights file (.pt state dict) a round trained from scratch starts from "
        "(round 1, --cold-start); relative to the campaign file"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="extra model options passed to the builder")


class UncertaintyConfig(_Section):
    """How uncertainty is estimated on the pool."""

    method: Literal["mc_dropout", "evidential", "both"] = Field("mc_dropout", description="estimator")
    mc_passes: int = Field(
        10, ge=2, le=100, description="T, MC-dropout passes (Cheng et al., MTTU-Net, IEEE TMI 2022: T = 10)"
    )
    boundary_band: int = Field(
        3, ge=0, description="pixels around the predicted lesion counted in the lesion uncertainty"
    )
    mc_cache: Literal["on", "off", "auto"] = Field(
        "on", description="MC sampling: encoder once + decoder on a T-times batch (on), T full passes (off), "
        "or the faster of the two timed on the first batch (auto; results then depend on the machine)"
    )


class SelectionConfig(_Section):
    """Pseudo-label policy and the annotation queue."""

    policy: str = Field("ups", description="pseudo-label policy: pl | cpl | ups | none (no class or mask pseudo-label)")
    tau_c: float = Field(
        0.9, ge=0.0, le=1.0, description="confidence threshold (Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 19)"
    )
    tau_u: float = Field(
        0.05,
        ge=0.0,
        description="uncertainty threshold on the chosen measure (Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 19)",
    )
    measure: Literal["std", "entropy", "mutual_info", "vacuity"] = Field(
        "std", description="uncertainty measure for UPS"
    )
    class_balance: bool = Field(True, description="selected pseudo-labels follow the human class ratio")
    distribution_alignment: bool = Field(
        False, description="decide class pseudo-labels on the pool's class probabilities aligned to the human class "
        "ratio (ReMixMatch's distribution alignment), against a pool predicted as the majority class",
    )
    pixel_tau_u: float = Field(
        0.1, ge=0.0, description="pixels with uncertainty above this become 'ignore' in pseudo-masks"
    )
    mask_gate: float = Field(
        0.05, ge=0.0, description="a pseudo-mask is used only if its mean pixel uncertainty is below this"
    )
    acquisition: str = Field(
        "hybrid",
        description="entropy | bald | margin | vacuity | seg_uncertainty | hybrid (class and segmentation) | random",
    )
    hybrid_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="hybrid: weight of the class term (1 - w on segmentation)"
    )
    budget: int = Field(16, ge=0, description="cases sent to annotators per round")
    total_budget: int = Field(0, ge=0, description="stop when this many cases were queued in all (0 = no limit)")
    diversity: bool = Field(False, description="k-center greedy on embeddings among the top candidates")
    audit_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="fraction of accepted pseudo-labels also queued, flagged"
    )
    max_ece: float = Field(
        0.25, ge=0.0, le=1.0, description="calibration gate: above this validation ECE, no pseudo-labels"
    )
    min_val_dice: float = Field(
        0.5, ge=0.0, le=1.0, description="segmentation gate: below this validation Dice, no pseudo-masks (0 = off)"
    )
    min_new_labels: int = Field(0, ge=0, description="trigger: run only when this many new human labels arrived")
    stop_patience: int = Field(3, ge=1, description="stop when validation has not improved for this many rounds")
    seed: int = Field(0, description="seed for random acquisition and audits")

    @field_validator("policy", "acquisition")
    @classmethod
    def _registered(cls, name: str, info: Any) -> str:
        """A policy / acquisition must name an entry of its registry (caught at load, not mid-round)."""
        from medloop.selection import ACQUISITIONS, POLICIES

        registry = POLICIES if info.field_name == "policy" else ACQUISITIONS
        if name not in registry:
            raise ValueError(f"unknown {info.field_name} {name!r}; known: {', '.join(registry.names())}")
        return name


class LabelingConfig(_Section):
    """Label Studio connection and project."""

    enabled: bool = Field(
        False, description="push to / sync from Label Studio (off: queued cases wait, or labeling.oracle answers them)"
    )
    url: str = Field("http://127.0.0.1:8080", description="Label Studio URL")
    token_env: str = Field("LABEL_STUDIO_API_KEY", description="environment variable holding the API token")
    token_file: str | None = Field(None, description="file holding the API token (used when the variable is unset)")
    project_title: str | None = Field(None, description="project title (default: medloop-<campaign>)")
    lesion_label: str = Field("Lesion", description="BrushLabels label name for the lesion")
    oracle: bool = Field(
        False,
        description="answer queued cases from the hidden ground truth as if an annotator had (demo and benchmarks "
        "only; with Label Studio on, the truth is posted there as annotations)",
    )
    multi_annotation_policy: Literal["latest", "agreement"] = Field(
        "latest", description="several annotations on a task"
    )
    slice_sequence: int | str = Field(
        1,
        description="volumes: the sequence a slice task is painted on: its number (1 = the first) or its name in "
        "data.sequences (e.g. \"flair\" for oedema)",
    )
    context_slices: int = Field(
        5, ge=0, le=64,
        description="volumes: the slices on each side of a task's slice that annotators can scroll through below it "
        "(read-only, every sequence side by side); 0: that slice alone",
    )
    port: int | None = Field(
        None, ge=1, le=65535,
        description="shorthand for url = http://127.0.0.1:<port>; with url set it must agree with url's port",
    )
    document_root: str | None = Field(
        None,
        description="the server's LOCAL_FILES_DOCUMENT_ROOT; image URLs are relative to it (default: campaign folder)",
    )
    server_workers: int = Field(
        1, ge=1, le=64,
        description="processes serving `medloop labelstudio start`'s server: 1 is Label Studio's own one-process "
        "server; more runs it under gunicorn with that many workers (give it labeling.server_database too)",
    )
    server_database: str | None = Field(
        None,
        description="PostgreSQL database of `medloop labelstudio start`'s server, e.g. postgresql://ls@db-host:5432/"
        "labelstudio (default: SQLite in <campaign>/labelstudio); the password comes from MEDLOOP_LS_DB_PASSWORD or "
        "libpq's PGPASSWORD / ~/.pgpass, never from this file",
    )
    push_concurrency: int = Field(
        1, ge=1, le=16,
        description="bulk imports in flight at once when pushing the queue (more than 1 pays only with a server of "
        "several workers, labeling.server_workers)",
    )

    @field_validator("server_database")
    @classmethod
    def _postgres_without_password(cls, value: str | None) -> str | None:
        """A PostgreSQL URL (``postgresql://`` or ``postgres://``) with no password in it: secrets come from the
        environment or libpq's password file, never from the campaign file."""
        if value is None:
            return value
        parsed = urlsplit(value)
        if parsed.scheme.split("+")[0] not in ("postgresql", "postgres"):
            raise ValueError(
                f"labeling.server_database: expected a PostgreSQL URL such as postgresql://ls@127.0.0.1:5432/"
                f"labelstudio, got scheme {parsed.scheme or '(none)'!r}"
            )
        if parsed.password is not None:
            raise ValueError(
                "labeling.server_database holds a password: remove it from the campaign file and put it in "
                "MEDLOOP_LS_DB_PASSWORD (or PGPASSWORD / ~/.pgpass)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _url_from_port(cls, data: Any) -> Any:
        """One address: ``port`` alone means a local server on that port (``url`` derived)."""
        if isinstance(data, dict) and data.get("port") is not None and "url" not in data:
            data = {**data, "url": f"http://127.0.0.1:{data['port']}"}
        return data

    @model_validator(mode="after")
    def _one_address(self) -> LabelingConfig:
        """``labelstudio start``, push and sync use one address: a ``port`` that contradicts ``url``
        is refused at load, naming both keys."""
        parsed = urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"labeling.url: expected an http(s) URL such as http://127.0.0.1:8080, got {self.url!r}")
        try:
            url_port = parsed.port
        except ValueError:
            raise ValueError(f"labeling.url: invalid port in {self.url!r}") from None
        if self.port is not None and self.port != (url_port or (443 if parsed.scheme == "https" else 80)):
            raise ValueError(
                f"labeling.port = {self.port} contradicts labeling.url = {self.url!r} (port "
                f"{url_port or 'default'}): Label Studio has one address, used by `medloop labelstudio start`, "
                "push and sync; set labeling.url alone (the port is taken from it), or labeling.port alone "
                "(url = http://127.0.0.1:<port>)"
            )
        return self

    @property
    def server_port(self) -> int:
        """The port of ``url`` (what ``medloop labelstudio start`` listens on, on 127.0.0.1)."""
        parsed = urlsplit(self.url)
        return parsed.port or (443 if parsed.scheme == "https" else 80)

    @property
    def is_local(self) -> bool:
        """Whether ``url`` names this machine's loopback (a server ``labelstudio start`` can run)."""
        host = (urlsplit(self.url).hostname or "").lower()
        return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


class TrackingConfig(_Section):
    """MLflow tracking."""

    uri: str | None = Field(None, description="tracking URI (default: SQLite + local artifacts in the campaign folder)")
    experiment: str | None = Field(None, description="experiment name (default: medloop-<campaign>)")
    register_model: bool = Field(True, description="register each round's model and move the 'champion' alias")


#: training augmentations (trainers/dataset.py): "flip" left-right and up-down, "hflip" left-right only (keeps an
#: ultrasound image's depth axis), "rotate" quarter turns, "affine" small rotation / scale / shift, "intensity"
AUGMENTATIONS = ("flip", "hflip", "rotate", "affine", "intensity")
#: the default of a 2D campaign: images in a canonical orientation (an ultrasound image's depth axis, a radiograph's
#: top and bottom) keep it. On BUSI at 128 px (the full-label reference, bench/README.md "Reference variants") it
#: raised test accuracy from 0.702 to 0.782 and Dice from 0.671 to 0.698 (means of two seeds) against flip + rotate
#: + intensity.
IMAGE_AUGMENT = ("hflip", "affine", "intensity")
#: the default of a volume campaign (as before; "affine" is 2D only)
VOLUME_AUGMENT = ("flip", "rotate", "intensity")


def check_augmentations(names: Iterable[str]) -> list[str]:
    """``names`` as a list; a ``ValueError`` naming the unknown ones and the known ones."""
    names = list(names)
    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; known: {list(AUGMENTATIONS)}")
    return names


class ComputeConfig(_Section):
    """Training and scoring resources."""

    ray_address: str | None = Field(
        None, description="Ray cluster address (default: RAY_ADDRESS, else a local Ray on 127.0.0.1 only)"
    )
    num_workers: int = Field(2, ge=0, description="Ray Train workers (DDP); 0 trains in-process without Ray Train")
    cpus_per_worker: int | None = Field(
        None, ge=1, description="CPUs (torch threads) per Ray Train worker (default: the cluster's CPUs / num_workers)"
    )
    use_gpu: bool = Field(False, description="train and score on GPUs")
    epochs: int = Field(8, ge=1, description="epochs per round")
    batch_size: int = Field(16, ge=1, description="per-worker batch size")
    min_epoch_samples: int = Field(
        0, ge=0,
        description="labeled samples an epoch draws at least (all workers together): a smaller labeled set is "
        "repeated, each repeat with augmentations of its own (more optimiser steps in early rounds); 0: one pass",
    )
    lr: float = Field(2e-3, gt=0.0, description="learning rate (AdamW)")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW weight decay")
    patience: int | None = Field(
        None, ge=1,
        description="early stopping patience (epochs); unset: every epoch runs (the cosine decay runs to the end)",
    )
    keep: Literal["last", "best"] = Field(
        "last",
        description="weights a round keeps: the last epoch's (after the cosine decay) or the best validation score's",
    )
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="learning rate over a round's epochs: cosine decay after warm-up, or constant"
    )
    warmup_epochs: int = Field(1, ge=0, description="epochs of linear learning-rate warm-up at the start of a round")
    augment: list[str] | None = Field(
        None,
        description="training augmentations: flip (left-right and up-down), hflip (left-right only), rotate "
        "(quarter turns), affine (small rotation, scale, shift; 2D), intensity; unset: hflip, affine, intensity "
        "for images, flip, rotate, intensity for volumes",
    )
    amp: bool = Field(True, description="bf16 autocast on GPU")
    channels_last: bool = Field(True, description="channels_last memory format on GPU")
    compile: bool = Field(False, description="torch.compile the model")
    score_batch_size: int = Field(32, ge=1, description="batch size for pool scoring")
    score_actors: int = Field(1, ge=1, description="Ray Data actors for pool scoring")
    score_threads: int | None = Field(
        None, ge=1,
        description="torch threads of each CPU scoring actor (default: the cluster's CPUs / score_actors)",
    )
    seed: int = Field(0, description="training seed")

    @field_validator("augment")
    @classmethod
    def _known_augment(cls, names: list[str] | None) -> list[str] | None:
        return None if names is None else check_augmentations(names)

    def augmentations(self, volume: bool) -> list[str]:
        """``augment`` when set, else the default of the data kind (:data:`IMAGE_AUGMENT`, :data:`VOLUME_AUGMENT`)."""
        if self.augment is not None:
            return list(self.augment)
        return list(VOLUME_AUGMENT if volume else IMAGE_AUGMENT)


SEMI_METHODS = ("none", "fixmatch", "mean_teacher")
STRONG_AUGMENTATIONS = ("intensity", "gamma", "speckle", "blur", "cutout")


class TrainingConfig(_Section):
    """Semi-supervised training inside each round: the unlabeled pool gives a signal where the
    teacher is confident AND certain (the UPS rule of selection.tau_c / tau_u / pixel_tau_u)."""

    semi: Literal["none", "fixmatch", "mean_teacher"] = Field(
        "none", description="none | fixmatch (weak -> strong view consistency) | mean_teacher (EMA teacher)"
    )
    semi_weight: float = Field(1.0, ge=0.0, description="weight of the unlabeled loss after ramp-up")
    ramp_up: float = Field(
        0.3, ge=0.0, le=1.0, description="fraction of a round's epochs over which the unlabeled weight ramps up"
    )
    unlabeled_ratio: int = Field(1, ge=1, le=8, description="unlabeled images per labeled image in a step")
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0, description="mean_teacher: EMA decay of the teacher weights")
    teacher_passes: int = Field(
        4, ge=1, le=20, description="MC-dropout passes of the teacher for its certainty (1 = confidence only)"
    )
    strong_augment: list[str] = Field(
        default_factory=lambda: list(STRONG_AUGMENTATIONS),
        description="strong view: intensity, gamma, speckle, blur, cutout",
    )
    distribution_alignment: bool = Field(
        False, description="align the teacher's class probabilities on the pool to the labeled class ratio before "
        "the UPS rule (ReMixMatch's distribution alignment), against a drift to the majority class",
    )
    semi_seg_gate: bool = Field(
        True, description="the unlabeled pixel term counts only while the student's validation Dice is at least "
        "selection.min_val_dice (the segmentation gate of pseudo-masks); false: from the first step",
    )
    semi_cls_gate: bool = Field(
        True, description="the unlabeled class term counts only while the student's validation ECE is at most "
        "selection.max_ece (the calibration gate of class pseudo-labels), decided after each epoch; false: always",
    )

    @field_validator("strong_augment")
    @classmethod
    def _known_strong(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(STRONG_AUGMENTATIONS))
        if unknown:
            raise ValueError(f"unknown strong augmentation(s) {unknown}; known: {list(STRONG_AUGMENTATIONS)}")
        return names


class Campaign(_Section):
    """A campaign: one TOML file, every section optional."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$", description="campaign name (folder and experiment name)")
    root: str | None = Field(
        None, description="campaign folder, relative to the campaign file's folder (default: .medloop/<name> there)"
    )
    ledger_url: str | None = Field(
        None, description="SQLAlchemy URL of the ledger (default: SQLite in the campaign folder)"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    uncertainty: UncertaintyConfig = Field(default_factory=UncertaintyConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    labeling: LabelingConfig = Field(default_factory=LabelingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    #: the folder of the campaign file (set by :func:`load_campaign`); relative locations start there
    _base_dir: Path | None = PrivateAttr(None)

    # ---- cross-checks --------------------------------------------------------------
    @model_validator(mode="after")
    def _measures_exist(self) -> Campaign:
        """The selection measure and acquisition must exist for the uncertainty method and heads
        (caught at load, not as an all-NaN column mid-round); the model must exist and fit
        ``data.image_size`` (caught at load, not when training starts)."""
        problems = check_model(self) + check_measures(self) + check_slice_sequence(self)
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    # ---- derived locations -------------------------------------------------------
    @property
    def folder(self) -> Path:
        """``root``, else ``.medloop/<name>``; a relative one lies in the campaign file's folder (the
        working directory only for a campaign without a file)."""
        folder = Path(self.root).expanduser() if self.root else Path(".medloop") / self.name
        return folder if self._base_dir is None or folder.is_absolute() else self._base_dir / folder

    def resolve_path(self, value: str | Path) -> Path:
        """A file or folder named in the campaign (``data.path``, ``model.weights``,
        ``labeling.token_file``, ``labeling.document_root``): ``~`` expanded, a relative one taken from
        the campaign file's folder (the working directory only for a campaign without a file), so that
        a scheduled round finds the same files from any working directory."""
        path = Path(value).expanduser()
        return path if self._base_dir is None or path.is_absolute() else self._base_dir / path

    @property
    def ledger(self) -> str:
        return self.ledger_url or f"sqlite:///{(self.folder / 'ledger.db').resolve()}"

    @property
    def store(self) -> Path:
        """The image store folder (``images/``, ``masks/``, ``arrays/`` inside)."""
        return self.folder / "store"

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{(self.folder / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.folder / "mlartifacts").resolve()

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or f"medloop-{self.name}"

    @property
    def lock_file(self) -> Path:
        return self.folder / "round.lock"


#: selection measures / acquisitions computed from the MC-dropout passes (none with method "evidential")
MC_MEASURES = ("std", "mutual_info")
MC_ACQUISITIONS = ("bald",)


def model_heads(model: ModelConfig) -> tuple[str, str]:
    """(cls_head, seg_head) the campaign trains and scores with: the ones it sets, else the model's
    own (``medloop.trainers.models.resolve_heads``; evidential for ``uml``, softmax otherwise).
    An unknown model name resolves unset heads to softmax (the name is refused when the model is built)."""
    if model.cls_head is not None and model.seg_head is not None:
        return model.cls_head, model.seg_head
    from medloop.registry import UnknownNameError
    from medloop.trainers.models import resolve_heads

    try:
        return resolve_heads(model.name, model.cls_head, model.seg_head)
    except UnknownNameError:
        return model.cls_head or "softmax", model.seg_head or "softmax"


def model_depth(model: ModelConfig) -> tuple[int, str]:
    """(depth, where it comes from) of the campaign's model: ``model.options.depth`` (passed to the
    builder last), else ``model.depth``, else the model class's own default. Needs a known name."""
    from medloop.trainers.models import model_defaults

    if "depth" in model.options:
        return int(model.options["depth"]), f"model.options.depth = {model.options['depth']}"
    if model.depth is not None:
        return model.depth, f"model.depth = {model.depth}"
    depth = model_defaults(model.name)["depth"]
    return int(depth), f"its own depth {depth}, model.depth unset"


def check_model(campaign: Campaign) -> list[str]:
    """Messages for a model name that is not registered, or a model input size (``data.image_size``;
    ``data.volume_size`` for a 3D model) its down-sampling (2**depth) does not divide (empty: all fine).
    Imports the models (torch) lazily."""
    from medloop.trainers.models import MODELS, is_volume_model

    m = campaign.model
    if m.name not in MODELS:
        return [f'model.name = "{m.name}": unknown model; known: {", ".join(MODELS.names())}']
    depth, where = model_depth(m)
    step = 2**depth
    if is_volume_model(m.name):
        key = "patch_size" if campaign.data.patch_size is not None else "volume_size"
        sizes = campaign.data.patch_size or campaign.data.volume_size
        if all(s % step == 0 for s in sizes):
            return []
        fits = [max(step, round(s / step) * step) for s in sizes]
        return [f'data.{key} = {sizes} cannot be divided by 2**{depth} = {step} on every axis, the '
                f'down-sampling of model "{m.name}" ({where}); use data.{key} = {fits}, or a smaller model.depth']
    size = campaign.data.image_size
    if size % step == 0:
        return []
    near = [s for s in (size // step * step, size // step * step + step) if 16 <= s <= 1024]
    use = " or ".join(str(s) for s in near) or f"a multiple of {step}"
    return [f'data.image_size = {size} cannot be divided by 2**{depth} = {step}, the down-sampling of model '
            f'"{m.name}" ({where}); use data.image_size = {use}, or a smaller model.depth']


def check_slice_sequence(campaign: Campaign) -> list[str]:
    """A message when ``labeling.slice_sequence`` names no sequence (a number below 1, or a name that
    ``data.sequences`` does not hold); a number above a volume's sequences is caught when its task is made."""
    seq, names = campaign.labeling.slice_sequence, campaign.data.sequences
    if isinstance(seq, int):
        return [] if seq >= 1 else [f"labeling.slice_sequence = {seq}: expected a sequence number from 1"]
    if names is None or seq not in names:
        return [f"labeling.slice_sequence = {seq!r}: not a name in data.sequences ({names}); "
                "give its number (1 = the first) or one of those names"]
    return []


def slice_sequence_index(campaign: Campaign, channels: int, case: str) -> int:
    """The 0-based sequence a volume's slice task is painted on (``labeling.slice_sequence``) for a case of
    ``channels`` sequences; ValueError naming the key and the case when it has fewer."""
    seq = campaign.labeling.slice_sequence
    index = seq - 1 if isinstance(seq, int) else (campaign.data.sequences or []).index(seq)
    if index >= channels:
        raise ValueError(f"labeling.slice_sequence = {seq!r}: case {case} has {channels} sequence(s)")
    return index


def check_measures(campaign: Campaign) -> list[str]:
    """Messages for each selection measure / acquisition that does not exist for the campaign's
    uncertainty method and classification head (empty: all fine)."""
    sel, method = campaign.selection, campaign.uncertainty.method
    uses_vacuity = sel.measure == "vacuity" or sel.acquisition == "vacuity"
    if method != "evidential" and not uses_vacuity:
        return []  # the common case: no model import needed
    cls_head, _ = model_heads(campaign.model)
    evidential, mc = cls_head == "evidential", method != "evidential"
    problems: list[str] = []
    if not mc:
        gives_none = 'but uncertainty.method = "evidential" gives none'
        back = 'or uncertainty.method = "mc_dropout" | "both"'
        if sel.measure in MC_MEASURES:
            use = "entropy or vacuity" if evidential else "entropy"
            problems.append(
                f'selection.measure = "{sel.measure}" needs MC-dropout passes, {gives_none}; use {use}, {back}'
            )
        if sel.acquisition in MC_ACQUISITIONS:
            use = "hybrid, entropy, margin, seg_uncertainty" + (" or vacuity" if evidential else " or random")
            problems.append(f'selection.acquisition = "{sel.acquisition}" needs MC-dropout passes, {gives_none}; '
                            f"use {use}, {back}")
    if not evidential:
        has = (f'model.cls_head = "{cls_head}"' if campaign.model.cls_head is not None
               else f'model "{campaign.model.name}" has a {cls_head} classification head (model.cls_head unset)')
        fix = 'set model.cls_head = "evidential" (or use model.name = "uml")'
        if sel.measure == "vacuity":
            use = "std, entropy or mutual_info" if mc else "entropy"
            problems.append(f'selection.measure = "vacuity" needs an evidential classification head, but {has}; '
                            f"{fix}, or use {use}")
        if sel.acquisition == "vacuity":
            use = "hybrid, entropy, margin" + (" or bald" if mc else " or seg_uncertainty")
            problems.append(f'selection.acquisition = "vacuity" needs an evidential classification head, but {has}; '
                            f"{fix}, or use {use}")
    return problems


class ConfigError(ValueError):
    """A campaign file is invalid; the message names the key and what was expected."""


_URL_PASSWORD = re.compile(r"(://[^:/@]+):[^@/]+@")


def mask_url_password(text: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host`` (for messages, logs and MLflow params)."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid campaign configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if len(e["loc"]) <= 1 and e["type"] == "value_error":  # a cross-check: its message names the keys
            lines.append("  " + str(e["msg"]).removeprefix("Value error, "))
        elif e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            expected = e["msg"]
            got = mask_url_password(repr(e.get("input")))
            lines.append(f"  {key}: {expected} (got {got})")
    return "\n".join(lines)


def parse_campaign(data: dict[str, Any], source: str = "<config>") -> Campaign:
    """Validate a mapping (parsed TOML) into a :class:`Campaign`."""
    try:
        return Campaign.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def with_labeling(campaign: Campaign, source: str, **changes: Any) -> Campaign:
    """``campaign`` with ``[labeling]`` keys changed (a command-line option), checked as the campaign file
    is: a :class:`ConfigError` names the key (with any password in a URL masked)."""
    try:
        labeling = LabelingConfig.model_validate({**campaign.labeling.model_dump(exclude_unset=True), **changes})
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None
    return campaign.model_copy(update={"labeling": labeling})


#: the campaign file every command uses when it is given none (``--config`` wins)
CONFIG_ENV = "MEDLOOP_CONFIG"


def load_campaign(path: str | Path | None = None, **overrides: Any) -> Campaign:
    """Load a campaign TOML file: ``path``, else the file named by ``MEDLOOP_CONFIG``, else the defaults.
    Relative locations in it (``root``, the default ``.medloop/<name>``) start at the file's folder."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    path = path or os.environ.get(CONFIG_ENV) or None
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: campaign file not found") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML ({err})") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    campaign = parse_campaign(data, source)
    if path is not None:
        campaign._base_dir = Path(path).expanduser().resolve().parent
    return campaign


def flatten(campaign: Campaign) -> dict[str, Any]:
    """Flat ``section.key -> value`` mapping (for MLflow params). Holds no secrets."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", campaign.model_dump())
    return out


def commented_toml(campaign: Campaign | None = None) -> str:
    """A campaign file with every key and its description, for ``medloop init``."""
    import tomli_w

    campaign = campaign or Campaign()
    lines = ["# medloop campaign file. Every key is optional; shown values are the defaults.", ""]
    top = campaign.model_dump()
    for key, field in Campaign.model_fields.items():
        if isinstance(top[key], dict):
            continue
        lines.append(f"# {field.description}")
        value = top[key]
        lines.append(tomli_w.dumps({key: value}).strip() if value is not None else f"# {key} = ")
    for key, field in Campaign.model_fields.items():
        if not isinstance(top[key], dict):
            continue
        section_cls = field.annotation
        lines += ["", f"[{key}]"]
        for sub, sub_field in section_cls.model_fields.items():  # type: ignore[union-attr]
            value = top[key][sub]
            lines.append(f"# {sub_field.description}")
            if value is None:
                lines.append(f"# {sub} = ")
            elif isinstance(value, dict):  # inline table: a [header] would end the section
                inner = ", ".join(tomli_w.dumps({k: v}).strip() for k, v in value.items())
                lines.append(f"{sub} = {{{inner}}}" if inner else f"{sub} = {{}}")
            else:
                lines.append(tomli_w.dumps({sub: value}).strip())
    return "\n".join(lines) + "\n"
