"""3D multimodal phantoms: seeded, nested BraTS regions, and the sequence contrasts that define them
(enhancing rim on T1ce for IDH-wildtype, the T2-FLAIR mismatch for IDH-mutant)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medloop.data.phantoms3d import GENOTYPES, SEQUENCES, generate3d, phantom3d


def mean_in(p, sequence: str, region: np.ndarray) -> float:
    return float(p.image[SEQUENCES.index(sequence)][region].mean())


def test_seeded_and_shaped() -> None:
    a, b = phantom3d(3, 5, "idh_wildtype", size=24), phantom3d(3, 5, "idh_wildtype", size=24)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.image.shape == (4, 24, 24, 24) and a.image.dtype == np.float32 and a.mask.dtype == np.uint8
    assert not np.array_equal(a.image, phantom3d(3, 6, "idh_wildtype", size=24).image)
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0
    assert [p.label for p in generate3d(4, size=16)] == ["idh_mutant", "idh_wildtype"] * 2


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), index=st.integers(0, 1000), label=st.sampled_from(GENOTYPES))
def test_regions_are_nested_inside_the_head(seed: int, index: int, label: str) -> None:
    p = phantom3d(seed, index, label, size=24)
    wt, tc, et = p.region("whole_tumour"), p.region("tumour_core"), p.region("enhancing_tumour")
    assert (tc <= wt).all() and (et <= tc).all() and tc.any()
    head = p.image.max(0) > 0
    assert (wt <= head).all()
    assert et.any() == (label == "idh_wildtype")  # only the wildtype pattern enhances


def test_sequences_show_the_regions_as_gliomas_do() -> None:
    wild, mutant = phantom3d(0, 0, "idh_wildtype"), phantom3d(0, 0, "idh_mutant")
    for p in (wild, mutant):
        brain = (p.mask == 0) & (p.image.max(0) > 0.2)
        oedema = p.mask == 1
        assert mean_in(p, "flair", oedema) > mean_in(p, "flair", brain) + 0.2  # FLAIR-bright oedema
        assert mean_in(p, "t2", p.region("tumour_core")) > mean_in(p, "t2", brain) + 0.3
    # IDH-wildtype: the enhancing rim is the brightest tissue on T1ce
    assert mean_in(wild, "t1ce", wild.region("enhancing_tumour")) > mean_in(wild, "t1ce", wild.mask == 1) + 0.15
    # IDH-mutant: the T2-FLAIR mismatch (core bright on T2, suppressed on FLAIR)
    core = mutant.region("tumour_core")
    mismatch = mean_in(mutant, "t2", core) - mean_in(mutant, "flair", core)
    wild_core = wild.mask == 2
    assert mismatch > 0.2 > mean_in(wild, "t2", wild_core) - mean_in(wild, "flair", wild_core)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown genotype 'grade4'"):
        phantom3d(0, 0, "grade4")
    with pytest.raises(ValueError, match="at least 16"):
        phantom3d(0, 0, "idh_mutant", size=8)


def test_phantom_folder_reads_back_as_the_phantoms_own_arrays(tmp_path) -> None:
    from medloop.data.phantoms3d import GENOTYPES, generate3d, write_phantom_folder
    from medloop.data.volume_dataset import read_volume_folder
    from medloop.data.volume_ingest import model_axes

    folder = write_phantom_folder(tmp_path / "ph", 3, seed=5, size=16)
    cases, bad = read_volume_folder(folder, list(GENOTYPES))
    assert bad == [] and [c.case for c in cases] == ["phantom-0000", "phantom-0001", "phantom-0002"]
    for case, p in zip(cases, generate3d(3, seed=5, size=16)):
        assert case.label == p.label
        np.testing.assert_array_equal(model_axes(case.image.array), p.image)  # (S, D, H, W) after ingest's layout
        assert case.mask is not None
        np.testing.assert_array_equal(model_axes(case.mask.array)[0], p.mask)
