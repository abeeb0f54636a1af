"""CNN3 as the paper describes it, and model files that load without running code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dicomcr.cli import app
from dicomcr.models.cnn3 import CNN3, CNN3Spec
from dicomcr.models.modelfile import ModelFileError, ModelInfo, load_model, save_model

SMALL = CNN3Spec(channels=(4, 8, 8), hidden=(16, 8), input_size=(64, 64))


def _info() -> ModelInfo:
    return ModelInfo(architecture="cnn3", spec=SMALL.as_dict(),
                     preprocessing={"scale": 0.3, "canvas": [100, 120], "input_size": [64, 64]},
                     trained_crs=[20.0], data_fingerprint="abc123", threshold=0.42,
                     validation={"auroc": 0.81})


def test_cnn3_has_the_papers_convolutions_and_one_logit() -> None:
    model = CNN3(SMALL)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3
    assert all(c.kernel_size == (6, 6) and c.stride == (2, 2) and c.padding == (2, 2)
               for c in convs)
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 3
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 3
    out = model(torch.rand(5, 1, 64, 64))
    assert out.shape == (5,)
    with pytest.raises(ValueError, match="expected"):
        model(torch.rand(5, 1, 32, 32))


def test_a_model_file_round_trips_weights_and_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CNN3(SMALL).eval()
    path = tmp_path / "m.dcmcr"
    save_model(model, _info(), path)
    loaded, info = load_model(path)
    x = torch.rand(3, 1, 64, 64)
    assert torch.equal(model(x), loaded(x))
    assert info.trained_crs == [20.0] and info.validation == {"auroc": 0.81}
    assert info.threshold == 0.42 and info.versions["torch"] == torch.__version__


def test_a_model_file_without_its_input_geometry_or_of_version_1_is_refused(tmp_path: Path
                                                                            ) -> None:
    import json

    import safetensors.torch

    info = _info()
    info.preprocessing = {"scale": 0.3, "canvas": [100, 120], "input_size": [128, 128]}
    with pytest.raises(ValueError, match="the network takes"):
        save_model(CNN3(SMALL), info, tmp_path / "m.dcmcr")  # a model that could never run
    save_model(CNN3(SMALL), _info(), tmp_path / "m.dcmcr")
    with safetensors.safe_open(str(tmp_path / "m.dcmcr"), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    old = json.loads(metadata["info"])
    del old["threshold"]
    old["preprocessing"] = {"scale": 0.3, "input_size": [64, 64]}  # as version 1 wrote them
    safetensors.torch.save_file(tensors, str(tmp_path / "v1.dcmcr"), metadata={
        **metadata, "format_version": "1", "info": json.dumps(old)})
    with pytest.raises(ModelFileError, match="version 1, this dicomcr reads version 2: train"):
        load_model(tmp_path / "v1.dcmcr")
    safetensors.torch.save_file(tensors, str(tmp_path / "v2.dcmcr"), metadata={
        **metadata, "info": json.dumps({**old, "threshold": 0.5})})
    with pytest.raises(ModelFileError, match="records no input canvas"):
        load_model(tmp_path / "v2.dcmcr")


def test_corrupt_foreign_and_truncated_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.dcmcr"
    save_model(CNN3(SMALL), _info(), path)
    data = path.read_bytes()
    cases = {
        "truncated.dcmcr": (data[: len(data) // 2], "not a readable model file"),
        "garbage.dcmcr": (b"\x00" * 64, "not a readable model file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=message):
            load_model(tmp_path / name)
    import safetensors.torch

    safetensors.torch.save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.dcmcr"))
    with pytest.raises(ModelFileError, match="not a dicomcr model file"):
        load_model(tmp_path / "foreign.dcmcr")
    torch.save(CNN3(SMALL).state_dict(), tmp_path / "pickle.dcmcr")  # a pickle is never loaded
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(tmp_path / "pickle.dcmcr")
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "missing.dcmcr")


def test_resnet18_takes_one_channel_and_starts_from_imagenet_weights_on_disk(tmp_path: Path
                                                                             ) -> None:
    import torchvision

    from dicomcr.models import ResNet18, ResNet18Spec, build_model

    reference = torchvision.models.resnet18(weights=None)  # same layout as the ImageNet file
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = ResNet18(ResNet18Spec(input_size=(64, 64), imagenet=True))
    model.load_imagenet(tmp_path / "resnet18.pth")
    assert torch.equal(model.net.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.eval()(torch.rand(3, 1, 64, 64)).shape == (3,)

    class Payload:  # a pickle that would run code: refused by weights_only loading
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"conv1.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="not a readable ResNet18 weights file"):
        model.load_imagenet(tmp_path / "evil.pth")
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a torchvision ResNet18"):
        model.load_imagenet(tmp_path / "other.pth")

    info = ModelInfo(architecture="resnet18", spec=model.spec.as_dict(),
                     preprocessing={"canvas": [64, 64]}, trained_crs=[1.0],
                     data_fingerprint="x", threshold=0.5)
    save_model(model, info, tmp_path / "r.dcmcr")
    loaded, back = load_model(tmp_path / "r.dcmcr")
    x = torch.rand(2, 1, 64, 64)
    assert back.architecture == "resnet18" and torch.equal(model(x), loaded(x))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("vgg", {})


def test_model_info_shows_what_a_model_file_holds(tmp_path: Path) -> None:
    """`dicomcr model-info`: a table that reads at 80 columns, or everything as strict JSON."""
    info = _info()
    info.trained_crs = [1.0, 20.0]
    info.validation = {"best_epoch": 4, "val_auroc": 0.8125, "split": [16, 3, 5],
                       "threshold_rule": "Youden's J on validation",
                       "test_auroc_cr20": [0.75, 0.6, 0.9]}
    path = tmp_path / "m.dcmcr"
    save_model(CNN3(SMALL), info, path)
    runner = CliRunner()
    shown = runner.invoke(app, ["model-info", str(path)], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    assert max(len(line) for line in shown.output.splitlines()) <= 80
    for row in ("cnn3 (channels 4/8/8, dropout 0.3, hidden 16/8)",
                "64 x 64 (the 100 x 120 pair at 0.3, shrunk)", "trained at CR", "1, 20",
                "0.4200 (Youden's J on validation)", "abc123",
                "AUROC 0.812, best epoch 4, split 16 / 3 / 5 patients",
                "test AUROC at CR 20", "0.750 (95% CI 0.600-0.900)", f"torch {torch.__version__}"):
        assert row in shown.output, row
    as_json = runner.invoke(app, ["model-info", str(path), "--json"])
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.output)
    assert document["format_version"] == 2 and document["threshold"] == 0.42
    assert document["trained_crs"] == [1.0, 20.0] and document["data_fingerprint"] == "abc123"
    assert document["validation"]["split"] == [16, 3, 5]
    info.validation = {"val_auroc": float("nan")}  # as files from before validation was required
    save_model(CNN3(SMALL), info, path)
    old = runner.invoke(app, ["model-info", str(path), "--json"])
    assert json.loads(old.output)["validation"]["val_auroc"] is None  # strict JSON, no NaN
    assert "AUROC n/a" in runner.invoke(app, ["model-info", str(path)]).output
    (tmp_path / "x.dcmcr").write_bytes(b"\x00" * 64)
    bad = runner.invoke(app, ["model-info", str(tmp_path / "x.dcmcr")])
    assert bad.exit_code == 2 and "not a readable model file" in bad.output


def test_model_info_says_what_becomes_of_the_pair(tmp_path: Path) -> None:
    """An input larger than the canvas is enlarged, not shrunk (issue 21, part 6); a model at the
    pitch says padded; one resized each way says which dimension."""
    from dicomcr.data.preprocess import Preprocessing

    assert Preprocessing(canvas=(100, 120)).input_text() == \
        "100 x 120 (the pair at 0.3 of the image, padded)"
    assert Preprocessing(canvas=(100, 120), input_size=(64, 64)).input_text() == \
        "64 x 64 (the 100 x 120 pair at 0.3, shrunk)"
    assert Preprocessing(canvas=(100, 120), input_size=(64, 200)).input_text() == \
        "64 x 200 (the 100 x 120 pair at 0.3, shrunk in height, enlarged in width)"
    assert Preprocessing(canvas=(100, 120), input_size=(100, 64)).input_text() == \
        "100 x 64 (the 100 x 120 pair at 0.3, shrunk in width)"
    spec = CNN3Spec(channels=(4, 8, 8), hidden=(16, 8), input_size=(128, 128))
    info = _info()
    info.spec, info.preprocessing = spec.as_dict(), {"scale": 0.3, "canvas": [100, 120],
                                                     "input_size": [128, 128]}
    save_model(CNN3(spec), info, tmp_path / "big.dcmcr")
    shown = CliRunner().invoke(app, ["model-info", str(tmp_path / "big.dcmcr")],
                               env={"COLUMNS": "120"})
    assert shown.exit_code == 0, shown.output
    assert "128 x 128 (the 100 x 120 pair at 0.3, enlarged)" in shown.output
    assert "shrunk" not in shown.output


def test_the_command_line_offers_architecture_and_device_without_torch() -> None:
    """`dicomcr.models` names its architectures and devices without importing torch, so that the
    command line starts without it; the networks come when first asked for."""
    import subprocess
    import sys

    code = ("import sys, dicomcr.cli, dicomcr.models as m; assert 'torch' not in sys.modules; "
            "print(m.Architecture('resnet18'), m.Device('cuda')); from dicomcr.models import CNN3; "
            "print('torch' in sys.modules, CNN3.__name__)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["resnet18", "cuda", "True", "CNN3"]
