"""`dmat train-at` and `dmat eval`: JSON results, published checkpoints, clear errors, no partial files."""
import json

import pytest
import torch

from dmat_core.cli.main import main
from dmat_core.images import data
from dmat_core.robust.classifiers import WideResNet
from dmat_core.robust.evaluate import evaluate


def train_args(root):
    return ["train-at", "--preset", "cpu-quick", "--data-dir", str(root / "cifar"), "--out",
            str(root / "run"), "--steps", "6", "--n-val", "40", "--val-every", "3", "--no-progress",
            "--set", "arch_kw={\"width\": 8}", "--set", "attack_steps=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A cpu-quick run of 6 steps through the command line."""
    root = tmp_path_factory.mktemp("cli")
    data.write_tiny_cifar(root / "cifar", n_train_per_batch=40, n_test=40, seed=0)
    assert main(train_args(root)) == 0
    return root


def run_cli(args, capsys):
    code = main(args)
    return code, json.loads(capsys.readouterr().out)


def test_train_at_writes_result_and_logs(trained):
    result = json.loads((trained / "run" / "result.json").read_text())
    assert result["steps"] == 6 and result["arch"].startswith("SmallCNN(num_classes=10, width=8")
    config = json.loads((trained / "run" / "config.json").read_text())
    assert config["attack_steps"] == 2 and config["n_val"] == 40
    assert len((trained / "run" / "log.csv").read_text().splitlines()) >= 3
    assert len((trained / "run" / "val.csv").read_text().splitlines()) == 3  # header + steps 3, 6


def test_train_at_again_prints_the_finished_run(trained, capsys):
    """The same command on a finished run trains nothing and rewrites nothing."""
    run = trained / "run"
    stamps = {f: (run / f).stat().st_mtime_ns for f in ("final.pt", "result.json", "checkpoint.pt")}
    capsys.readouterr()
    code, printed = run_cli(train_args(trained), capsys)
    assert code == 0 and printed == json.loads((run / "result.json").read_text())
    assert {f: (run / f).stat().st_mtime_ns for f in stamps} == stamps


def test_eval_all_attacks_json(trained, capsys):
    out = trained / "eval.json"
    code, printed = run_cli(["eval", "--checkpoint", str(trained / "run" / "best.pt"), "--data-dir",
                             str(trained / "cifar"), "--n", "20", "--attacks", "clean,pgd,autoattack",
                             "--pgd-steps", "5", "--aa-n-iter", "5", "--aa-n-queries", "20", "--out", str(out)],
                            capsys)
    saved = json.loads(out.read_text())
    assert code == 0 and saved == printed and saved["n"] == 20
    clean, pgd_acc = saved["clean"]["accuracy"], saved["pgd"]["accuracy"]
    aa = saved["autoattack"]
    assert 0 <= aa["robust_accuracy"] <= pgd_acc + 0.05 and pgd_acc <= clean <= 1
    assert aa["clean_accuracy"] == pytest.approx(clean) and aa["shortened"]
    assert saved["model"]["weights"] == "ema" and saved["model"]["step"] in (3, 6)


def test_eval_reads_the_published_format(trained, capsys):
    torch.manual_seed(0)
    model = WideResNet(depth=10, width=1).eval()
    state = {"module.0." + k: v for k, v in model.state_dict().items()}
    torch.save({"model_state_dict": state, "unaveraged_model_state_dict": state}, trained / "published.pt")
    code, printed = run_cli(["eval", "--checkpoint", str(trained / "published.pt"), "--arch", "wideresnet",
                             "--arch-kw", '{"depth": 10, "width": 1}', "--data-dir", str(trained / "cifar"),
                             "--n", "16", "--attacks", "clean", "--out", str(trained / "pub.json")], capsys)
    x, y = data.load_cifar(trained / "cifar", train=False)
    with torch.no_grad():
        expected = (model(data.to_tensor_images(x[:16])).argmax(1) == torch.as_tensor(y[:16])).float().mean()
    assert code == 0 and printed["clean"]["accuracy"] == pytest.approx(expected.item())


@pytest.mark.parametrize("args,message", [
    (["--arch", "wideresnet", "--arch-kw", '{"depth": 10, "width": 2}'], "does not match"),
    (["--eps", "8"], "out of range"),
    (["--attacks", "clean,fgsm"], "unknown"),
    (["--device", "gpu"], "device must be"),
])
def test_eval_errors_are_clear_and_write_nothing(trained, capsys, args, message):
    out = trained / "bad-eval.json"
    with pytest.raises(SystemExit) as e:
        main(["eval", "--checkpoint", str(trained / "run" / "best.pt"), "--data-dir", str(trained / "cifar"),
              "--n", "8", "--attacks", "clean", "--out", str(out)] + args)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--eps", "8"], "write 8/255"),
    (["--unsup-fraction", "0.7"], "no generated set"),
    (["--set", "arch=resnet-1000"], "unknown classifier"),
    (["--config", "missing.json"], "config file not found"),
    (["--device", "tpu"], "device must be"),
])
def test_train_at_errors_are_clear_and_create_nothing(trained, capsys, args, message):
    out = trained / "bad-run"
    with pytest.raises(SystemExit) as e:
        main(["train-at", "--preset", "cpu-quick", "--data-dir", str(trained / "cifar"), "--out", str(out),
              "--no-progress"] + args)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_checks_the_input_contract():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"x must lie in \[0.0, 1.0\]"):
        evaluate(model, x * 3, y, attacks=["clean"])
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\)"):
        evaluate(model, x, torch.tensor([0, 1, 2, 3]), attacks=["clean"])
    assert evaluate(model, x, y, attacks=["clean"])["clean"]["accuracy"] in (0, 0.25, 0.5, 0.75, 1.0)


def test_other_settings_are_refused_and_fresh_starts_over(tmp_path, capsys):
    """One meaning of start over: a folder of another run is refused in one line (exit 2, nothing
    written), and --fresh removes that run and trains from step 0."""
    data.write_tiny_cifar(tmp_path / "cifar", n_train_per_batch=40, n_test=40, seed=0)
    args = train_args(tmp_path)
    args[args.index("--steps") + 1] = "2"
    assert main(args) == 0
    before = {f.name: f.read_bytes() for f in (tmp_path / "run").iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args + ["--lr", "0.07"])
    assert e.value.code == 2 and "lr: 0.05 there, 0.07 now" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in (tmp_path / "run").iterdir()} == before
    code, printed = run_cli(args + ["--lr", "0.07", "--fresh"], capsys)
    assert code == 0 and printed["steps"] == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == 0.07
