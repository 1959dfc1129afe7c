"""Tile feature extractors (local files only, or trained here) and the per-source feature cache (Sec. 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discnb import K

from discnb.grading import features


pytestmark = pytest.mark.usefixtures("one_thread")


class MeanRGB(torch.nn.Module):
    """Features = per-channel mean of the normalised input (easy to check by hand)."""

    def forward(self, x):
        return x.mean((2, 3))


def mean_extractor(size=16, key="mean-1"):
    return features.Extractor("mean", MeanRGB(), size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3, key, batch_size=3)


def test_extractor_normalises_resizes_and_batches():
    ext = mean_extractor()
    tiles = np.zeros((7, 32, 32, 3), np.uint8)
    tiles[:, :, :, 0] = 255
    out = ext(tiles)  # 32 px resized to 16, 3 batches
    assert out.shape == (7, 3) and out.dtype == np.float32
    assert np.allclose(out[:, 0], (1 - 0.5) / 0.25, atol=1e-5) and np.allclose(out[:, 1:], -2.0, atol=1e-5)
    with pytest.raises(ValueError, match="N, H, W, 3"):
        ext(np.zeros((2, 16, 16), np.uint8))


def test_feature_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path):
    calls = []
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)

    def chunks():
        calls.append(1)
        yield ["a", "b"], tiles[:2]
        yield ["c", "d", "e"], tiles[2:]

    ext = mean_extractor()
    first = features.cached_features(ext, tmp_path, "real", "fp1", chunks, progress=False)
    assert not first["cached"] and first["feats"].shape == (5, 3) and list(first["keys"]) == list("abcde")
    again = features.cached_features(ext, tmp_path, "real", "fp1", chunks, progress=False)
    assert again["cached"] and len(calls) == 1 and np.array_equal(again["feats"], first["feats"])
    assert again["index"]["c"] == 2 and np.allclose(again["feats"][2], ext(tiles[2:3])[0])
    features.cached_features(ext, tmp_path, "real", "fp2", chunks, progress=False)  # source changed
    assert len(calls) == 2
    other = mean_extractor(key="mean-2")  # another extractor: another folder
    features.cached_features(other, tmp_path, "real", "fp2", chunks, progress=False)
    assert len(calls) == 3 and (tmp_path / "features" / "mean-2" / "real.npz").exists()

    def dup():
        yield ["a", "a"], tiles[:2]
    with pytest.raises(ValueError, match="not unique"):
        features.cached_features(ext, tmp_path, "dup", "x", dup, progress=False)


def test_pretrained_extractor_from_a_local_file(tmp_path):
    import timm
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "dino_vit_small_patch16_ep200.torch"
    torch.save({"module." + k: v for k, v in vit.state_dict().items()}, path)  # a DDP-style prefix is stripped
    ext = features.pretrained_extractor("lunit-vits16", path, batch_size=2)
    assert ext.dim == 384 and ext.input_size == 224 and ext.mean == features.LUNIT_MEAN
    assert ext.key.startswith("lunit-vits16-")
    tiles = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    out = ext(tiles)
    x = torch.nn.functional.interpolate(torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255, size=(224, 224),
                                        mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(features.LUNIT_MEAN).view(1, 3, 1, 1)) / torch.tensor(features.LUNIT_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert np.allclose(out, vit.eval()(x).numpy(), atol=1e-4)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="does not fit timm vit_small_patch16_224"):
        features.pretrained_extractor("lunit-vits16", tmp_path / "wrong.pth")
    with pytest.raises(FileNotFoundError, match="tilecnn"):
        features.pretrained_extractor("resnet50-mocov2", tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="needs extractor.path"):
        features.pretrained_extractor("resnet50-imagenet", "")


def test_tilecnn_is_trained_once_then_reused(tmp_path):
    rng = np.random.default_rng(0)
    calls = []

    def train_tiles():
        calls.append(1)
        tiles = rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
        frac = rng.dirichlet(np.ones(K), 16).astype(np.float32)
        return tiles, frac

    cfg = {"name": "tilecnn", "width": 4, "epochs": 1, "batch": 8, "lr": 1e-3, "seed": 0, "eval_batch": 64}
    ext = features.tilecnn_extractor(cfg, tmp_path, train_tiles, "train-fp", 16, progress=False)
    assert ext.dim == 32 and ext.input_size == 16 and len(calls) == 1
    tiles = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    f1 = ext(tiles)
    again = features.tilecnn_extractor(cfg, tmp_path, train_tiles, "train-fp", 16, progress=False)
    assert len(calls) == 1 and again.key == ext.key and np.allclose(again(tiles), f1, atol=1e-6)
    other = features.tilecnn_extractor(cfg, tmp_path, train_tiles, "another-train-split", 16, progress=False)
    assert len(calls) == 2 and other.key != ext.key
    folder = tmp_path / "extractors" / ext.key
    assert (folder / "final" / "model.safetensors").exists() and not list(folder.glob("checkpoint-*"))
    with pytest.raises(ValueError, match="even"):
        features.TileCNN(3)


# ------------------------------------------------------------------------------- chunks as work units
def _loaders(tiles, size=3, calls=None, fail_at=None):
    """One loader per ``size`` tiles (keys t0, t1, ...); ``calls`` collects the chunks loaded; the
    loader of chunk ``fail_at`` raises (a run stopped there)."""
    def loader(i):
        def load():
            if i == fail_at:
                raise KeyboardInterrupt
            if calls is not None:
                calls.append(i)
            part = tiles[i * size:(i + 1) * size]
            return [f"t{i * size + j}" for j in range(len(part))], part
        return load
    return [loader(i) for i in range(-(-len(tiles) // size))]


def test_chunk_loaders_give_the_features_of_one_pass_and_leave_no_parts(tmp_path):
    tiles = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    ext = mean_extractor()
    got = features.cached_features(ext, tmp_path / "a", "real", "fp", _loaders(tiles), progress=False)

    def one_pass():
        for k, t in (ld() for ld in _loaders(tiles)):
            yield k, t
    ref = features.cached_features(ext, tmp_path / "b", "real", "fp", one_pass, progress=False)
    assert np.array_equal(got["feats"], ref["feats"]) and list(got["keys"]) == [f"t{i}" for i in range(8)]
    assert sorted(p.name for p in (tmp_path / "a" / "features" / ext.key).iterdir()) == ["real.npz"]


def test_stopped_extraction_resumes_from_its_finished_chunks(tmp_path):
    """Chunk 2 of 3 fails: chunks 0 and 1 stay as parts; the rerun loads only chunk 2, merges in chunk
    order and deletes the parts; parts made from another source version are not reused."""
    tiles = np.random.default_rng(2).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    ext = mean_extractor()
    folder = tmp_path / "features" / ext.key
    with pytest.raises(KeyboardInterrupt):
        features.cached_features(ext, tmp_path, "real", "fp", _loaders(tiles, fail_at=2), progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["real.part-00000.npz", "real.part-00001.npz"]
    (folder / "real.part-00002.tmp.npz").write_bytes(b"half")
    calls = []
    got = features.cached_features(ext, tmp_path, "real", "fp", _loaders(tiles, calls=calls), progress=False)
    assert calls == [2] and not got["cached"]
    assert sorted(p.name for p in folder.iterdir()) == ["real.npz"]
    clean = features.cached_features(ext, tmp_path / "clean", "real", "fp", _loaders(tiles), progress=False)
    assert np.array_equal(got["feats"], clean["feats"]) and list(got["keys"]) == list(clean["keys"])
    # a stopped run of another source version: its parts are deleted, every chunk is extracted again
    with pytest.raises(KeyboardInterrupt):
        features.cached_features(ext, tmp_path, "real", "fp-old", _loaders(tiles, fail_at=2), progress=False)
    calls.clear()
    features.cached_features(ext, tmp_path, "real", "fp-new", _loaders(tiles, calls=calls), progress=False)
    assert calls == [0, 1, 2] and sorted(p.name for p in folder.iterdir()) == ["real.npz"]
