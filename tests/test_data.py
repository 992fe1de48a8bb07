"""CIFAR reader, generated-data files, the mixed batch sampler and the augmentation."""
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmat_core.common.safe_pickle import safe_load_pickle
from dmat_core.images import data


def _listing(directory):
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- CIFAR reader

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    data.write_tiny_cifar(root / "folder", n_train_per_batch=40, n_test=30, seed=3)
    data.write_tiny_cifar(root / "tar", n_train_per_batch=40, n_test=30, seed=3, as_tar=True)
    return root


def test_folder_and_archive_read_the_same(tiny):
    x, y = data.load_cifar(tiny / "folder")
    xt, yt = data.load_cifar(tiny / "tar")  # read from the .tar.gz, nothing extracted
    assert x.shape == (200, 32, 32, 3) and x.dtype == np.uint8 and x.flags.c_contiguous
    assert y.shape == (200,) and y.dtype == np.int64 and 0 <= y.min() and y.max() < 10
    np.testing.assert_array_equal(x, xt), np.testing.assert_array_equal(y, yt)
    assert _listing(tiny / "tar") == ["cifar-10-python.tar.gz"]
    x_test, _ = data.load_cifar(tiny / "tar" / "cifar-10-python.tar.gz", train=False)
    assert x_test.shape == (30, 32, 32, 3)
    assert data.cifar_class_names(tiny / "tar")[:2] == ["class_0", "class_1"]


def test_planes_become_nhwc(tiny):
    raw = safe_load_pickle(tiny / "folder" / "cifar-10-batches-py" / "data_batch_1")
    x, y = data.load_cifar(tiny / "folder")
    planes = raw[b"data"][5].reshape(3, 32, 32)  # R, G, B planes of image 5
    for c in range(3):
        np.testing.assert_array_equal(x[5, :, :, c], planes[c])
    assert list(y[:40]) == raw[b"labels"]


def test_cifar100_and_default_root(tmp_path, monkeypatch):
    data.write_tiny_cifar(tmp_path, n_train_per_batch=50, n_test=20, name="cifar100", as_tar=True)
    monkeypatch.setenv("DMAT_DATA", str(tmp_path))
    x, y = data.load_cifar(name="cifar100")
    assert x.shape == (50, 32, 32, 3) and y.max() < 100
    assert len(data.cifar_class_names(name="cifar100")) == 100


def _rewrite(path, changes):
    d = safe_load_pickle(path)
    d.update(changes)
    path.write_bytes(pickle.dumps(d, protocol=2))


@pytest.mark.parametrize("damage, message", [
    ("missing", r"data_batch_3: missing file"),
    ("truncated_data", r"data_batch_3: 'data' has \d+ values, not a multiple of 3072"),
    ("bad_labels", r"data_batch_3: labels out of range \[0, 10\)"),
    ("float_labels", r"data_batch_3: labels must be integers"),
    ("length_mismatch", r"data_batch_3: 40 images but 39 labels"),
    ("float_data", r"data_batch_3: 'data' must be a uint8 numpy array"),
    ("truncated_file", r"data_batch_3: not a valid CIFAR pickle"),
    ("code", r"data_batch_3: not a valid CIFAR pickle.*refused"),
])
def test_broken_folders_are_refused(tmp_path, damage, message):
    folder = data.write_tiny_cifar(tmp_path, n_train_per_batch=40, n_test=10)
    batch = folder / "data_batch_3"
    d = safe_load_pickle(batch)
    if damage == "missing":
        batch.unlink()
    elif damage == "truncated_data":
        _rewrite(batch, {b"data": d[b"data"].reshape(-1)[:-100]})
    elif damage == "bad_labels":
        _rewrite(batch, {b"labels": [10] + d[b"labels"][1:]})
    elif damage == "float_labels":
        _rewrite(batch, {b"labels": [0.5] * 40})
    elif damage == "length_mismatch":
        _rewrite(batch, {b"labels": d[b"labels"][:-1]})
    elif damage == "float_data":
        _rewrite(batch, {b"data": d[b"data"].astype(np.float32)})
    elif damage == "truncated_file":
        batch.write_bytes(batch.read_bytes()[:5000])
    elif damage == "code":
        batch.write_bytes(pickle.dumps({b"data": eval}, protocol=2))
    with pytest.raises(ValueError, match=message):
        data.load_cifar(tmp_path)


