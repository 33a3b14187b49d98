import torch

from gimefive.checkpoint import load_model, read_metadata, save_weights
from gimefive.errors import GimefiveError
from gimefive.model import PAPER_PARAMETER_COUNT, GiMeFive, count_parameters

PAPER_KEYS = [f"{layer}{i}.{p}" for i in range(1, 6) for layer, ps in
              (("conv", ("weight", "bias")),
               ("bn", ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")))
              for p in ps] + [f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]
SHAPES = {"conv": [(64, 3), (128, 64), (256, 128), (512, 256), (1024, 512)],
          "fc": [(2048, 1024), (1024, 2048), (6, 1024)]}


def paper_state_dict() -> dict[str, torch.Tensor]:
    """A state dict built from the paper's names and shapes alone, not from our module."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for i, (out_c, in_c) in enumerate(SHAPES["conv"], start=1):
        state[f"conv{i}.weight"] = torch.randn(out_c, in_c, 3, 3, generator=g) * 0.05
        state[f"conv{i}.bias"] = torch.randn(out_c, generator=g) * 0.01
        state[f"bn{i}.weight"] = torch.rand(out_c, generator=g) + 0.5
        state[f"bn{i}.bias"] = torch.randn(out_c, generator=g) * 0.1
        state[f"bn{i}.running_mean"] = torch.randn(out_c, generator=g) * 0.1
        state[f"bn{i}.running_var"] = torch.rand(out_c, generator=g) + 0.5
        state[f"bn{i}.num_batches_tracked"] = torch.tensor(100)
    for i, (out_f, in_f) in enumerate(SHAPES["fc"], start=1):
        state[f"fc{i}.weight"] = torch.randn(out_f, in_f, generator=g) * 0.02
        state[f"fc{i}.bias"] = torch.zeros(out_f)
    return state


def test_parameter_count_matches_paper():
    assert count_parameters(GiMeFive()) == PAPER_PARAMETER_COUNT == 10_478_086


def test_state_dict_keys_are_the_papers():
    assert sorted(GiMeFive().state_dict()) == sorted(PAPER_KEYS)


def test_paper_pth_loads_unchanged(tmp_path):
    state = paper_state_dict()
    path = tmp_path / "best_GiMeFive.pth"
    torch.save(state, path)
    model, meta = load_model(path)
    assert meta == {}
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert not model.training
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 6)


def test_safetensors_roundtrip_keeps_metadata_and_fp16(tmp_path):
    model = GiMeFive().eval()
    path = save_weights(tmp_path / "w.safetensors", model, {"epochs": 3}, dtype=torch.float16)
    meta = read_metadata(path)
    assert meta["epochs"] == 3 and meta["classes"][4] == "disgust"
    assert meta["model"]["num_classes"] == 6
    loaded, _ = load_model(path)
    assert loaded.conv1.weight.dtype == torch.float32
    x = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x), atol=5e-2, rtol=5e-2)


def test_wrong_weights_name_missing_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(2)}, path)
    try:
        load_model(path)
    except GimefiveError as exc:
        assert "not GiMeFive weights" in str(exc) and "conv1.weight" in str(exc)
    else:
        raise AssertionError("loading foreign weights must fail")


def test_forward_with_keeps_conv5_at_4x4():
    x = torch.randn(1, 3, 64, 64)
    logits, kept = GiMeFive().eval().forward_with(x, keep=("conv4", "conv5"))
    assert logits.shape == (1, 6)
    assert kept["conv5"].shape == (1, 1024, 4, 4)
    assert kept["conv4"].shape == (1, 512, 8, 8)
