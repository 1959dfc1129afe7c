"""Shape maps m_freq (Sec. 2.2)."""

from __future__ import annotations

import numpy as np
import pytest

from discnb.data import sicap as data

from discnb.data import shapes


def test_freq_relabel_ranks_by_pixel_count():
    m = np.array([[3, 3, 3, 1], [3, 3, 0, 1], [3, 3, 0, 1]], np.uint8)  # 3:7, 1:3, 0:2
    f, lbr = shapes.freq_relabel(m)
    assert lbr.tolist() == [3, 1, 0, -1]
    assert f.tolist() == [[0, 0, 0, 1], [0, 0, 2, 1], [0, 0, 2, 1]]
    assert (shapes.assign_labels(f, lbr) == m).all()


def test_ties_go_to_lower_label_and_single_label():
    f, lbr = shapes.freq_relabel(np.array([[2, 1], [1, 2]], np.uint8))
    assert lbr.tolist()[:2] == [1, 2] and f.tolist() == [[1, 0], [0, 1]]
    f, lbr = shapes.freq_relabel(np.full((4, 4), 2, np.uint8))
    assert (f == 0).all() and lbr.tolist() == [2, -1, -1, -1]


def test_assign_labels_checks_rank_count():
    f, _ = shapes.freq_relabel(np.array([[0, 1, 2]], np.uint8))
    assert shapes.assign_labels(f, [3, 2, 1]).tolist() == [[3, 2, 1]]
    with pytest.raises(ValueError, match="3 ranks"):
        shapes.assign_labels(f, [3, 2])


def test_library_roundtrip(sicap, tmp_path):
    index, _ = data.build_index(sicap, progress=False)
    tr = index[index.split == "train"]
    lib = shapes.build_library(tr, 16, progress=False)
    assert lib["maps"].shape == (len(tr), 16, 16) and lib["maps"].dtype == np.uint8
    for i, row in enumerate(tr.itertuples()):
        m = shapes.resize_mask(data.load_mask(row.mask_path), 16)
        assert (shapes.assign_labels(lib["maps"][i], lib["labels_by_rank"][i]) == m).all()
        assert lib["n_ranks"][i] == len(np.unique(m))
    p = shapes.save_library(tmp_path / "lib.npz", lib)
    back = shapes.load_library(p)
    assert all((back[k] == lib[k]).all() for k in lib)
    assert shapes.rank_histogram(lib).sum() == len(tr)
    with pytest.raises(FileNotFoundError, match="00_data_prep"):
        shapes.load_library(tmp_path / "none.npz")