def test_broken_archives_are_refused(tmp_path):
    archive = data.write_tiny_cifar(tmp_path / "a", n_train_per_batch=40, n_test=10, as_tar=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / archive.name).write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz"):
        data.load_cifar(tmp_path / "b")
    # an archive without data_batch_5
    with tarfile.open(archive) as src, tarfile.open(tmp_path / "c.tar.gz", "w:gz") as dst:
        for m in src.getmembers():
            if not m.name.endswith("data_batch_5"):
                dst.addfile(m, src.extractfile(m))
    with pytest.raises(ValueError, match=r"c.tar.gz:cifar-10-batches-py/data_batch_5: missing file"):
        data.load_cifar(tmp_path / "c.tar.gz")


def test_not_found_and_download(tmp_path, monkeypatch):
    import torchvision
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz.*DMAT_DATA"):
        data.load_cifar(tmp_path)

    class Offline:
        def __init__(self, *a, **k):
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(RuntimeError, match=f"could not download cifar10.*into {tmp_path}"):
        data.load_cifar(tmp_path, download=True)

    class FakeDownload:  # stands in for torchvision: leaves the archive, extracted, in root
        def __init__(self, root, train, download):
            data.write_tiny_cifar(root, n_train_per_batch=20, n_test=10)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeDownload)
    assert data.load_cifar(tmp_path, download=True)[0].shape == (100, 32, 32, 3)


def test_split_validation():
    x, y = np.zeros((3000, 32, 32, 3), np.uint8), np.arange(3000)
    (xtr, ytr), (xv, yv) = data.split_validation(x, y)
    assert len(xv) == 1024 and list(yv[:3]) == [0, 1, 2] and ytr[0] == 1024 and len(xtr) == 1976
    with pytest.raises(ValueError):
        data.split_validation(x[:1000], y[:1000])


# --------------------------------------------------------------------------- generated data

def _gen(n, seed=0, num_classes=10):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, num_classes, n)


def test_generated_round_trip_and_mmap(tmp_path):
    x, y = _gen(50)
    path = tmp_path / "1m.npz"
    data.save_generated(path, x, y)
    xm, ym = data.load_generated(path)  # mapped in place inside the zip
    assert isinstance(xm, np.memmap) and isinstance(ym, np.memmap) and not xm.flags.writeable
    xr, yr = data.load_generated(path, mmap=False)
    assert not isinstance(xr, np.memmap)
    for a, b in ((x, xm), (x, xr), (y, ym), (y, yr)):
        np.testing.assert_array_equal(a, b)
    assert _listing(tmp_path) == ["1m.npz"]
    data.save_generated(tmp_path / "t.npz", torch.from_numpy(x), torch.from_numpy(y))  # tensors too


