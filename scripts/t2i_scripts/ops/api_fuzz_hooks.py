"""schemathesis hooks for `api_fuzz` (loaded through SCHEMATHESIS_HOOKS): what the document's image fields
hold, so that schemathesis's valid data carries real images, and which ids exist, so that it names stored
things.

JSON bodies carry images as base64 strings of the custom format `image-base64`; forms carry them as files
whose `encoding.contentType` is `image/png` or `image/jpeg`. JSON Schema can say neither "a PNG" nor "a JPEG",
and without these every valid request would carry bytes that no decoder reads. Fields that name stored
things carry the formats `image-id`, `rating-id`, `job-id`, `job-event-id`, `model-version` and
`reward-model`; `api_fuzz` stores a few of
each before the run and passes their ids in T2I_FUZZ_IDS. Invalid data is still schemathesis's own.
"""

from __future__ import annotations

import base64
import json
import os

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
