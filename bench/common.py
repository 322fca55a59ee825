"""Shared pieces of the benchmark scripts: synthetic leads, throwaway databases, the SMTP sink process, and
the printing of medians.

Imported by the scripts in this folder as `common` (each script's folder is first on `sys.path`).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from nurture.core.lead import PROFILE_FIELDS
from nurture.db.engine import Database
from nurture.db.migrate import upgrade

ROOT: Final = Path(__file__).resolve().parents[1]
PG_ADMIN_URL: Final = os.environ.get(
    "NURTURE_BENCH_POSTGRES",
    os.environ.get("NURTURE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
)
COLUMNS: Final = (
    "email",
    *PROFILE_FIELDS,
    "grade",
    "stage",
    "source",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "x_field_1",
)


# --- synthetic leads ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Region:
    country: str
    zones: tuple[str, ...]
    dial: str
    owner: str
    first: tuple[tuple[str, str], ...]  # (as written, ASCII for the address)
    last: tuple[tuple[str, str], ...]
    companies: tuple[tuple[str, str], ...]  # (name, mail domain)
    titles: tuple[str, ...]


REGIONS: Final = (
    Region(
        "US",
        ("America/New_York", "America/Chicago", "America/Los_Angeles"),
        "+1",
        "jordan.blake@acmeflow.example",
        (("Tyler", "tyler"), ("Jasmine", "jasmine"), ("Megan", "megan"), ("Marcus", "marcus")),
        (("Carter", "carter"), ("Kim", "kim"), ("O'Brien", "obrien"), ("Nguyen", "nguyen")),
        (
            ("Summit Precision Manufacturing", "summit-precision.example"),
            ("Lakeside Engineering", "lakeside.example"),
        ),
        ("Operations Manager", "VP Operations", "Director of Supply Chain"),
    ),
    Region(
        "BR",
        ("America/Sao_Paulo",),
        "+55",
        "jordan.blake@acmeflow.example",
        (("João", "joao"), ("Maria", "maria"), ("Gabriel", "gabriel"), ("Luísa", "luisa")),
        (("Silva", "silva"), ("Costa", "costa"), ("Gonçalves", "goncalves")),
        (
            ("Logística Atlântica Ltda.", "logatlantica.example"),
            ("Transportes Rápido Sul", "rapidosul.example"),
        ),
        ("Diretoria de Operações", "Head de Supply Chain"),
    ),
    Region(
        "DE",
        ("Europe/Berlin",),
        "+49",
        "katrin.vogel@acmeflow.example",
        (("Jürgen", "juergen"), ("Felix", "felix"), ("Anja", "anja"), ("Björn", "bjoern")),
        (("Wagner", "wagner"), ("Hoffmann", "hoffmann"), ("Müller", "mueller"), ("Bauer", "bauer")),
        (
            ("Rheinland Logistik AG", "rheinland-logistik.example"),
            ("Schwarzwald Präzision GmbH", "sw-praez.example"),
        ),
        ("Leitung Logistik", "Head of Supply Chain", "Bereichsleitung Produktion"),
    ),
    Region(
        "GB",
        ("Europe/London",),
        "+44",
        "katrin.vogel@acmeflow.example",
        (("Oliver", "oliver"), ("Amelia", "amelia"), ("Harry", "harry")),
        (("Hughes", "hughes"), ("Patel", "patel"), ("Evans", "evans")),
        (("Thames Freight Ltd", "thamesfreight.example"), ("Northern Components plc", "northcomp.example")),
        ("Operations Director", "Head of Logistics"),
    ),
    Region(
        "JP",
        ("Asia/Tokyo",),
        "+81",
        "lin.chen@acmeflow.example",
        (("健太", "kenta"), ("美咲", "misaki"), ("翔", "sho"), ("由美", "yumi")),
        (("高橋", "takahashi"), ("田中", "tanaka"), ("中村", "nakamura"), ("佐藤", "sato")),
        (("株式会社さくら物流", "sakura-butsuryu.example"), ("東和精機株式会社", "towa-seiki.example")),
        ("生産管理課長", "SCM推進室 室長", "執行役員 COO"),
    ),
    Region(
        "TW",
        ("Asia/Taipei",),
        "+886",
        "lin.chen@acmeflow.example",
        (("淑芬", "shufen"), ("志豪", "chihhao"), ("俊傑", "chunchieh"), ("宗翰", "tsunghan")),
        (("李", "lee"), ("張", "chang"), ("陳", "chen")),
        (
            ("永豐冷鏈物流股份有限公司", "yongfeng-coldchain.example"),
            ("新竹電子零件股份有限公司", "hsinchu.example"),
        ),
        ("資訊長", "營運經理", "Operations Manager"),
    ),
    Region(
        "AE",
        ("Asia/Dubai",),
        "+971",
        "priya.nair@acmeflow.example",
        (("مريم", "mariam"), ("ليلى", "layla"), ("Omar", "omar")),
        (("النعيمي", "alnuaimi"), ("الفلاسي", "alfalasi"), ("Haddad", "haddad")),
        (("Jebel Ali Freight Services LLC", "jafs.example"),),
        ("مدير العمليات", "Operations Director"),
    ),
    Region(
        "IN",
        ("Asia/Kolkata",),
        "+91",
        "priya.nair@acmeflow.example",
        (("Divya", "divya"), ("अर्जुन", "arjun"), ("Rahul", "rahul")),
        (("Mehta", "mehta"), ("शर्मा", "sharma"), ("Iyer", "iyer")),
        (("Pune Precision Components Pvt Ltd", "puneprecision.example"),),
        ("Head of Operations", "Plant Manager"),
    ),
    Region(
        "PL",
        ("Europe/Warsaw",),
        "+48",
        "katrin.vogel@acmeflow.example",
        (("Łukasz", "lukasz"), ("Agnieszka", "agnieszka")),
        (("Wójcik", "wojcik"), ("Kowalska", "kowalska")),
        (("Wisła Logistyka Sp. z o.o.", "wisla-log.example"),),
        ("Dyrektor Operacyjny", "Kierownik Logistyki"),
    ),
)
INDUSTRIES: Final = ("Logistics", "Manufacturing", "Professional Services", "Wholesale", "")
SIZES: Final = ("1-50", "51-200", "201-500", "501-1000", "1001-5000", "")
SOURCES: Final = (
    ("content_download", "google", "organic", "roi-guide"),
    ("content_download", "bing", "cpc", "readiness-checklist"),
    ("linkedin_ad", "linkedin", "paid_social", "q3-ops-automation"),
    ("webinar", "linkedin", "paid_social", "webinar-exceptions-not-emails"),
    ("demo_homepage", "", "", ""),
    ("tbbanner", "taboola", "display", "exception-handling-native"),
)
FIELDS_1: Final = ("procurement", "approvals", "order-intake", "client-onboarding", "", "", "")
GRADES: Final = (
    ("nurturable", 50),
    ("", 20),
    ("invalid", 10),
    ("convertible", 8),
    ("intent", 7),
    ("customer", 5),
)
STAGES: Final = ("lead", "lead", "lead", "suspect", "mql")


def _blank(rng: random.Random, value: str, share: float) -> str:
    return "" if rng.random() < share else value


def generate_leads(
    count: int,
    *,
    seed: int = 7,
    grade: str | None = None,
    stage: str | None = None,
    zones: Sequence[str] | None = None,
) -> Iterator[dict[str, str]]:
    """Yield `count` CSV rows shaped like examples/leads.csv, with unique addresses; about a third of the
    names are written in a non-Latin script. `grade`, `stage` and `zones` pin those columns."""
    rng = random.Random(seed)
    grades, weights = zip(*GRADES, strict=True)
    for number in range(count):
        region = rng.choice(REGIONS)
        first, first_ascii = rng.choice(region.first)
        last, last_ascii = rng.choice(region.last)
        company, domain = rng.choice(region.companies)
        source, utm_source, utm_medium, utm_campaign = rng.choice(SOURCES)
        local = f"{first_ascii}.{last_ascii}.{number}"
        zone = rng.choice(zones) if zones else _blank(rng, rng.choice(region.zones), 0.15)
        phone = f"{region.dial} {rng.randint(10, 99)} {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}"
        yield {
            "email": (local.capitalize() if number % 17 == 0 else local) + f"@{domain}",
            "first_name": first,
            "last_name": last,
            "company": _blank(rng, company, 0.05),
            "title": _blank(rng, rng.choice(region.titles), 0.15),
            "industry": rng.choice(INDUSTRIES),
            "company_size": rng.choice(SIZES),
            "country": region.country,
            "timezone": zone,
            "phone": _blank(rng, phone, 0.5),
            "owner": _blank(rng, region.owner, 0.05),
            "grade": grade if grade is not None else rng.choices(grades, weights)[0],
            "stage": stage if stage is not None else rng.choice(STAGES),
            "source": source,
            "utm_source": utm_source,
            "utm_medium": utm_medium,
            "utm_campaign": utm_campaign,
            "x_field_1": rng.choice(FIELDS_1),
        }


def write_csv(path: Path, rows: Iterable[dict[str, str]]) -> int:
    """Write `rows` as a UTF-8 CSV with the example's header; return the number of rows written."""
    written = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            written += 1
    return written