def test_compressed_npz_and_directory(tmp_path, monkeypatch):
    """A compressed set is unpacked into the user's cache, never beside the input (a reader writes
    nothing in the folder it reads); a refused file leaves no cache behind."""
    monkeypatch.setenv("DMAT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "in").mkdir()
    x, y = _gen(30)
    np.savez_compressed(tmp_path / "in" / "c.npz", image=x, label=y)
    xm, ym = data.load_generated(tmp_path / "in" / "c.npz")
    assert isinstance(xm, np.memmap)
    np.testing.assert_array_equal(xm, x), np.testing.assert_array_equal(ym, y)
    assert _listing(tmp_path / "in") == ["c.npz"]
    [cache] = list((tmp_path / "cache" / "npz-mmap").iterdir())
    assert _listing(cache) == ["image.npy", "label.npy", "source.json"]
    xd, _ = data.load_generated(cache)  # a directory of .npy files is a generated set too
    np.testing.assert_array_equal(xd, x)
    x2, y2 = _gen(20, seed=1)  # the source changes: the cache is rebuilt
    np.savez_compressed(tmp_path / "in" / "c.npz", image=x2, label=y2)
    np.testing.assert_array_equal(data.load_generated(tmp_path / "in" / "c.npz")[0], x2)
    np.savez_compressed(tmp_path / "in" / "bad.npz", image=x2, label=y2 + 100)   # refused: labels out of range
    caches = _listing(tmp_path / "cache" / "npz-mmap")
    with pytest.raises(ValueError, match="out of range"):
        data.load_generated(tmp_path / "in" / "bad.npz")
    assert _listing(tmp_path / "cache" / "npz-mmap") == caches and _listing(tmp_path / "in") == ["bad.npz", "c.npz"]


@pytest.mark.parametrize("arrays, message", [
    (dict(image=np.zeros((4, 32, 32, 3), np.uint8)), r"missing key\(s\) \['label'\]"),
    (dict(image=np.zeros((4, 32, 32, 3), np.float32), label=np.zeros(4, int)), "'image' must be uint8"),
    (dict(image=np.zeros((4, 3, 32, 32), np.uint8), label=np.zeros(4, int)), r"shape \(N, 32, 32, 3\)"),
    (dict(image=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros(4)), "'label' must be an integer"),
    (dict(image=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros((4, 1), int)), r"shape \(N,\)"),
    (dict(image=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros(3, int)), "4 images but 3 labels"),
    (dict(image=np.zeros((4, 32, 32, 3), np.uint8), label=np.array([0, 1, 2, 10])), r"out of range \[0, 10\)"),
])
@pytest.mark.parametrize("mmap", [True, False])
def test_bad_generated_files_are_refused(tmp_path, arrays, message, mmap):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=rf"bad.npz: .*{message}"):
        data.load_generated(path, mmap=mmap)


def test_unreadable_generated_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK not really a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        data.load_generated(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", image=np.array([None]), label=np.zeros(1, int))
    for mmap in (True, False):
        with pytest.raises(ValueError, match="obj.npz"):
            data.load_generated(tmp_path / "obj.npz", mmap=mmap)
    x, y = _gen(10)
    data.save_generated(tmp_path / "ok.npz", x, y)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:20000])
    with pytest.raises(ValueError, match="cut.npz"):
        data.load_generated(tmp_path / "cut.npz")



def test_is_generated_set_picks_sets_of_one_shape(tmp_path):
    """What notebook 07 chooses a digits set with: a valid set of that shape only."""
    from dmat_core.images.gendata import is_generated_set
    x, y = _gen(10)                                           # (10, 32, 32, 3)
    data.save_generated(tmp_path / "rgb.npz", x, y)
    data.save_generated(tmp_path / "grey.npz", x[:, :8, :8, :1].copy(), y, shape=(8, 8, 1))
    (tmp_path / "junk.npz").write_bytes(b"PK not really a zip")
    assert is_generated_set(tmp_path / "rgb.npz", (32, 32, 3))
    assert not is_generated_set(tmp_path / "rgb.npz", (8, 8, 1))
    assert is_generated_set(tmp_path / "grey.npz", (8, 8, 1))
    assert not is_generated_set(tmp_path / "junk.npz", (32, 32, 3))
    assert not is_generated_set(tmp_path / "missing.npz", (32, 32, 3))

def test_save_refuses_bad_input_and_writes_nothing(tmp_path):
    x, y = _gen(8)
    for images, labels in ((x.astype(np.float32), y), (x, y[:-1]), (x[..., :1], y)):
        with pytest.raises(ValueError, match="save_generated"):
            data.save_generated(tmp_path / "out.npz", images, labels)
    with pytest.raises(ValueError, match="out of range"):
        data.save_generated(tmp_path / "out.npz", x, y + 10, num_classes=10)
    assert _listing(tmp_path) == []


