"""Fixtures for flow tests: the shipped catalog, a mailer on a recording transport, leads in the database."""

from __future__ import annotations

import pytest

from nurture.catalog import Catalog, load_catalog
from nurture.flows.deliver import Mailer
from tests.fakes import RecordingTransport
from tests.project import PROJECT

ROOT = PROJECT  # the tests' own project files (tests/project.py)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(
        campaigns_dir=ROOT / "campaigns", templates_dir=ROOT / "templates", reps_file=ROOT / "reps.yaml"
    )


@pytest.fixture
def transport() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def mailer(catalog: Catalog, transport: RecordingTransport) -> Mailer:
    return mailer_for(catalog, transport)


def mailer_for(catalog: Catalog, transport: RecordingTransport) -> Mailer:
    """A mailer for `catalog` that sends to `transport`, with the flow tests' key and base URL."""
    return Mailer(
        catalog=catalog,
        renderer=catalog.renderer(),
        transport=transport,
        secret_key=b"test-secret-key-0123456789",
        base_url="https://track.example.com",
        max_attempts=3,
    )
