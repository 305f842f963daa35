"""Model factory and self-describing, safely loaded checkpoints."""

from __future__ import annotations

import pickle

import pytest
import torch

from pbu.checkpoint import CheckpointError, load_checkpoint, load_tensors, save_checkpoint
from pbu.models import build_model


@pytest.mark.parametrize(
    "arch,c,size,k",
    [
        ("small_cnn", 1, 28, 10),
        ("allcnn", 3, 32, 10),
        ("resnet18", 1, 28, 10),
        ("resnet50", 3, 32, 100),
        ("densenet121", 3, 32, 7),
        ("convnext_tiny", 3, 32, 5),
    ],
)
def test_factory_adapts_to_dataset(arch, c, size, k):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=k, in_channels=c, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, c, size, size))
    assert out.shape == (2, k)


# ------------------------------------------------------------------------------------------
# The stem of the torchvision archs (model.stem)
# ------------------------------------------------------------------------------------------

# (arch, stem, channels, size) -> side of the feature map entering the last stage's pooling,
# worked out by hand from torchvision's layers (None: the stem cannot process that size):
# ResNet imagenet: 28 -> conv 14 -> pool 7 -> 4 -> 2 -> 1; 32 -> 16 -> 8 -> 4 -> 2 -> 1.
# ResNet cifar: 28 -> 28 -> 14 -> 7 -> 4; 32 -> 32 -> 16 -> 8 -> 4.
# DenseNet imagenet: 28 -> 14 -> 7 -> 3 -> 1 -> 0 (three 2x2 average pools); 32 -> ... -> 1.
# DenseNet cifar: 28 -> 14 -> 7 -> 3; 32 -> 16 -> 8 -> 4.
# ConvNeXt imagenet (4x4 patches): 28 -> 7 -> 3 -> 1 -> 0; 32 -> 8 -> 4 -> 2 -> 1.
# ConvNeXt cifar (2x2 patches): 28 -> 14 -> 7 -> 3 -> 1; 32 -> 16 -> 8 -> 4 -> 2.
LAST_SIDE = {
    ("resnet18", "imagenet", 1, 28): 1,
    ("resnet18", "imagenet", 3, 32): 1,
    ("resnet18", "cifar", 1, 28): 4,
    ("resnet18", "cifar", 3, 32): 4,
    ("resnet50", "imagenet", 1, 28): 1,
    ("resnet50", "cifar", 3, 32): 4,
    ("densenet121", "imagenet", 1, 28): None,
    ("densenet121", "imagenet", 3, 32): 1,
    ("densenet121", "cifar", 1, 28): 3,
    ("densenet121", "cifar", 3, 32): 4,
    ("convnext_tiny", "imagenet", 1, 28): None,
    ("convnext_tiny", "imagenet", 3, 32): 1,
    ("convnext_tiny", "cifar", 1, 28): 1,
    ("convnext_tiny", "cifar", 3, 32): 2,
}


def _last_stage_input(model: torch.nn.Module, arch: str) -> torch.nn.Module:
    """The module whose output is the map the global pooling reduces."""
    if arch.startswith("resnet"):
        return model.layer4
    if arch.startswith("densenet"):
        return model.features.norm5
    return model.features[-1]  # convnext: the last stage


