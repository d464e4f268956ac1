"""simulate-raters: label a server's stored images with the shapes world's rater, through the public API.

It stands in for human labellers (issue #5): it pages through `GET /images`, downloads each PNG from
`GET /images/{id}`, judges it against the prompt it was generated for (t2i_trainer.build.rater, with optional
label noise and skips, to test the paper's assumption of consistent feedback) and posts `POST /feedback
{image_id, label, rater}`. Images whose prompt the shapes world cannot parse are left alone and counted, as
are images this rater already rated (unless --again).

Usage (the light .venv is enough):
    .venv/bin/python -m t2i_scripts.eval.simulate_raters --url http://127.0.0.1:8080
    .venv/bin/python -m t2i_scripts.eval.simulate_raters --label-noise 0.1 --skip-rate 0.05 --limit 500
"""

import argparse
import io
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from PIL import Image

from t2i_trainer.build.rater import Rater
from t2i_trainer.build.shapes_world import parse_prompt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the t2i-align server")
    parser.add_argument("--rater", default="simulated", help="the `rater` name on each rating")
    parser.add_argument("--label-noise", type=float, default=0.0, help="share of labels flipped (0 to 1)")
    parser.add_argument("--skip-rate", type=float, default=0.0, help="share of images labelled skip (0 to 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and skips")
    parser.add_argument("--limit", type=int, default=0, help="rate at most this many images (0: all)")
    parser.add_argument("--again", action="store_true", help="also rate images this rater already rated")
    args = parser.parse_args(argv)
    for name in ("label_noise", "skip_rate"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1. Given: {getattr(args, name)}")
    if args.limit < 0:
        parser.error(f"--limit must be 0 or more. Given: {args.limit}")
    return args


def call(url: str, body: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        sys.exit(f"error: {url} answered {err.code}: {err.read().decode(errors='replace')}")
    except urllib.error.URLError as err:
        sys.exit(f"error: cannot reach {url}: {err.reason}")


def stored_images(base: str):
    after = None
    while True:
        query = {"limit": 200} | ({"after": after} if after else {})
        page = json.loads(call(f"{base}/images?{urllib.parse.urlencode(query)}"))
        yield from page["data"]
        if not page["has_more"]:
            return
        after = page["last_id"]


def already_rated(base: str, image_id: str, rater: str) -> bool:
    query = urllib.parse.urlencode({"image_id": image_id, "rater": rater, "limit": 1})
    return bool(json.loads(call(f"{base}/feedback?{query}"))["data"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = args.url.rstrip("/")
    rater = Rater(label_noise=args.label_noise, skip_rate=args.skip_rate, seed=args.seed)
    counts = {"good": 0, "bad": 0, "skip": 0, "not_shapes": 0, "already_rated": 0}
    for record in stored_images(base):
        if args.limit and sum(counts[label] for label in ("good", "bad", "skip")) >= args.limit:
            break
        try:
            prompt = parse_prompt(record["prompt"])
        except ValueError:
            counts["not_shapes"] += 1
            continue
        if not args.again and already_rated(base, record["id"], args.rater):
            counts["already_rated"] += 1
            continue
        image = Image.open(io.BytesIO(call(f"{base}/images/{urllib.parse.quote(record['id'])}")))
        label = rater.rate(image, prompt).label
        call(f"{base}/feedback", {"image_id": record["id"], "label": label, "rater": args.rater})
        counts[label] += 1
    print(json.dumps({"event": "done", **counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
