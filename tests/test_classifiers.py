"""Classifiers: the DeepMind-style WRN of DM-Improves-AT, its checkpoint format, the registry."""
import re

import pytest
import torch

from dmat_core.robust.classifiers import (CIFAR10_MEAN, CIFAR10_STD, CheckpointMismatchError, PreActResNet18,
                                          SmallCNN, ToyMLP, WideResNet, build_classifier,
                                          load_published_checkpoint)

KEY = re.compile(r"^(init_conv|layer\.[012]\.block\.\d+\.(batchnorm_[01]|conv_[01]|shortcut)|batchnorm|logits)"
                 r"\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


@pytest.fixture(scope="module")
def wrn28():
    torch.manual_seed(0)
    return WideResNet(depth=28, width=10).eval()


def _published(model, prefix="module.0."):
    """A checkpoint in the published format (Wang et al. 2023): EMA and raw weights, prefixed keys."""
    state = {prefix + k: v for k, v in model.state_dict().items()}
    return {"model_state_dict": state, "unaveraged_model_state_dict": state}


def test_wrn_28_10_names_shapes_and_size(wrn28):
    state = wrn28.state_dict()
    assert all(KEY.match(k) for k in state), [k for k in state if not KEY.match(k)][:5]
    assert sum(p.numel() for p in wrn28.parameters()) == 36_479_194  # the WRN-28-10 of the papers
    shapes = {"init_conv.weight": (16, 3, 3, 3), "layer.0.block.0.conv_0.weight": (160, 16, 3, 3),
              "layer.0.block.0.shortcut.weight": (160, 16, 1, 1), "layer.1.block.0.shortcut.weight": (320, 160, 1, 1),
              "layer.2.block.3.conv_1.weight": (640, 640, 3, 3), "batchnorm.running_var": (640,),
              "logits.weight": (10, 640), "logits.bias": (10,)}
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert not any(f"layer.{g}.block.{b}.shortcut" in k for k in state for g in range(3) for b in (1, 2, 3))
    assert {k for k in state if "layer.0.block." in k and k.endswith("conv_0.weight")} == \
        {f"layer.0.block.{b}.conv_0.weight" for b in range(4)}
    # BN momentum 0.01 (PyTorch convention) everywhere; normalisation buffers not in the state dict
    assert {m.momentum for m in wrn28.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.01}
    assert "mean" not in state and "std" not in state
    assert torch.allclose(wrn28.mean.flatten(), torch.tensor(CIFAR10_MEAN))
    assert torch.allclose(wrn28.std.flatten(), torch.tensor(CIFAR10_STD))


def test_published_checkpoint_round_trip(wrn28, tmp_path):
    path = tmp_path / "cifar10_linf_wrn28-10.pt"
    torch.save(_published(wrn28), path)
    fresh = WideResNet(depth=28, width=10).eval()
    assert load_published_checkpoint(path, fresh) is fresh
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), wrn28.state_dict().values()))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), wrn28(x))
    # a plain state dict, and the 'module.' prefix of a bare DataParallel, load too
    load_published_checkpoint(wrn28.state_dict(), WideResNet(depth=28, width=10))
    load_published_checkpoint({"model_state_dict": {"module." + k: v for k, v in wrn28.state_dict().items()}},
                              WideResNet(depth=28, width=10))


def test_wrong_depth_is_refused(wrn28):
    with pytest.raises(CheckpointMismatchError) as err:
        load_published_checkpoint(_published(wrn28), WideResNet(depth=34, width=10))
    msg = str(err.value)
    assert "WideResNet(depth=34, width=10" in msg and "missing keys (36)" in msg
    assert "layer.0.block.4." in msg and "looks like WideResNet(depth=28, width=10, num_classes=10)" in msg


def test_wrong_width_is_refused(wrn28):
    with pytest.raises(CheckpointMismatchError) as err:
        load_published_checkpoint(_published(wrn28), WideResNet(depth=28, width=4))
    msg = str(err.value)
    assert "shape mismatches" in msg and "WideResNet(depth=28, width=4" in msg
    assert "layer.0.block.0.conv_0.weight: checkpoint (160, 16, 3, 3) vs model (64, 16, 3, 3)" in msg
    assert "(+" in msg  # only the first few are listed


def test_wrong_keys_are_refused():
    torch.manual_seed(0)
    small = WideResNet(depth=10, width=1)
    ckpt = _published(small)
    state = ckpt["model_state_dict"]
    state["module.0.logits.kernel"] = state.pop("module.0.logits.weight")
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing keys \(1\): logits.weight.*"
                                                      r"unexpected keys \(1\): logits.kernel"):
        load_published_checkpoint(ckpt, WideResNet(depth=10, width=1))
    other = {"model_state_dict": {"module.1." + k: v for k, v in small.state_dict().items()}}
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):
        load_published_checkpoint(other, WideResNet(depth=10, width=1))
    with pytest.raises(CheckpointMismatchError, match="not a state dict"):
        load_published_checkpoint({"epoch": 3, "model": {}}, WideResNet(depth=10, width=1))


def test_small_wrn_forward_and_same_padding():
    torch.manual_seed(0)
    model = WideResNet(depth=10, width=1, activation="relu").eval()
    sizes = {}
    for name in ("init_conv", "layer.0", "layer.1", "layer.2"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, n=name: sizes.__setitem__(n, o.shape[-2:]))
    with torch.no_grad():
        out = model(torch.rand(5, 3, 32, 32))
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    assert {k: tuple(v) for k, v in sizes.items()} == {"init_conv": (32, 32), "layer.0": (32, 32),
                                                       "layer.1": (16, 16), "layer.2": (8, 8)}
    for g, pad in ((0, (1, 1, 1, 1)), (1, (0, 1, 0, 1)), (2, (0, 1, 0, 1))):
        block = model.layer[g].block[0]
        assert block.pad == pad and block.conv_0.padding == (0, 0)  # "SAME" by hand, conv padding 0
        assert block.conv_1.padding == (1, 1)


def test_normalisation_inside_and_registry():
    model = build_classifier("wideresnet", depth=10, width=1)
    assert isinstance(model, WideResNet)
    x = torch.rand(2, 3, 32, 32)
    ref = WideResNet(depth=10, width=1, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():  # the model normalises: the same weights on pre-normalised input agree
        z_ref = ref.eval()((x - model.mean) / model.std)
        assert torch.allclose(model.eval()(x), z_ref, atol=1e-5)
    assert build_classifier("small-cnn")(x).shape == (2, 10)
    assert build_classifier("preact_resnet18", num_classes=7)(x).shape == (2, 7)
    assert isinstance(PreActResNet18(), torch.nn.Module) and isinstance(SmallCNN(), torch.nn.Module)
    toy = build_classifier("toy-mlp", num_classes=3, width=8, depth=2)
    assert isinstance(toy, ToyMLP) and toy(torch.randn(4, 2) * 10).shape == (4, 3)  # raw coordinates
    with pytest.raises(ValueError, match="unknown classifier 'resnet9'.*known: .*wrn-28-10"):
        build_classifier("resnet9")
    with pytest.raises(ValueError, match="activation"):
        WideResNet(depth=10, width=1, activation="gelu")
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=12)
