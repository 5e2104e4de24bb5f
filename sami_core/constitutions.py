"""Constitutions: principles, each with an optional antithesis, and their variants.

A SAMI contrast needs N constitution variants per query. Variant 0 is the constitution
itself (every principle as written); the others flip distinct, non-empty subsets of the
principles that have an antithesis, so k such principles allow at most 2**k variants.
Principle order can be shuffled per query (the same order for all N variants, so the
variants differ only in what they ask for).

Two file formats:
- reference (the SAMI paper's): ``{"positive": "1. ...\\n2. ...", "negative": "...",
  "identifiers": {"positive": ["pos concise", ...], "negative": ["neg concise", ...]}}``;
  `negative` flips the principles whose identifier starts with ``neg``.
- native: a JSON list of ``{"principle": ..., "antithesis": ...}`` (or an object with
  ``principles`` and an optional ``name``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from sami_core.errors import ConstitutionError

_NUMBERED = re.compile(r"^\s*(\d+)\.\s?(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Principle:
    principle: str
    antithesis: str | None = None
    identifier: str | None = None  # short name, e.g. "concise" (reference format)


@dataclass(frozen=True)
class Variant:
    """One constitution variant as used in a prompt."""

    flips: tuple[bool, ...]  # per principle (in constitution order): True = antithesis
    order: tuple[int, ...]  # principle indices in the order shown
    text: str  # numbered lines

    @property
    def is_positive(self) -> bool:
        return not any(self.flips)


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    name: str = ""
    meta: dict = field(default_factory=dict, compare=False)

    # ---- validation -------------------------------------------------------------------
    def validate(self, n_variants: int = 1) -> "Constitution":
        """Raise ConstitutionError unless the constitution can give ``n_variants`` variants."""
        if not self.principles:
            raise ConstitutionError("constitution has no principles: add at least one")
        seen: dict[str, int] = {}
        for i, p in enumerate(self.principles, 1):
            if not p.principle or not p.principle.strip():
                raise ConstitutionError(f"principle {i} is empty: write the principle or remove the row")
            key = p.principle.strip().lower()
            if key in seen:
                raise ConstitutionError(f"principle {i} duplicates principle {seen[key]}: remove one of them")
            seen[key] = i
            if p.antithesis is not None:
                if not p.antithesis.strip():
                    raise ConstitutionError(f"principle {i}: antithesis is empty (leave it out or write one)")
                if p.antithesis.strip().lower() == key:
                    raise ConstitutionError(f"principle {i}: antithesis is the same text as the principle")
        if n_variants > self.max_variants:
            k = self.n_flippable
            raise ConstitutionError(
                f"{n_variants} variants requested but this constitution allows at most {self.max_variants} "
                f"({k} principle{'s' if k != 1 else ''} with an antithesis give 2**{k}); "
                f"add antitheses or lower N"
            )
        return self

    @property
    def n_flippable(self) -> int:
        return sum(p.antithesis is not None for p in self.principles)

    @property
    def max_variants(self) -> int:
        return 2**self.n_flippable

    # ---- rendering --------------------------------------------------------------------
    def render(self, flips: Sequence[bool] | None = None, order: Sequence[int] | None = None) -> str:
        """Numbered lines ("1. ...") with the given principles flipped, in the given order."""
        flips = tuple(flips) if flips is not None else (False,) * len(self.principles)
        order = tuple(order) if order is not None else tuple(range(len(self.principles)))
        lines = []
        for n, idx in enumerate(order, 1):
            p = self.principles[idx]
            if flips[idx] and p.antithesis is None:
                raise ConstitutionError(f"principle {idx + 1} has no antithesis to flip to")
            lines.append(f"{n}. {p.antithesis if flips[idx] else p.principle}")
        return "\n".join(lines)

    def positive(self) -> Variant:
        order = tuple(range(len(self.principles)))
        flips = (False,) * len(self.principles)
        return Variant(flips, order, self.render(flips, order))

    def antithesis(self) -> Variant:
        """Every principle that has an antithesis flipped to it, in order (the opposite
        constitution; a principle without one stays as it is)."""
        if not self.n_flippable:
            raise ConstitutionError("no principle has an antithesis: write one to sample under the antithesis")
        order = tuple(range(len(self.principles)))
        flips = tuple(p.antithesis is not None for p in self.principles)
        return Variant(flips, order, self.render(flips, order))

    def swapped(self) -> "Constitution":
        """The antithesis constitution as a constitution of its own: each principle and its
        antithesis swapped (stored as its own version for the responses sampled under it)."""
        self.antithesis()  # at least one principle flips
        return Constitution(tuple(Principle(p.antithesis, p.principle) if p.antithesis is not None else p
                                  for p in self.principles),
                            f"{self.name} (antithesis)" if self.name else "antithesis")

    def sample_variants(
        self, n: int, rng: random.Random, *, shuffle: bool = True, include_positive: bool = True
    ) -> list[Variant]:
        """N distinct variants: the positive one first (if asked), then random flip sets."""
        self.validate(n)
        flippable = [i for i, p in enumerate(self.principles) if p.antithesis is not None]
        k = len(flippable)
        # Every flip set as a bitmask over the flippable principles; 0 = positive.
        masks = list(range(1, 2**k))
        rng.shuffle(masks)
        if include_positive:
            chosen = [0] + masks[: n - 1]
        elif n <= len(masks):
            chosen = masks[:n]
        else:
            raise ConstitutionError(f"{n} variants without the positive one need {n} flip sets; only {len(masks)} exist")
        order = list(range(len(self.principles)))
        if shuffle:
            rng.shuffle(order)
        out = []
        for mask in chosen:
            flips = [False] * len(self.principles)
            for bit, idx in enumerate(flippable):
                flips[idx] = bool(mask >> bit & 1)
            out.append(Variant(tuple(flips), tuple(order), self.render(flips, order)))
        return out

    # ---- formats ----------------------------------------------------------------------
    def to_native(self) -> list[dict]:
        return [{"principle": p.principle, "antithesis": p.antithesis} for p in self.principles]

    def to_reference(self) -> dict:
        """The reference format; `negative` flips every principle that has an antithesis."""
        flips = [p.antithesis is not None for p in self.principles]
        ids = [p.identifier or f"principle {i + 1}" for i, p in enumerate(self.principles)]
        return {
            "positive": self.render(),
            "negative": self.render(flips),
            "identifiers": {
                "positive": [f"pos {x}" for x in ids],
                "negative": [f"{'neg' if f else 'pos'} {x}" for f, x in zip(flips, ids)],
            },
        }


def _parse_numbered(text: str, what: str) -> list[str]:
    items: list[str] = []
    for line in text.split("\n"):
        m = _NUMBERED.match(line)
        if m:
            items.append(m.group(2))
        elif items and line.strip():  # continuation of a wrapped principle
            items[-1] += "\n" + line
        elif line.strip():
            raise ConstitutionError(f"{what}: line {line[:40]!r} is not a numbered principle ('1. ...')")
    return items


def from_reference(data: dict, name: str = "") -> Constitution:
    for key in ("positive", "negative"):
        if not isinstance(data.get(key), str):
            raise ConstitutionError(f"reference constitution needs a string {key!r} (numbered principles)")
    pos = _parse_numbered(data["positive"], "positive")
    neg = _parse_numbered(data["negative"], "negative")
    if len(pos) != len(neg):
        raise ConstitutionError(f"positive has {len(pos)} principles but negative has {len(neg)}")
    ids = data.get("identifiers") or {}
    pos_ids = ids.get("positive") or [None] * len(pos)
    neg_ids = ids.get("negative") or [None] * len(pos)
    if len(pos_ids) != len(pos) or len(neg_ids) != len(pos):
        raise ConstitutionError("identifiers must list one entry per principle for positive and negative")
    principles = []
    for p, n, pid, nid in zip(pos, neg, pos_ids, neg_ids):
        flipped = nid.startswith("neg") if nid else p != n
        ident = pid.split(" ", 1)[1] if pid and " " in pid else pid
        principles.append(Principle(principle=p, antithesis=n if flipped else None, identifier=ident))
    return Constitution(tuple(principles), name=name)


def from_native(data: list | dict, name: str = "") -> Constitution:
    if isinstance(data, dict):
        name = data.get("name") or name
        data = data.get("principles")
    if not isinstance(data, list):
        raise ConstitutionError("native constitution must be a list of {principle, antithesis} objects")
    principles = []
    for i, item in enumerate(data, 1):
        if isinstance(item, str):
            item = {"principle": item}
        if not isinstance(item, dict) or "principle" not in item:
            raise ConstitutionError(f"principle {i}: expected an object with a 'principle' key")
        unknown = set(item) - {"principle", "antithesis", "identifier"}
        if unknown:
            raise ConstitutionError(f"principle {i}: unknown key(s) {sorted(unknown)}; allowed: principle, antithesis")
        principles.append(
            Principle(str(item["principle"]), item.get("antithesis") or None, item.get("identifier"))
        )
    return Constitution(tuple(principles), name=name)


def parse(data: list | dict, name: str = "") -> Constitution:
    """Either format, detected by its keys."""
    if isinstance(data, dict) and "positive" in data:
        return from_reference(data, name)
    return from_native(data, name)


def load(path: str | Path) -> Constitution:
    p = Path(path)
    if not p.is_file():
        raise ConstitutionError(f"constitution file {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConstitutionError(f"{p}: not valid JSON: {err}") from None
    return parse(data, name=p.stem if p.parent.name in ("", ".") else f"{p.parent.name}/{p.stem}")


def save(constitution: Constitution, path: str | Path, fmt: str = "native") -> None:
    if fmt not in ("native", "reference"):
        raise ValueError("fmt must be 'native' or 'reference'")
    data = constitution.to_native() if fmt == "native" else constitution.to_reference()
    Path(path).write_text(json.dumps(data, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")


def from_spec(spec) -> Constitution:
    """Build from a :class:`sami_core.spec.ConstitutionSpec` that names one constitution."""
    from sami_core.spec import resolve_shipped

    if spec.is_set:
        raise ConstitutionError("the constitution is a set (paths/members): use set_from_spec and draw per query")
    if spec.path is not None:
        c = load(resolve_shipped(spec.path))
    else:
        c = from_native([p.model_dump() for p in spec.principles])
    if spec.name:
        c = Constitution(c.principles, name=spec.name)
    return c


# ---- sets: one constitution drawn per query -------------------------------------------------
def draw_index(seed: int, query_id: str, n: int) -> int:
    """Which of ``n`` constitutions query ``query_id`` draws: uniform, fixed by (seed, query
    id) alone, so every stage, resume and iteration draws the same one for a query."""
    digest = hashlib.sha256(f"sami-constitution-draw:{seed}:{query_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n


@dataclass(frozen=True)
class ConstitutionSet:
    """The constitutions a query may be asked under; one constitution is a set of one.
    Members are told apart by name (recorded per query as the drawn constitution)."""

    members: tuple[Constitution, ...]
    seed: int = 0
    name: str = ""
    is_set: bool = False  # given as a set (paths, members), even of one; False: one constitution

    def __post_init__(self) -> None:
        if not self.members:
            raise ConstitutionError("a constitution set needs at least one constitution")
        names = [c.name for c in self.members]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ConstitutionError(f"two constitutions of the set are named {dup!r}: give each its own name")

    def draw(self, query_id: str) -> Constitution:
        return self.members[draw_index(self.seed, str(query_id), len(self.members))]

    def validate(self, n_variants: int = 1) -> "ConstitutionSet":
        """Every member must give ``n_variants`` variants; the error names the member."""
        for c in self.members:
            try:
                c.validate(n_variants)
            except ConstitutionError as err:
                raise ConstitutionError(f"{c.name}: {err}" if self.is_set and c.name else str(err)) from None
        return self


def _member_name(ref: str, c: Constitution) -> str:
    """A member's name: a shipped reference as written (``demo:opus/0``), else the file's."""
    return ref if ref.startswith("demo:") else c.name or Path(ref).stem


def resolve_paths(paths: list[str] | str) -> list[tuple[str, str]]:
    """A set's ``paths`` as (reference, file) pairs: a list as given, or a folder's *.json
    sorted by name. Raises SpecError naming ``constitution.paths`` (or ``.K``)."""
    from sami_core.errors import SpecError
    from sami_core.spec import resolve_shipped, resolve_shipped_folder

    if isinstance(paths, str):
        folder = Path(resolve_shipped_folder(paths)).expanduser()
        if not folder.is_dir():
            raise SpecError(f"folder {paths!r} does not exist (give a folder of constitution files, or a list "
                            "of them)", path="constitution.paths")
        files = sorted(folder.glob("*.json"))
        if not files:
            raise SpecError(f"folder {paths!r} holds no *.json constitution files", path="constitution.paths")
        prefix = paths.rstrip("/") + "/" if paths.startswith("demo:") else ""
        return [(f"{prefix}{f.stem}" if prefix else str(f), str(f)) for f in files]
    out = []
    for k, ref in enumerate(paths):
        f = resolve_shipped(ref, field=f"constitution.paths.{k}")
        if not Path(f).expanduser().is_file():
            raise SpecError(f"constitution file {ref!r} does not exist", path=f"constitution.paths.{k}")
        out.append((ref, f))
    return out


def load_set(paths: list[str] | str, seed: int = 0, name: str = "") -> ConstitutionSet:
    """Load every constitution a ``paths`` value names (see :func:`resolve_paths`)."""
    from sami_core.errors import SpecError

    members = []
    for k, (ref, f) in enumerate(resolve_paths(paths)):
        where = "constitution.paths" + (f".{k}" if isinstance(paths, list) else "")
        try:
            c = load(Path(f).expanduser())
        except ConstitutionError as err:
            raise SpecError(f"{ref}: {err}", path=where) from None
        members.append(Constitution(c.principles, name=_member_name(ref, c), meta={"origin": ref}))
    try:
        return ConstitutionSet(tuple(members), seed, name, is_set=True)
    except ConstitutionError as err:
        raise SpecError(str(err), path="constitution.paths") from None


def set_from_spec(spec) -> ConstitutionSet:
    """The set a :class:`sami_core.spec.ConstitutionSpec` names (a set of one for ``path``
    or ``principles``)."""
    if spec.paths is not None:
        return load_set(spec.paths, spec.seed, spec.name or "")
    if spec.members is not None:
        return ConstitutionSet(tuple(from_native([p.model_dump() for p in m.principles], name=m.name)
                                     for m in spec.members), spec.seed, spec.name or "", is_set=True)
    return ConstitutionSet((from_spec(spec),), spec.seed)