@pytest.mark.parametrize("arch,stem,c,size", sorted(LAST_SIDE))
def test_stem_layers_and_the_map_reaching_the_last_stage(arch, stem, c, size):
    from pbu.registry import last_stage_side

    want = LAST_SIDE[arch, stem, c, size]
    assert last_stage_side(arch, stem, size) == (want or 0)  # the config check's arithmetic
    if want is None:
        with pytest.raises(
            ValueError,
            match=f"{arch} with the {stem} stem cannot process {size}-pixel images.*use cifar",
        ):
            build_model(arch, num_classes=7, in_channels=c, image_size=size, stem=stem)
        return
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7, in_channels=c, image_size=size, stem=stem).eval()
    if arch.startswith("resnet") or arch.startswith("densenet"):
        conv, pool = (
            (model.conv1, model.maxpool)
            if arch.startswith("resnet")
            else (model.features.conv0, model.features.pool0)
        )
        assert conv.in_channels == c
        if stem == "imagenet":  # torchvision's 7x7 stride-2 conv and its 3x3 stride-2 max-pool
            assert (conv.kernel_size, conv.stride, conv.padding) == ((7, 7), (2, 2), (3, 3))
            assert isinstance(pool, torch.nn.MaxPool2d) and pool.stride == 2
        else:  # the small-image stem: 3x3 stride 1, no pool
            assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
            assert isinstance(pool, torch.nn.Identity)
    else:
        patchify = model.features[0][0]
        k = 4 if stem == "imagenet" else 2
        assert patchify.in_channels == c
        assert patchify.kernel_size == (k, k) and patchify.stride == (k, k)
    seen = []
    _last_stage_input(model, arch).register_forward_hook(lambda m, a, out: seen.append(out.shape))
    with torch.no_grad():
        logits = model(torch.randn(2, c, size, size))
    assert logits.shape == (2, 7)
    assert seen[-1][-2:] == (want, want)


def test_default_stem_is_torchvisions_and_a_single_stem_arch_refuses_one():
    m = build_model("resnet18", num_classes=10, in_channels=1, image_size=28)
    assert m.conv1.stride == (2, 2) and isinstance(m.maxpool, torch.nn.MaxPool2d)
    with pytest.raises(ValueError, match="small_cnn has a single stem"):
        build_model("small_cnn", num_classes=10, in_channels=1, image_size=28, stem="cifar")


def test_model_args_record_the_resolved_stem_of_torchvision_archs_only():
    from pbu.models import model_args
    from pbu.registry import DATASETS

    spec = DATASETS["mnist5k"]
    assert model_args("resnet18", spec) == {
        "num_classes": 10,
        "in_channels": 1,
        "image_size": 28,
        "stem": "imagenet",
    }
    assert model_args("resnet18", spec, "cifar")["stem"] == "cifar"
    assert "stem" not in model_args("small_cnn", spec)
    with pytest.raises(ValueError, match="small_cnn has a single stem"):
        model_args("small_cnn", spec, "imagenet")


def test_config_stem_one_name_or_a_mapping_per_arch():
    from pbu.registry import resolve_stem, stem_problem

    mapping = {"resnet18": "imagenet", "densenet121": "cifar"}
    assert resolve_stem("densenet121", mapping) == "cifar"
    assert (
        resolve_stem("resnet18", "cifar") == "cifar" and resolve_stem("small_cnn", "cifar") is None
    )
    assert stem_problem(["small_cnn", "resnet18", "densenet121"], mapping, 28) is None
    assert "no stem for resnet50" in stem_problem(["resnet50"], mapping, 28)
    assert "densenet121 with the imagenet stem cannot process 28-pixel" in stem_problem(
        ["densenet121"], "imagenet", 28
    )
    assert stem_problem(["densenet121"], "imagenet", 32) is None


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
    save_checkpoint(
        tmp_path / "m.pt",
        m,
        arch="small_cnn",
        model_args=args,
        hparams={"lr": 0.1},
        seed=3,
        meta={"role": "original"},
    )
    loaded, info = load_checkpoint(tmp_path / "m.pt", with_info=True)
    for (k, a), (_, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert info["arch"] == "small_cnn" and info["seed"] == 3 and info["hparams"] == {"lr": 0.1}
    assert info["pbu_version"] and info["model_args"] == args
    assert not loaded.training
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_checkpoint_rebuilds_the_stem_it_was_trained_with(tmp_path, stem):
    from pbu.models import model_args
    from pbu.registry import DATASETS

    args = model_args("resnet18", DATASETS["mnist5k"], stem)
    torch.manual_seed(2)
    m = build_model("resnet18", **args)
    save_checkpoint(tmp_path / "r.pt", m, arch="resnet18", model_args=args)
    loaded, info = load_checkpoint(tmp_path / "r.pt", with_info=True)
    assert info["model_args"]["stem"] == stem
    assert loaded.conv1.kernel_size == ((7, 7) if stem == "imagenet" else (3, 3))
    assert isinstance(
        loaded.maxpool, torch.nn.MaxPool2d if stem == "imagenet" else torch.nn.Identity
    )
    for (k, a), (_, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), loaded(x))
    # the recorded stem is what rebuilds it: the other stem's layers do not fit this state dict
    other = "cifar" if stem == "imagenet" else "imagenet"
    save_checkpoint(tmp_path / "w.pt", m, arch="resnet18", model_args={**args, "stem": other})
    with pytest.raises(CheckpointError, match="does not fit resnet18"):
        load_checkpoint(tmp_path / "w.pt")