# --- throwaway databases --------------------------------------------------------------------------------


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_pg_database(name: str) -> str:
    """Create a fresh PostgreSQL database `name` next to the admin database, migrate it, return its URL."""
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await _admin(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    await migrate(url)
    return url


async def drop_pg_database(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def create_sqlite_database(path: Path) -> str:
    """Create (replace) a SQLite file at `path`, migrate it, return its URL."""
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    await migrate(url)
    return url


async def migrate(url: str) -> None:
    db = Database(url)
    try:
        await upgrade(db)
    finally:
        await db.aclose()


# --- the SMTP sink process ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class SinkCount:
    messages: int
    bytes: int
    connections: int
    total: int  # messages since the sink started


class SinkProcess:
    """bench/smtp_sink.py in its own process on 127.0.0.1, driven over its stdin and stdout."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def __enter__(self) -> SinkProcess:
        script = Path(__file__).with_name("smtp_sink.py")
        self._process = subprocess.Popen(
            [sys.executable, str(script), "--host", self.host, "--port", str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._read()
        if line != f"ready {self.port}":
            self.__exit__()
            raise RuntimeError(f"the SMTP sink did not start: {line!r}")
        return self

    def __exit__(self, *_exc_info: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()  # end of stdin: the sink stops
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def count(self) -> SinkCount:
        _, messages, size, connections, total = self._ask("count").split()
        return SinkCount(int(messages), int(size), int(connections), int(total))

    def reset(self) -> None:
        self._ask("reset")

    def _ask(self, command: str) -> str:
        stdin = self._pipes()[0]
        stdin.write(command + "\n")
        stdin.flush()
        return self._read()

    def _read(self) -> str:
        line = self._pipes()[1].readline()
        if not line:
            raise RuntimeError("the SMTP sink exited")
        return line.strip()

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError("the SMTP sink is not running")
        return process.stdin, process.stdout


# --- printing -------------------------------------------------------------------------------------------


def add_runs_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="repetitions; the median is reported (default 3)")


def summary(label: str, values: Sequence[float], unit: str, *, digits: int = 0) -> str:
    """`label: median <m> unit  (runs: a, b, c)`."""

    def fmt(value: float) -> str:
        return f"{value:,.{digits}f}"

    runs = ", ".join(fmt(v) for v in values)
    return f"{label:<34} median {fmt(statistics.median(values)):>10} {unit}   (runs: {runs})"
