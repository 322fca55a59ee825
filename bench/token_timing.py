"""Time `verify_token` on genuine and forged tracking tokens: a forgery must not cost less the closer it is.

    .venv/bin/python bench/token_timing.py [--samples 2000] [--batch 200] [--smoke]

Cases: a valid click token; the same with the first or the last character of its MAC changed; truncated by
four characters; and a valid open token (a token moved to another purpose: `verify_token` accepts it, the
endpoint's kind check refuses it after). Each sample times `--batch` calls of one case with
`perf_counter_ns`; the cases take turns sample by sample, so drift in the machine's load hits them alike.

It prints, per case, the median ns per call and the interquartile range relative to that median (the noise),
then the spread: (slowest median - fastest median) / fastest median, over the forged MACs (first byte, last
byte, truncated: what an attacker could learn the MAC from) and over all cases. A genuine token costs a
little more than a forged one because its payload is decoded after the MAC matched; that tells an attacker
only what they already know (the token is genuine). The figure that matters is the forged-MAC spread, which
should be within the noise.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Final

from nurture.core.tracking import sign_token, verify_token
from nurture.errors import TrackingTokenError

KEY: Final = b"bench-token-timing-key-0123456789"
CLICK: Final = sign_token({"k": "c", "l": 4242, "d": 97, "u": "https://acmeflow.example/pricing"}, key=KEY)
OPEN: Final = sign_token({"k": "o", "l": 4242, "d": 97}, key=KEY)
FORGED: Final = ("mutated first byte", "mutated last byte", "truncated")


def _changed(token: str, at: int) -> str:
    replacement = "A" if token[at] != "A" else "B"
    return token[:at] + replacement + token[at + 1 :]


def cases() -> dict[str, str]:
    body, _, tag = CLICK.partition(".")
    return {
        "valid": CLICK,
        "mutated first byte": f"{body}.{_changed(tag, 0)}",
        "mutated last byte": f"{body}.{_changed(tag, len(tag) - 1)}",
        "truncated": CLICK[:-4],
        "wrong purpose": OPEN,
    }


def _verify(token: str) -> None:
    with contextlib.suppress(TrackingTokenError):
        verify_token(token, key=KEY)


def sample_ns(call: Callable[[str], None], token: str, batch: int) -> float:
    """ns per call over one batch."""
    started = time.perf_counter_ns()
    for _ in range(batch):
        call(token)
    return (time.perf_counter_ns() - started) / batch


def measure(samples: int, batch: int) -> dict[str, list[float]]:
    tokens = cases()
    for token in tokens.values():  # warm up: caches, the first allocations
        sample_ns(_verify, token, batch)
    timings: dict[str, list[float]] = {name: [] for name in tokens}
    for _ in range(samples):
        for name, token in tokens.items():
            timings[name].append(sample_ns(_verify, token, batch))
    return timings


def spread(medians: list[float]) -> float:
    return (max(medians) - min(medians)) / min(medians)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=2000, help="samples per case (default 2000)")
    parser.add_argument("--batch", type=int, default=200, help="calls per sample (default 200)")
    parser.add_argument("--smoke", action="store_true", help="a few samples: checks the script runs")
    args = parser.parse_args()
    if args.samples < 1 or args.batch < 1:
        parser.error("--samples and --batch must be at least 1")
    samples, batch = (20, 20) if args.smoke else (args.samples, args.batch)

    timings = measure(samples, batch)

    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(f"verify_token: {samples} samples x {batch} calls per case")
    print(f"{'case':<20} {'median ns/call':>15} {'IQR / median':>13}")
    for name, values in timings.items():
        q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
        print(f"{name:<20} {medians[name]:>15.0f} {(q3 - q1) / medians[name]:>12.1%}")
    print(f"spread over forged MACs ({', '.join(FORGED)}): {spread([medians[n] for n in FORGED]):.1%}")
    print(f"spread over all cases: {spread(list(medians.values())):.1%}")


if __name__ == "__main__":
    main()