def test_merge(tmp_path):
    (xa, ya), (xb, yb) = _gen(30, 1), _gen(17, 2)
    data.save_generated(tmp_path / "a.npz", xa, ya)
    data.save_generated(tmp_path / "b.npz", xb, yb.astype(np.uint8))
    assert data.merge_generated([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "ab.npz") == (30, 17)
    for mmap in (True, False):
        x, y = data.load_generated(tmp_path / "ab.npz", mmap=mmap)
        np.testing.assert_array_equal(x, np.concatenate([xa, xb]))
        np.testing.assert_array_equal(y, np.concatenate([ya, yb]))
    np.savez(tmp_path / "bad.npz", image=xa, label=ya + 10)
    with pytest.raises(ValueError, match="bad.npz"):
        data.merge_generated([tmp_path / "a.npz", tmp_path / "bad.npz"], tmp_path / "out.npz")
    assert _listing(tmp_path) == ["a.npz", "ab.npz", "b.npz", "bad.npz"]


# --------------------------------------------------------------------------- mixed sampler

def test_sampler_fraction_and_epoch_length():
    s = data.MixedBatchSampler(n_real=1000, n_generated=10_000, batch_size=100, unsup_fraction=0.7)
    assert len(s) == 10 and s.n_gen_per_batch == 70 and s.n_real_per_batch == 30
    batches = [torch.tensor(b) for b in s]
    assert len(batches) == 10 and all(len(b) == 100 for b in batches)
    assert all(int((b >= 1000).sum()) == 70 for b in batches)
    real = torch.cat([b[b < 1000] for b in batches])
    assert len(real.unique()) == len(real) == 300  # without replacement within the epoch
    # the epoch length does not depend on the size of the generated set
    assert len(data.MixedBatchSampler(1000, 10**7, 100)) == len(data.MixedBatchSampler(1000, 10, 100)) == 10
    assert s.state_dict()["epoch"] == 1 and len(s) == 10


def test_generated_drawn_without_replacement_across_epochs():
    s = data.MixedBatchSampler(n_real=200, n_generated=560, batch_size=20, unsup_fraction=0.7)
    gen = []
    for _ in range(6):  # 6 epochs x 10 batches x 14 = 840 = 1.5 passes over the generated set
        gen += [i for b in s for i in b if i >= 200]
    first_pass = torch.tensor(gen[:560]) - 200
    assert torch.equal(first_pass.sort().values, torch.arange(560))
    assert sorted(gen[560:]) == sorted(set(gen[560:]))


def test_real_only_epoch_is_one_pass():
    s = data.MixedBatchSampler(n_real=105, n_generated=0, batch_size=20, unsup_fraction=0.0)
    batches = list(s)
    assert [len(b) for b in batches] == [20] * 5 + [5]
    assert sorted(i for b in batches for i in b) == list(range(105))
    with pytest.raises(ValueError, match="unsup_fraction=0"):
        data.MixedBatchSampler(n_real=105, n_generated=0, batch_size=20)


def _run(sampler, epochs):
    return [b for _ in range(epochs) for b in sampler]


def test_sampler_determinism():
    a = _run(data.MixedBatchSampler(300, 1000, 32, seed=5), 3)
    assert a == _run(data.MixedBatchSampler(300, 1000, 32, seed=5), 3)
    assert a != _run(data.MixedBatchSampler(300, 1000, 32, seed=6), 3)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert _run(data.MixedBatchSampler(300, 1000, 32, generator=g1), 2) == \
        _run(data.MixedBatchSampler(300, 1000, 32, generator=g2), 2)


def test_sampler_resumes_at_the_exact_next_batch():
    reference = _run(data.MixedBatchSampler(300, 1000, 32, seed=7), 3)  # 10 batches per epoch
    s = data.MixedBatchSampler(300, 1000, 32, seed=7)
    seen = _run(s, 1)
    for b in s:  # killed after 4 batches of epoch 1
        seen.append(b)
        if len(seen) == 14:
            break
    state = s.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 4)
    resumed = data.MixedBatchSampler(300, 1000, 32, seed=999)  # seed comes from the state
    resumed.load_state_dict(state)
    assert len(resumed) == 6
    seen += _run(resumed, 2)
    assert seen == reference
    with pytest.raises(ValueError, match="batch_size"):
        data.MixedBatchSampler(300, 1000, 64).load_state_dict(state)


