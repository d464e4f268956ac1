"""models/tiny-sd-legacy must be models/tiny-sd with only the input types changed."""

from t2i_trainer.build.onnx_contract import (
    ONNX_PARTS,
    build_legacy_copy,
    check_legacy_matches,
    describe_exports,
)


def inputs_of(contract: dict, part: str) -> dict:
    return {value["name"]: (value["type"], value["shape"]) for value in contract[part]["inputs"]}


def test_optimum_contract(tiny_sd):
    contract = describe_exports(tiny_sd)
    assert inputs_of(contract, "text_encoder") == {
        "input_ids": ("tensor(int64)", ["batch_size", "sequence_length"])
    }
    assert inputs_of(contract, "unet") == {
        "sample": ("tensor(float)", ["batch_size", 4, "height", "width"]),
        "timestep": ("tensor(float)", []),
        "encoder_hidden_states": ("tensor(float)", ["batch_size", "sequence_length", 32]),
    }
    assert inputs_of(contract, "vae_decoder") == {
        "latent_sample": ("tensor(float)", ["batch_size", 4, "latent_height", "latent_width"])
    }
    assert [output["name"] for output in contract["text_encoder"]["outputs"]] == [
        "last_hidden_state",
        "pooler_output",
    ]
    assert [output["name"] for output in contract["unet"]["outputs"]] == ["out_sample"]
    assert [output["name"] for output in contract["vae_decoder"]["outputs"]] == ["sample"]
    assert [output["name"] for output in contract["vae_encoder"]["outputs"]] == ["latent_parameters"]


def test_legacy_contract_differs_only_in_timestep_and_input_ids(tiny_sd, tiny_sd_legacy):
    modern = describe_exports(tiny_sd)
    legacy = describe_exports(tiny_sd_legacy)
    assert inputs_of(legacy, "unet")["timestep"] == ("tensor(int64)", ["batch_size"])
    assert inputs_of(legacy, "text_encoder")["input_ids"][0] == "tensor(int32)"
    for part in ONNX_PARTS:
        assert modern[part]["outputs"] == legacy[part]["outputs"]
        retyped = {"timestep", "input_ids"}
        assert {k: v for k, v in inputs_of(modern, part).items() if k not in retyped} == {
            k: v for k, v in inputs_of(legacy, part).items() if k not in retyped
        }


def test_legacy_outputs_equal_original(tiny_sd, tiny_sd_legacy):
    check_legacy_matches(tiny_sd, tiny_sd_legacy, seed=7, timesteps=(1, 251, 500, 999))


def test_committed_legacy_copy_is_what_the_script_builds(tiny_sd, tiny_sd_legacy, tmp_path):
    rebuilt = tmp_path / "legacy"
    build_legacy_copy(tiny_sd, rebuilt)

    def files(root):
        return sorted(path.relative_to(root) for path in root.rglob("*") if path.is_file())

    assert files(tiny_sd_legacy) == files(rebuilt)
    for relative in files(rebuilt):
        assert (rebuilt / relative).read_bytes() == (tiny_sd_legacy / relative).read_bytes(), relative
