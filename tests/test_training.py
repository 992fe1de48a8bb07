"""The training skeleton the three trainers share: one meaning of "start over", one refusal of a
foreign or mismatched checkpoint, one non-finite check, and the EMA rule of the toy trainer
written as the shared EMA's warm-up (checked against the closed form)."""
import inspect
import math

import pytest
import torch

from dmat_core.common.train_utils import EMA
from dmat_core.common.training import NonFiniteLossError, RunMismatchError, Trainer, check_resumable
from dmat_core.diffusion.losses import ATConfig
from dmat_core.images.dm_train import DMTrainer, train_dm
from dmat_core.robust.train import ATTrainer, train_at
from dmat_core.toys.mixtures import ring8
from dmat_core.toys.nets import data_std
from dmat_core.toys.train import ToyTrainer, make_toy_model, train_toy


def test_every_trainer_is_the_skeleton_and_says_fresh():
    for cls in (ATTrainer, DMTrainer, ToyTrainer):
        assert issubclass(cls, Trainer) and cls.run is Trainer.run, cls
    for fn in (ATTrainer, DMTrainer, ToyTrainer, train_at, train_dm, train_toy):
        params = inspect.signature(fn).parameters
        assert "fresh" in params and params["fresh"].default is False, fn
        assert "resume" not in params, fn


def test_toy_ema_is_the_closed_form_warm_up():
    """The toy trainer's EMA (decay min(tau, t / (9 + t)) at update t) through the shared class."""
    model = torch.nn.Linear(3, 1, bias=False)
    ema = EMA(model, 0.9, warmup=1)
    want = model.weight.detach().clone()
    for t in range(1, 40):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model)
        d = min(0.9, t / (9 + t))
        want = d * want + (1 - d) * model.weight.detach()
        assert ema.decay(t) == d
    assert torch.allclose(ema.module.weight, want, atol=1e-6)


def _toy(tmp_path, variant="standard", **kw):
    x = ring8().sample(200, torch.Generator().manual_seed(0))
    m = make_toy_model(2, data_std(x), seed=1, width=16, depth=1)
    return m, x, dict(config=ATConfig(variant), steps=6, batch=16, checkpoint=tmp_path / "toy.pt", **kw)


def test_toy_checkpoint_of_another_loss_is_refused_and_fresh_starts_over(tmp_path):
    m, x, kw = _toy(tmp_path)
    list(train_toy(m, x, **kw))
    before = (tmp_path / "toy.pt").read_bytes()
    m, x, kw = _toy(tmp_path, "random")
    with pytest.raises(RunMismatchError, match="variant: 'standard' there, 'random' now"):
        next(train_toy(m, x, **kw))
    assert (tmp_path / "toy.pt").read_bytes() == before          # the refused run wrote nothing
    states = list(train_toy(m, x, fresh=True, **kw))
    assert [s["step"] for s in states] == list(range(1, 7)) and (tmp_path / "toy.pt").read_bytes() != before


def test_non_finite_loss_stops_before_the_optimiser_moves(tmp_path):
    m, x, kw = _toy(tmp_path, checkpoint_every=2)
    trainer = ToyTrainer(m, x, **kw)
    for _ in range(2):
        trainer.step()
    trainer.save()
    weights = [p.detach().clone() for p in m.parameters()]
    trainer.data[:] = math.nan
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 3"):
        trainer.step()
    assert all(torch.equal(a, b) for a, b in zip(weights, m.parameters())) and trainer.step_count == 2


def test_check_resumable_names_the_kind_and_each_difference():
    with pytest.raises(RunMismatchError, match="not a dmat toy training checkpoint"):
        check_resumable({"format": "other/1"}, "ck.pt", format="dmat-toy-train/1", what="toy training",
                        saved={}, now={}, may_change=())
    with pytest.raises(RunMismatchError, match=r"a: 1 there, 2 now; b: None there, 3 now"):
        check_resumable({"format": "f"}, "ck.pt", format="f", what="x", saved={"a": 1, "c": 0},
                        now={"a": 2, "b": 3, "c": 5}, may_change={"c"})
    check_resumable({"format": "f"}, "ck.pt", format="f", what="x", saved={"a": 1}, now={"a": 1}, may_change=())
