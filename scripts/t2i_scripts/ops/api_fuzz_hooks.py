"""schemathesis hooks for `api_fuzz` (loaded through SCHEMATHESIS_HOOKS): what the document's image fields
hold, so that schemathesis's valid data carries real images, and which ids exist, so that it names stored
things.

JSON bodies carry images as base64 strings of the custom format `image-base64`; forms carry them as files
whose `encoding.contentType` is `image/png` or `image/jpeg`. JSON Schema can say neither "a PNG" nor "a JPEG",
and without these every valid request would carry bytes that no decoder reads. Fields that name stored
things carry the formats `image-id`, `rating-id`, `job-id`, `job-event-id`, `model-version`, `key-id`,
`audit-id` and `reward-model`; `api_fuzz` stores a few of
each before the run and passes their ids in T2I_FUZZ_IDS. Invalid data is still schemathesis's own.
"""

from __future__ import annotations

import base64
import json
import os
import re

import schemathesis
from hypothesis import strategies as st

# A 1×1 grey PNG and a 1×1 grey JPEG: the smallest files each decoder reads.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)
JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAFA3PEY8MlBGQUZaVVBfeMiCeG5uePWvuZHI////////////////////////////////////////"
    "////////////wAALCAABAAEBAREA/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQR"
    "BRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4"
    "eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/9oACAEB"
    "AAA/AKVf/9k="
)

schemathesis.openapi.format(
    "image-base64",
    st.sampled_from(
        [
            base64.b64encode(PNG).decode(),
            base64.b64encode(JPEG).decode(),
            "data:image/png;base64," + base64.b64encode(PNG).decode(),
        ]
    ),
)
schemathesis.openapi.media_type("image/png", st.just(PNG))
schemathesis.openapi.media_type("image/jpeg", st.just(JPEG))

for name, ids in json.loads(os.environ.get("T2I_FUZZ_IDS", "{}")).items():
    if ids:
        schemathesis.openapi.format(name, st.sampled_from(ids))


def _form_properties(case) -> dict:
    """The form's property schemas of the case's multipart body ({} for any other body)."""
    if case.media_type != "multipart/form-data" or not isinstance(case.body, dict):
        return {}
    for body in case.operation.body:
        if body.media_type == case.media_type:
            return body.form_properties
    return {}


@schemathesis.hook
def map_case(ctx, case):
    """Schemathesis (4.32.5) builds one positive multipart case by filling every required part its custom
    media-type strategies do not cover with "" whatever the part's schema says (coverage phase,
    `_generate_multipart_body_from_custom_strategies`): a blank `prompt` that the document's `minLength: 1`
    and `pattern: \\S` rule out, so the server's 422 was counted against it. That case gets the shortest value
    its schema allows instead; every other case is left as generated."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return case
    for name, schema in _form_properties(case).items():
        minimum = schema.get("minLength", 0) if isinstance(schema, dict) else 0
        if case.body.get(name) == "" and minimum > 0:
            value = "a" * minimum
            if re.search(schema.get("pattern", ""), value):
                case.body[name] = value
    return case


_MISSING = object()


def _value_at(body, path) -> object:
    """The value at a mutation's path (property names from the body down), or _MISSING."""
    for key in path:
        if isinstance(body, dict) and key in body:
            body = body[key]
        elif isinstance(body, list) and isinstance(key, int) and 0 <= key < len(body):
            body = body[key]
        else:
            return _MISSING
    return body


def formats_negated_with_null(case) -> bool:
    """Whether every mutation of a negative case only dropped a `format` and left null there. Schemathesis
    (4.32.5) drops `format` to negate it and lets the validator judge the draw, but a nullable field with a
    custom format (`"type": ["string", "null"], "format": "model-version"`) drew null, which every format
    accepts (formats constrain strings only), and the server's 201 for it was counted as invalid data
    accepted."""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    mutations = getattr(data, "mutations", ()) or ()
    return bool(mutations) and all(
        set(mutation.keywords) == {"format"} and _value_at(case.body, mutation.path) is None
        for mutation in mutations
    )


@schemathesis.hook
def filter_case(ctx, case):
    """Negative cases that are valid after all are not sent: those whose only mutation left null where a
    nullable field's format was negated (`formats_negated_with_null`), and, in forms, those whose only
    violation is an empty array. A form carries an array as one part per element, so an empty array is no
    part at all: "`model` is an empty array" reaches the server as the valid form without `model`, and its
    2xx was counted as invalid data accepted; a JSON body's empty arrays are sent."""
    meta = case.meta
    if meta is None or meta.generation.mode.is_positive:
        return True
    if formats_negated_with_null(case):
        return False
    if not _form_properties(case):
        return True
    return not any(value == [] for value in case.body.values())


@schemathesis.deserializer("application/x-ndjson")
def ndjson(ctx, response):
    """`GET /feedback/export` answers NDJSON, one object per line, and the document gives the schema of one
    line
    (OpenAPI 3.1 has no keyword for a stream's items). Every line is parsed and checked against that schema
    here, and the first is returned for schemathesis's own check; an empty export has nothing to check."""
    import jsonschema_rs

    lines = [json.loads(line) for line in response.content.splitlines() if line.strip()]
    if not lines:
        raise NotImplementedError("an empty NDJSON stream")
    declared = ctx.operation.definition.raw["responses"][str(response.status_code)]["content"]
    item = declared["application/x-ndjson"]["schema"]
    validator = jsonschema_rs.validator_for({**ctx.operation.schema.raw_schema, **item})
    for number, line in enumerate(lines, 1):
        errors = [error.message for error in validator.iter_errors(line)]
        if errors:
            raise ValueError(f"line {number} does not match its schema: {'; '.join(errors)}")
    return lines[0]
