"""The two references of bench/send_throughput.py, each run in K processes of its own (as the workers are):

  ceiling  a bare aiosmtplib loop sending one pre-built ~10 KB message over C connections;
  floor    a bare loop that renders each lead's due step (same catalog, renderer and template context as a
           worker), builds the MIME message with `core.message.compose` and sends it over C connections:
           no queue, no database, no tracking links.

The parent starts the K children, waits until each has loaded what it needs and says `ready`, tells them all
`go`, and times from there until the last one says `done`. As a child:

    python bench/send_refs.py --child floor|ceiling --port P --connections C --part I/K --jobs FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiosmtplib
from common import ROOT
from tick_drain import prebuilt_message

from nurture.catalog import Catalog, load_catalog
from nurture.core.context import LeadProfile, owner_of, sender_as_rep, template_context
from nurture.core.message import compose
from nurture.core.tracking import message_id_for, unsubscribe_url
from nurture.ports import OutgoingEmail, Renderer

BASE_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True)
class Reference:
    rate: float  # emails/s
    cpu_ms: float  # CPU per email, all processes


def run_references(
    *, processes: int, connections: int, port: int, jobs_file: Path, secret: str
) -> tuple[Reference, Reference]:
    """Return the ceiling and the floor."""
    count = len(json.loads(jobs_file.read_text(encoding="utf-8")))
    found = []
    for kind in ("ceiling", "floor"):
        seconds, cpu_s = _timed_children(kind, processes, connections, port, jobs_file, secret)
        found.append(Reference(count / seconds, 1000 * cpu_s / count))
    return found[0], found[1]


def _timed_children(
    kind: str, processes: int, connections: int, port: int, jobs: Path, secret: str
) -> tuple[float, float]:
    script = Path(__file__).resolve()
    children = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                "--child",
                kind,
                "--port",
                str(port),
                "--connections",
                str(connections),
                "--part",
                f"{part}/{processes}",
                "--jobs",
                str(jobs),
                "--secret",
                secret,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for part in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise SystemExit(f"the {kind} reference did not start")
        started = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        cpu_s = 0.0
        for child in children:
            assert child.stdout is not None
            done = child.stdout.readline().split()
            if not done or done[0] != "done":
                raise SystemExit(f"the {kind} reference failed")
            cpu_s += float(done[2])
        return time.perf_counter() - started, cpu_s
    finally:
        for child in children:
            child.wait(timeout=60)


# --- in a child -------------------------------------------------------------------------------------------


def _floor_messages(jobs: Sequence[dict[str, Any]], catalog: Catalog, renderer: Renderer, key: bytes) -> Any:
    """Yield each job's message, rendered and composed when it is taken (so the work is inside the timing)."""
    now = datetime.now(UTC)
    for job in jobs:
        campaign = catalog.campaigns[job["campaign_id"]]
        step = campaign.step(job["step_id"])
        assert step is not None
        raw = dict(job["profile"])
        profile = LeadProfile(**{**raw, "tags": MappingProxyType(raw["tags"])})
        owner = owner_of(profile, catalog.reps, sender_as_rep(campaign.sender.from_address))
        unsubscribe = unsubscribe_url(
            BASE_URL, lead_id=job["lead_id"], delivery_id=job["delivery_id"], key=key
        )
        context = template_context(
            profile,
            owner=owner,
            campaign=campaign,
            step=step,
            unsubscribe_url=unsubscribe,
            postal_address=campaign.sender.postal_address or "",
        )
        rendered = renderer.render_step(campaign.id, step.id, context)
        domain = parseaddr(campaign.sender.from_address)[1].rpartition("@")[2]
        yield compose(
            rendered=rendered,
            sender=campaign.sender,
            to_address=profile.email,
            to_name=" ".join(p for p in (profile.first_name, profile.last_name) if p) or None,
            reply_to=None,
            message_id=message_id_for(job["delivery_id"], domain=domain, key=key),
            unsubscribe_url=unsubscribe,
            unsubscribe_mailto=None,
            campaign_id=campaign.id,
            step_id=step.id,
            sent_date=now,
        )


def _ceiling_messages(count: int) -> Any:
    data = prebuilt_message(10)
    message = OutgoingEmail(
        "<ceiling@bench.example>", "growth@acmeflow.example", ("lead@bench.example",), data
    )
    return (message for _ in range(count))


async def _send_all(port: int, connections: int, messages: Any) -> int:
    sent = 0

    async def sender() -> None:
        nonlocal sent
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30, start_tls=False)
        await client.connect()
        try:
            for message in messages:  # one generator shared by all connections: each takes the next
                await client.sendmail(message.envelope_from, list(message.recipients), message.data)
                sent += 1
        finally:
            await client.quit()

    await asyncio.gather(*(sender() for _ in range(connections)))
    return sent


def child(args: argparse.Namespace) -> None:
    part, parts = (int(x) for x in args.part.split("/"))
    jobs = json.loads(Path(args.jobs).read_text(encoding="utf-8"))[part::parts]
    if args.child == "floor":
        catalog = load_catalog(
            campaigns_dir=ROOT / "campaigns", templates_dir=ROOT / "templates", reps_file=ROOT / "reps.yaml"
        )
        renderer = catalog.renderer()
        for warm in _floor_messages(jobs[:20], catalog, renderer, args.secret.encode()):
            del warm  # compile the templates before the clock starts, as a running worker has
        messages = _floor_messages(jobs, catalog, renderer, args.secret.encode())
    else:
        messages = _ceiling_messages(len(jobs))
    print("ready", flush=True)
    sys.stdin.readline()
    cpu_started = time.process_time()
    sent = asyncio.run(_send_all(args.port, args.connections, messages))
    print(f"done {sent} {time.process_time() - cpu_started:.4f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", choices=("floor", "ceiling"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--part", required=True)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--secret", required=True)
    child(parser.parse_args())
