"""Core `Table` handles for the ORM models, and row-to-value conversions shared by the query modules."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from sqlalchemy import Row, Table
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.context import LeadProfile
from nurture.core.lead import Lead as LeadValue
from nurture.db import models


def _table(model: type[models.Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


leads = _table(models.Lead)
enrollments = _table(models.Enrollment)
deliveries = _table(models.Delivery)
touchpoints = _table(models.Touchpoint)
events = _table(models.Event)
scheduler_leases = _table(models.SchedulerLease)
catalog_state = _table(models.CatalogState)
alerts = _table(models.Alert)
stage_changes = _table(models.StageChange)


def lead_value(row: Row[Any]) -> LeadValue:
    """The core's view of a `leads` row."""
    m = row._mapping
    return LeadValue(
        id=m["id"],
        email=m["email"],
        grade=m["grade"],
        stage=m["stage"],
        score=m["score"],
        timezone=m["timezone"],
        country=m["country"],
        owner=m["owner"],
        suppressed=m["suppressed"],
        tags=MappingProxyType(dict(m["tags"] or {})),
    )


def lead_profile(row: Row[Any]) -> LeadProfile:
    """A `leads` row as templates see it."""
    m = row._mapping
    return LeadProfile(
        email=m["email"],
        first_name=m["first_name"],
        last_name=m["last_name"],
        company=m["company"],
        title=m["title"],
        industry=m["industry"],
        company_size=m["company_size"],
        country=m["country"],
        timezone=m["timezone"],
        phone=m["phone"],
        owner=m["owner"],
        grade=m["grade"],
        stage=m["stage"],
        score=m["score"],
        tags=MappingProxyType(dict(m["tags"] or {})),
    )


def dialect_insert(conn: AsyncConnection, table: Table) -> Any:
    """An INSERT that knows `ON CONFLICT` for the connection's dialect (PostgreSQL or SQLite)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)
