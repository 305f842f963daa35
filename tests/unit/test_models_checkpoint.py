"""Model factory and self-describing, safely loaded checkpoints."""

from __future__ import annotations

import io
import pickle
import zipfile

import pytest
import torch

from pbu.checkpoint import CheckpointError, load_checkpoint, load_tensors, save_checkpoint
from pbu.models import build_model


@pytest.mark.parametrize(
    "arch,c,size,k",
    [("small_cnn", 1, 28, 10), ("allcnn", 3, 32, 10), ("resnet18", 1, 28, 10),
     ("resnet50", 3, 32, 100), ("densenet121", 3, 32, 7), ("convnext_tiny", 3, 32, 5)],
)
def test_factory_adapts_to_dataset(arch, c, size, k):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=k, in_channels=c, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, c, size, size))
    assert out.shape == (2, k)


def test_resnet_small_stem_keeps_resolution():
    m = build_model("resnet18", num_classes=10, in_channels=3, image_size=32)
    assert m.conv1.stride == (1, 1) and isinstance(m.maxpool, torch.nn.Identity)
    big = build_model("resnet18", num_classes=10, in_channels=3, image_size=224)
    assert big.conv1.stride == (2, 2)


def test_unknown_arch_and_weights_are_named():
    with pytest.raises(KeyError, match="unknown arch 'resnet19'"):
        build_model("resnet19", num_classes=10, in_channels=1, image_size=28)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("small_cnn", num_classes=10, in_channels=1, image_size=28, weights="imagenet")


def test_imagenet_weights_offline_gives_clear_error(tmp_path, monkeypatch):
    """Here (no internet, empty cache) the ImageNet path must fail with a message naming it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="could not fetch ImageNet weights for resnet18"):
        build_model("resnet18", num_classes=10, in_channels=3, image_size=32, weights="imagenet")


def _model():
    torch.manual_seed(1)
    return build_model("small_cnn", num_classes=10, in_channels=1, image_size=28)


def test_checkpoint_roundtrip_carries_its_description(tmp_path):
    m = _model()
    args = {"num_classes": 10, "in_channels": 1, "image_size": 28}
    save_checkpoint(tmp_path / "m.pt", m, arch="small_cnn", model_args=args,
                    hparams={"lr": 0.1}, seed=3, meta={"role": "original"})
    loaded, info = load_checkpoint(tmp_path / "m.pt", with_info=True)
    for (k, a), (_, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert info["arch"] == "small_cnn" and info["seed"] == 3 and info["hparams"] == {"lr": 0.1}
    assert info["pbu_version"] and info["model_args"] == args
    assert not loaded.training
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_checkpoint_names_the_file(tmp_path):
    m = _model()
    p = tmp_path / "m.pt"
    save_checkpoint(p, m, arch="small_cnn",
                    model_args={"num_classes": 10, "in_channels": 1, "image_size": 28})
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"m\.pt.*corrupt or truncated"):
        load_checkpoint(p)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "arch": "small_cnn", "model_args": {}, "x": _Payload(str(marker))},
               p)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="evil.pt.*refused"):
        load_checkpoint(p)
    assert not marker.exists()
    # A plain pickle file (not even torch's zip format) is refused too.
    q = tmp_path / "evil2.pt"
    q.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError):
        load_tensors(q)
    assert not marker.exists()


def test_state_dict_of_another_arch_is_a_clear_error(tmp_path):
    m = _model()
    p = tmp_path / "m.pt"
    save_checkpoint(p, m, arch="small_cnn",
                    model_args={"num_classes": 7, "in_channels": 1, "image_size": 28})
    with pytest.raises(CheckpointError, match="does not fit small_cnn"):
        load_checkpoint(p)


@pytest.mark.parametrize("arch,c,size", [("small_cnn", 1, 28), ("allcnn", 3, 32)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fuse_for_inference_is_the_same_map(arch, c, size, channels_last):
    from pbu.models import fuse_for_inference

    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=c, image_size=size)
    for m in model.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-1, 1)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert model.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    convs = [m.weight for m in fused.modules() if isinstance(m, torch.nn.Conv2d)]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert convs and all(w.is_contiguous(memory_format=fmt) for w in convs)
    x = torch.randn(6, c, size, size)
    model.eval()
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