@pytest.mark.parametrize("batch_size, world_size", [(32, 2), (30, 4), (7, 3)])
def test_ranks_split_every_global_batch(batch_size, world_size):
    single = _run(data.MixedBatchSampler(300, 1000, batch_size, seed=3), 2)
    ranks = [_run(data.MixedBatchSampler(300, 1000, batch_size, seed=3, rank=r,
                                         world_size=world_size), 2) for r in range(world_size)]
    for step, batch in enumerate(single):
        parts = [ranks[r][step] for r in range(world_size)]
        assert sorted(i for p in parts for i in p) == sorted(batch)  # union, and disjoint
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_sampler_with_dataloader_and_gather():
    xr, yr = _gen(64, 1)
    xg, yg = _gen(256, 2)
    s = data.MixedBatchSampler(64, 256, 16, seed=0)
    ds = torch.utils.data.ConcatDataset([torch.utils.data.TensorDataset(torch.from_numpy(xr), torch.from_numpy(yr)),
                                         torch.utils.data.TensorDataset(torch.from_numpy(xg), torch.from_numpy(yg))])
    idx = s.batch_indices(0, 0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=s)
    xb, yb = next(iter(loader))
    xs, ys = data.gather_mixed(idx, (xr, yr), (xg, yg))
    np.testing.assert_array_equal(xb.numpy(), xs), np.testing.assert_array_equal(yb.numpy(), ys)
    assert xs.shape == (16, 32, 32, 3)


# --------------------------------------------------------------------------- augmentation

def _reference_crop_flip(x, generator, padding=4, mode="constant"):
    """Slow per-image reference: same random draws, pad, slice, flip."""
    B, _, H, W = x.shape
    dy = torch.randint(0, 2 * padding + 1, (B,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (B,), generator=generator)
    flip = torch.rand(B, generator=generator) < 0.5
    out = []
    for i in range(B):
        img = F.pad(x[i:i + 1], (padding,) * 4, mode=mode)[0, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W]
        out.append(img.flip(-1) if flip[i] else img)
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_crop_flip_matches_reference(mode):
    x = torch.rand(64, 3, 32, 32)
    fast = data.augment_crop_flip(x, torch.Generator().manual_seed(0), padding_mode=mode)
    slow = _reference_crop_flip(x, torch.Generator().manual_seed(0), mode=mode)
    assert torch.equal(fast, slow)


def test_crop_flip_shape_range_determinism():
    x = torch.rand(32, 3, 32, 32, dtype=torch.float64)
    a = data.augment_crop_flip(x, torch.Generator().manual_seed(1))
    b = data.augment_crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and (a == 0).any()  # zero padding shows up
    assert not torch.equal(a, data.augment_crop_flip(x, torch.Generator().manual_seed(2)))
    flips = data.augment_crop_flip(x, torch.Generator().manual_seed(3), padding=0)
    for i in range(len(x)):  # without padding only flips remain
        assert torch.equal(flips[i], x[i]) or torch.equal(flips[i], x[i].flip(-1))


def test_to_tensor_images():
    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    t = data.to_tensor_images(x)
    assert t.shape == (5, 3, 32, 32) and t.dtype == torch.float32 and t.is_contiguous()
    assert torch.allclose(t[2, 1], torch.from_numpy(x[2, :, :, 1]).float() / 255)
    with pytest.raises(ValueError, match="uint8"):
        data.to_tensor_images(x.astype(np.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_crop_flip_on_cuda_matches_cpu():
    x = torch.rand(16, 3, 32, 32)
    cpu = data.augment_crop_flip(x, torch.Generator().manual_seed(0))
    gpu = data.augment_crop_flip(x.cuda(), torch.Generator().manual_seed(0))  # draws on the CPU
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
