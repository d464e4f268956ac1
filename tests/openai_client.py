"""The official `openai` package against t2i-align's /v1/images/generations and /v1/images/edits (run by
tests/reward_api.rs).

Usage: python tests/openai_client.py http://127.0.0.1:PORT/v1
"""

import base64
import io
import sys

from openai import BadRequestError, OpenAI
from PIL import Image


def main(base_url: str) -> int:
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    result = client.images.generate(
        model="shapes-sd",
        prompt="two blue stars on a white background",
        n=2,
        size="64x64",
        response_format="b64_json",
        user="openai-client-test",
        extra_body={"best_of": 2},
    )
    assert result.created > 1_700_000_000, result.created
    assert len(result.data) == 2, result.data
    for item in result.data:
        image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert image.format == "PNG" and image.size == (64, 64), (image.format, image.size)

    try:
        client.images.generate(prompt="a red circle", n=100, response_format="b64_json")
    except BadRequestError as err:
        assert err.status_code == 400, err.status_code
        error = err.body.get("error", err.body) if isinstance(err.body, dict) else {}
        assert error.get("param") == "n", err.body
        assert error.get("type") == "invalid_request_error", err.body
    else:
        raise AssertionError("n=100 should have been refused with a 400")
    # An edit is img2img from the sent image, at its own size unless `size` says otherwise.
    start = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(start, format="PNG")
    edited = client.images.edit(
        model="shapes-sd",
        image=("start.png", start.getvalue(), "image/png"),
        prompt="a red circle",
        n=1,
        response_format="b64_json",
        extra_body={"strength": 0.5},
    )
    assert len(edited.data) == 1, edited.data
    image = Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json)))
    assert image.size == (64, 48), image.size
    try:
        client.images.edit(
            image=("start.png", start.getvalue(), "image/png"),
            mask=("mask.png", start.getvalue(), "image/png"),
            prompt="a red circle",
        )
    except BadRequestError as err:
        error = err.body.get("error", err.body) if isinstance(err.body, dict) else {}
        assert error.get("param") == "mask", err.body
    else:
        raise AssertionError("a mask should have been refused with a 400")
    print("openai client: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
