"""Summarise a py-spy profile of the drain: the share of samples per kind of work.

Reads py-spy's raw (collapsed-stack) output, as written by `bench/tick_drain.py --profile PATH`:

    .venv/bin/python bench/profile_summary.py PATH [--top 15]

Each sample goes to the first category found walking its stack from the innermost frame outwards; the event
loop and thread hand-off count only when no other category is on the stack (SQLAlchemy's async calls run in
greenlets, whose frames py-spy reports without the frames of the coroutine that awaited them).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path
from typing import Final

CATEGORIES: Final = (
    ("render: CSS inlining (css_inline)", ("_inline_css",)),
    ("render: HTML to text (inscriptis)", ("inscriptis", "_html_to_text")),
    ("render: Jinja templates", ("jinja2", ".j2", "<template>", "nurture/render.py")),
    ("compose the MIME message (email)", ("nurture/core/message.py", "email/")),
    ("context, headers, tracking tokens", ("build_message", "core/tracking.py", "core/context.py")),
    ("SMTP (aiosmtplib)", ("aiosmtplib", "nurture/transports/smtp.py")),
    (
        "database (SQLAlchemy, asyncpg, pool)",
        ("sqlalchemy", "asyncpg", "aiosqlite", "sqlite3", "nurture/db/"),
    ),
    ("deliver flow and core checks", ("nurture/flows/deliver.py", "nurture/core/")),
    ("dramatiq worker and consumer threads", ("dramatiq/worker.py", "dramatiq/broker", "redis/")),
)
LOOP: Final = (
    "event loop, futures, thread hand-off",
    ("asyncio/", "threading.py", "concurrent/", "dramatiq/"),
)


def categorise(frames: list[str]) -> str:
    for rules in (CATEGORIES, (LOOP,)):
        for frame in reversed(frames):
            for name, needles in rules:
                if any(needle in frame for needle in needles):
                    return name
    return "other (native code without Python frames, imports)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile", type=Path, help="py-spy raw output (one `stack count` per line)")
    parser.add_argument("--top", type=int, default=15, help="also list the N frames with most own samples")
    args = parser.parse_args()

    by_category: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        frames = stack.split(";")
        total += samples
        by_category[categorise(frames)] += samples
        own[re.sub(r":\d+\)$", ")", frames[-1]) or "(no Python frame)"] += samples
    if not total:
        raise SystemExit(f"{args.profile}: no samples")
    print(f"{total:,} samples")
    for name, samples in by_category.most_common():
        print(f"  {100 * samples / total:5.1f}%  {name}")
    if args.top:
        print(f"frames with the most own samples (top {args.top}):")
        for frame, samples in own.most_common(args.top):
            print(f"  {100 * samples / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