@pytest.mark.parametrize("size,legacy", [(28, "cifar"), (96, "imagenet")])
def test_checkpoint_without_a_stem_loads_as_its_factory_built_it(tmp_path, size, legacy):
    """Checkpoints saved before the stem was recorded: the factory then chose the small-image
    stem up to 64 px and torchvision's above; they load as before, and the info says which."""
    args = {"num_classes": 10, "in_channels": 1, "image_size": size}
    torch.manual_seed(3)
    m = build_model("resnet18", **args, stem=legacy)
    save_checkpoint(tmp_path / "old.pt", m, arch="resnet18", model_args=args)
    loaded, info = load_checkpoint(tmp_path / "old.pt", with_info=True)
    assert info["model_args"] == {**args, "stem": legacy}
    assert loaded.conv1.stride == ((1, 1) if legacy == "cifar" else (2, 2))
    assert all(
        torch.equal(a, b) for a, b in zip(m.state_dict().values(), loaded.state_dict().values())
    )


def test_pretrain_command_records_the_stem_it_built(tmp_path, capsys):
    """The joint: `pbu pretrain --stem` builds that stem and its checkpoint records it."""
    import json

    from pbu.cli import main
    from pbu.data import DATASETS, TensorImages, save_prepared

    g = torch.Generator().manual_seed(0)
    data = TensorImages(
        DATASETS["mnist5k"],
        torch.randint(0, 256, (20, 1, 28, 28), generator=g, dtype=torch.uint8),
        torch.arange(20) % 10,
    )
    save_prepared(tmp_path / "d.pt", data, data)
    recipe = json.dumps(
        {
            "epochs": 1,
            "batch_size": 10,
            "optimizer": "adam",
            "lr": 1e-4,
            "weight_decay": 0.0,
            "channels_last": False,
        }
    )
    base = [
        "pretrain",
        "--data",
        str(tmp_path / "d.pt"),
        "--seed",
        "0",
        "--recipe",
        recipe,
        "--device",
        "cpu",
        "--quiet",
        "--out-info",
        str(tmp_path / "i.json"),
    ]
    assert (
        main(
            [*base, "--arch", "resnet18", "--stem", "cifar", "--out-model", str(tmp_path / "m.pt")]
        )
        == 0
    )
    model, info = load_checkpoint(tmp_path / "m.pt", with_info=True)
    assert info["model_args"]["stem"] == "cifar" and model.conv1.stride == (1, 1)
    assert (
        main(
            [*base, "--arch", "small_cnn", "--stem", "cifar", "--out-model", str(tmp_path / "s.pt")]
        )
        == 2
    )
    assert "small_cnn has a single stem" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()


def test_truncated_checkpoint_names_the_file(tmp_path):
    m = _model()
    p = tmp_path / "m.pt"
    save_checkpoint(
        p, m, arch="small_cnn", model_args={"num_classes": 10, "in_channels": 1, "image_size": 28}
    )
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
    torch.save(
        {"state_dict": {}, "arch": "small_cnn", "model_args": {}, "x": _Payload(str(marker))}, p
    )
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
    save_checkpoint(
        p, m, arch="small_cnn", model_args={"num_classes": 7, "in_channels": 1, "image_size": 28}
    )
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
