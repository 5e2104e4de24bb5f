"""Reads for the Responses page: two response sources side by side, one page at a time.

A *pair* is a response of the left source and the response of the right source to the
same query at the same temperature and sample index. Filtering (temperature, text search,
the judge's verdict on the pair) and pagination happen in SQL, so a page costs the same
with 250 responses as with 100,000.

Verdicts are named from the judgment's side, as stored: ``candidate`` (the candidate won),
``baseline``, ``tie``, ``invalid``, ``error``; ``none`` selects pairs never judged. A pair is
judged when a judgment compared its two responses, whichever was the candidate.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.engine import Connection

from db.models import Constitution, Judgment, Response, ResponseSource

responses = Response.__table__
sources = ResponseSource.__table__
judgments = Judgment.__table__
constitutions = Constitution.__table__

VERDICTS = ("candidate", "baseline", "tie", "invalid", "error", "none")


def pair_temperatures(conn: Connection, left: int, right: int) -> list[float]:
    """Temperatures at which both sources have responses, ascending."""
    lt = select(responses.c.temperature).where(responses.c.source_id == left).distinct()
    rt = select(responses.c.temperature).where(responses.c.source_id == right).distinct()
    return sorted(float(t) for t in conn.execute(lt.intersect(rt)).scalars())


def source_temperatures(conn: Connection, source_id: int) -> list[float]:
    """The temperatures of one source's responses, ascending."""
    stmt = select(responses.c.temperature).where(responses.c.source_id == source_id).distinct()
    return sorted(float(t) for t in conn.execute(stmt).scalars())


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _pairs(left: int, right: int, *, temperature: float | None, search: str | None,
           verdict: str | None):  # noqa: ANN202
    """(left alias, right alias, FROM clause, WHERE condition) selecting the pairs."""
    lr, rr = responses.alias("l"), responses.alias("r")
    join = lr.join(rr, and_(rr.c.source_id == right, rr.c.query_id == lr.c.query_id,
                            rr.c.temperature == lr.c.temperature, rr.c.sample_index == lr.c.sample_index))
    conds = [lr.c.source_id == left]
    if temperature is not None:
        conds.append(lr.c.temperature == temperature)
    if search and search.strip():
        pattern = _like(search.strip())
        conds.append(or_(lr.c.query.ilike(pattern, escape="\\"), lr.c.text.ilike(pattern, escape="\\"),
                         rr.c.text.ilike(pattern, escape="\\")))
    if verdict is not None:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}; got {verdict!r}")
        between = or_(and_(judgments.c.candidate_id == lr.c.id, judgments.c.baseline_id == rr.c.id),
                      and_(judgments.c.candidate_id == rr.c.id, judgments.c.baseline_id == lr.c.id))
        if verdict == "none":
            conds.append(~exists().where(between))
        else:
            conds.append(exists().where(between, judgments.c.verdict == verdict))
    return lr, rr, join, and_(*conds)


def count_pairs(conn: Connection, left: int, right: int, *, temperature: float | None = None,
                search: str | None = None, verdict: str | None = None) -> int:
    """How many pairs pass the filters."""
    _, _, join, where = _pairs(left, right, temperature=temperature, search=search, verdict=verdict)
    return conn.execute(select(func.count()).select_from(join).where(where)).scalar_one()


def count_pair_queries(conn: Connection, left: int, right: int, *, temperature: float | None = None,
                       search: str | None = None, verdict: str | None = None) -> int:
    """How many distinct queries have a pair passing the filters (a query answered at two
    temperatures is one query, two pairs)."""
    lr, _, join, where = _pairs(left, right, temperature=temperature, search=search, verdict=verdict)
    return conn.execute(select(func.count(lr.c.query_id.distinct())).select_from(join).where(where)).scalar_one()


def pair_page(conn: Connection, left: int, right: int, *, temperature: float | None = None,
              search: str | None = None, verdict: str | None = None, page: int = 1,
              page_size: int = 10) -> list[dict[str, Any]]:
    """One page (1-based) of pairs in the left source's order: query_id, temperature,
    sample_index, query, and per side ``<side>_id``, ``<side>_text``, ``<side>_tokens``,
    ``<side>_constitution_id``."""
    lr, rr, join, where = _pairs(left, right, temperature=temperature, search=search, verdict=verdict)
    stmt = (select(lr.c.query_id, lr.c.temperature, lr.c.sample_index,
                   func.coalesce(lr.c.query, rr.c.query).label("query"),
                   lr.c.id.label("left_id"), lr.c.text.label("left_text"), lr.c.n_tokens.label("left_tokens"),
                   lr.c.constitution_id.label("left_constitution_id"),
                   rr.c.id.label("right_id"), rr.c.text.label("right_text"), rr.c.n_tokens.label("right_tokens"),
                   rr.c.constitution_id.label("right_constitution_id"))
            .select_from(join).where(where).order_by(lr.c.id)
            .limit(max(1, page_size)).offset(max(0, page - 1) * max(1, page_size)))
    return [dict(r) for r in conn.execute(stmt).mappings()]


def pair_judgments(conn: Connection, response_ids: tuple[int, ...]) -> list[dict[str, Any]]:
    """Judgments comparing any two of the given responses: candidate_id, baseline_id,
    judge_model, verdict (as stored), candidate_position, rationale; oldest first."""
    if not response_ids:
        return []
    ids = list(response_ids)
    stmt = (select(judgments.c.id, judgments.c.candidate_id, judgments.c.baseline_id, judgments.c.judge_model,
                   judgments.c.verdict, judgments.c.candidate_position, judgments.c.rationale)
            .where(judgments.c.candidate_id.in_(ids), judgments.c.baseline_id.in_(ids))
            .order_by(judgments.c.id))
    return [dict(r) for r in conn.execute(stmt).mappings()]


def constitutions_by_id(conn: Connection, ids: tuple[int, ...]) -> dict[int, dict[str, Any]]:
    """{id: {name, version, principles}} of the given constitution versions."""
    if not ids:
        return {}
    stmt = (select(constitutions.c.id, constitutions.c.name, constitutions.c.version, constitutions.c.principles)
            .where(constitutions.c.id.in_(list(ids))))
    return {r["id"]: dict(r) for r in conn.execute(stmt).mappings()}


def verdict_counts(conn: Connection, left: int, right: int, *, temperature: float | None = None) -> dict[str, int]:
    """Judgments between the two sources (either as candidate) per stored verdict; only
    those of responses at ``temperature`` when given."""
    cand, base = responses.alias("c"), responses.alias("b")
    stmt = (select(judgments.c.verdict, func.count())
            .select_from(judgments.join(cand, cand.c.id == judgments.c.candidate_id)
                         .join(base, base.c.id == judgments.c.baseline_id))
            .where(or_(and_(cand.c.source_id == left, base.c.source_id == right),
                       and_(cand.c.source_id == right, base.c.source_id == left)))
            .group_by(judgments.c.verdict))
    if temperature is not None:
        stmt = stmt.where(cand.c.temperature == temperature)
    return {v: n for v, n in conn.execute(stmt).all()}
