"""discnb.plots.loss_curves and carcinonet.judge_rows: the plotting helpers the notebooks call."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from discnb.pipelines import train_carcinonet as cn
from discnb import plots as figures


def _metrics(folder, n=20, val_every=5):
    folder.mkdir(parents=True)
    step = np.arange(1, n + 1)
    val = [1.0 / s if s % val_every == 0 else np.nan for s in step]
    pd.DataFrame({"step": step, "epoch": 0, "loss": 1.0 / step, "val_loss": val, "lr": 1e-3,
                  "elapsed_s": step * 0.1}).to_csv(folder / "metrics.csv", index=False)


def test_loss_curves_panels_and_missing_runs(tmp_path):
    _metrics(tmp_path / "a")
    _metrics(tmp_path / "b", n=10)
    fig = figures.loss_curves({"A": tmp_path / "a", "B": tmp_path / "b", "never trained": tmp_path / "c"})
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["A", "B"]  # the folder without metrics.csv is left out
    train, val = axes[0].get_lines()
    assert len(train.get_xdata()) == 20 and len(val.get_xdata()) == 4  # validation only where logged
    shared = figures.loss_curves({"A": tmp_path / "a", "B": tmp_path / "b"}, smooth=3, title="both")
    (ax,) = shared.get_axes()
    lines = ax.get_lines()
    assert len(lines) == 4 and lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        figures.loss_curves({"none": tmp_path / "c"})


def test_judge_rows_show_mask_tile_and_segmentation():
    class Judge:
        def segment(self, tiles):
            return np.full(tiles.shape[:3], 2, np.uint8)

    rng = np.random.default_rng(0)
    masks = rng.integers(0, 4, (6, 8, 8)).astype(np.uint8)
    imgs = rng.integers(0, 255, (6, 8, 8, 3)).astype(np.uint8)
    rows = cn.judge_rows({"SD": {"masks": masks, "images": imgs}}, Judge(), n=3, seed=0)
    assert list(rows) == ["SD: guiding mask", "SD: tile", "SD: judge"]
    assert all(len(r) == 3 for r in rows.values())
    assert (rows["SD: judge"][0] == figures.colorize(np.full((8, 8), 2, np.uint8))).all()


def test_save_writes_the_same_bytes_every_time(tmp_path, monkeypatch):
    """A re-run must leave committed figures unchanged: no creation date in the PDF, even when the clock moves
    (matplotlib dates a PDF from SOURCE_DATE_EPOCH when it is set, else from the clock)."""
    from matplotlib.figure import Figure

    def draw():
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().plot([0, 1], [1, 0])
        return fig
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    png = figures.save(draw(), tmp_path / "a" / "fig")
    first = {s: png.with_suffix(s).read_bytes() for s in (".png", ".pdf")}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")  # a day, or years, later
    figures.save(draw(), tmp_path / "a" / "fig")
    assert {s: png.with_suffix(s).read_bytes() for s in (".png", ".pdf")} == first
    assert b"CreationDate" not in first[".pdf"]
