"""The trainer's input contract: `t2i_trainer/jobs/finetune.schema.json`, generated from the service's Rust
`TrainerSpec` (`make schemas`), against what `finetune.parse_spec` accepts.

Every field the schema names must be one the trainer knows, and the reverse; every value the schema allows at
its bounds and in its enums must parse; every value just past a bound, outside an enum, of the wrong type, or
null where the schema forbids null must be refused with a message naming the field. So neither side can change
the contract without this test (or the Rust one that holds the schema to the type) failing.
"""

import dataclasses
import json
import math
from pathlib import Path

import pytest

from repo_files import require_folder

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "t2i_trainer" / "jobs" / "finetune.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def variants(schema: dict) -> list[dict]:
    """The object schemas of a (possibly nested) oneOf."""
    if "oneOf" not in schema:
        return [schema]
    return [leaf for option in schema["oneOf"] for leaf in variants(option)]


def types_of(prop: dict) -> set[str]:
    if "oneOf" in prop:
        return {kind for option in prop["oneOf"] for kind in types_of(option)}
    kind = prop.get("type")
    return set(kind) if isinstance(kind, list) else {kind}


def schema_text(prop: dict) -> str:
    return prop.get("description", "")


def enum_of(prop: dict) -> list | None:
    if "oneOf" in prop:
        for option in prop["oneOf"]:
            if "enum" in option:
                return option["enum"]
    return prop.get("enum")


@pytest.fixture
def tiny_base(tiny_sd) -> Path:
    return require_folder(tiny_sd / "diffusers")


@pytest.fixture
def valid(tiny_base, tmp_path) -> dict:
    """A spec with every required field of the schema, at values the trainer accepts."""
    samples = tmp_path / "samples.jsonl"
    samples.write_text("")
    return {
        "base": str(tiny_base),
        "out": str(tmp_path / "out"),
        "samples": str(samples),
        "pretrain": {"kind": "shapes_world", "images": 16},
        "beta": 1.0,
        "learning_rate": 1e-4,
        "lr_schedule": "cosine",
        "steps": 10,
        "batch_size": 4,
        "pretrain_fraction": 0.5,
        "train_text_encoder": False,
        "ema_decay": 0.0,
        "caption_dropout": 0.1,
        "seed": 0,
        "threads": 1,
        "log_every": 1,
    }


def test_the_schema_and_the_trainer_name_the_same_fields(trainer_packages, schema):
    from t2i_trainer.jobs import finetune

    fields = {field.name: field for field in dataclasses.fields(finetune.Spec)}
    assert set(schema["properties"]) == set(fields)
    assert schema["additionalProperties"] is False
    without_default = {
        name
        for name, field in fields.items()
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    }
    missing = without_default - set(schema["required"])
    assert not missing, f"fields the trainer requires are optional in the schema: {missing}"


def test_a_spec_with_the_schemas_required_fields_parses(trainer_packages, schema, valid):
    from t2i_trainer.jobs import finetune

    assert set(valid) == set(schema["required"])
    finetune.parse_spec(valid)


def test_numbers_are_accepted_at_their_bounds_and_refused_past_them(
    trainer_packages, schema, valid, tmp_path
):
    from t2i_trainer.jobs import finetune

    checked = 0
    for name, prop in schema["properties"].items():
        if "minimum" not in prop:
            continue
        integer = "integer" in types_of(prop)
        low, high = prop["minimum"], prop["maximum"]
        # batch_size 1 leaves no row for one of the terms at pretrain_fraction 0.5: a rule across fields.
        others = {"pretrain_fraction": 0.0} if name == "batch_size" else {}
        for edge in (low, high):
            spec = {**valid, **others, name: edge, "out": str(tmp_path / f"out-{name}-{edge}")}
            try:
                finetune.parse_spec(spec)
            except finetune.SpecError as error:
                # The one rule across fields, which the schema states in words: each term keeps a row.
                assert "leaves no row" in str(error) and "pretrain_fraction" in schema_text(prop), error
        step = 1 if integer else max(abs(high) * 1e-3, 1e-6)
        for outside in (high + step, low - (1 if integer else max(abs(low) * 0.5, 1e-6))):
            with pytest.raises(finetune.SpecError, match=f"`{name}`"):
                finetune.parse_spec({**valid, **others, name: outside})
        if not integer:
            with pytest.raises(finetune.SpecError, match=f"`{name}`"):
                finetune.parse_spec({**valid, name: math.nan})
        checked += 1
    assert checked >= 10


def test_enums_booleans_and_nulls_follow_the_schema(trainer_packages, schema, valid):
    from t2i_trainer.jobs import finetune

    for name, prop in schema["properties"].items():
        values = enum_of(prop)
        if values is not None:
            for value in values:
                finetune.parse_spec({**valid, name: value})
            with pytest.raises(finetune.SpecError, match=f"`{name}`"):
                finetune.parse_spec({**valid, name: "no-such-value"})
        kinds = types_of(prop)
        if "boolean" in kinds:
            finetune.parse_spec({**valid, name: True})
            with pytest.raises(finetune.SpecError, match=f"`{name}`"):
                finetune.parse_spec({**valid, name: "yes"})
        if name in schema["required"] or name == "pretrain":
            continue
        if "null" in kinds:
            finetune.parse_spec({**valid, name: None})
        else:
            with pytest.raises(finetune.SpecError, match=f"`{name}`"):
                finetune.parse_spec({**valid, name: None})


def test_unknown_fields_are_refused(trainer_packages, valid):
    from t2i_trainer.jobs import finetune

    with pytest.raises(finetune.SpecError, match="unknown field `no_such_field`"):
        finetune.parse_spec({**valid, "no_such_field": 1})


def test_each_pretrain_kind_takes_exactly_the_schemas_fields(trainer_packages, schema, valid, tmp_path):
    from t2i_trainer.jobs import finetune

    kinds = variants(schema["properties"]["pretrain"])
    assert sorted(variant["properties"]["kind"]["enum"][0] for variant in kinds) == ["folder", "shapes_world"]
    folder = tmp_path / "pretrain"
    folder.mkdir()
    examples = {"images": 8, "count_noise": 0.25, "path": str(folder)}
    for variant in kinds:
        kind = variant["properties"]["kind"]["enum"][0]
        pretrain = {name: examples[name] for name in variant["properties"] if name != "kind"}
        finetune.parse_spec({**valid, "pretrain": {"kind": kind, **pretrain}})
        with pytest.raises(finetune.SpecError, match="pretrain"):
            finetune.parse_spec({**valid, "pretrain": {"kind": kind, **pretrain, "extra": 1}})
        for name, prop in variant["properties"].items():
            if "maximum" in prop:
                past = {**pretrain, "kind": kind, name: prop["maximum"] * 2}
                with pytest.raises(finetune.SpecError, match=f"pretrain.{name}"):
                    finetune.parse_spec({**valid, "pretrain": past})
    with pytest.raises(finetune.SpecError, match="pretrain.kind"):
        finetune.parse_spec({**valid, "pretrain": {"kind": "no-such-kind"}})
