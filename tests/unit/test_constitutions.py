import json
import random
from pathlib import Path

import pytest

from sami_core import constitutions as C
from sami_core.errors import ConstitutionError
from sami_core.spec import DATA_DIR

REFERENCE_FILES = sorted((DATA_DIR / "constitutions").glob("*/*.json"))


def test_shipped_reference_files_exist():
    assert len(REFERENCE_FILES) == 12


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_reference_files_round_trip(path: Path, tmp_path: Path):
    original = json.loads(path.read_text())
    c = C.load(path)
    assert c.to_reference() == original
    out = tmp_path / "c.json"
    C.save(c, out, fmt="reference")
    assert json.loads(out.read_text()) == original
    # and through the native format, keeping antitheses and identifiers
    C.save(c, tmp_path / "n.json", fmt="native")
    native = C.load(tmp_path / "n.json")
    assert [p.principle for p in native.principles] == [p.principle for p in c.principles]
    assert [p.antithesis for p in native.principles] == [p.antithesis for p in c.principles]


def test_reference_parse_finds_the_flipped_principle():
    c = C.load(DATA_DIR / "constitutions" / "mistral" / "1.json")
    assert len(c.principles) == 2
    assert c.principles[0].antithesis is None
    assert c.principles[1].antithesis.startswith("Summaries should be incomplete")
    assert c.principles[1].identifier == "comprehensive"


def _three():
    return C.from_native([
        {"principle": "Be concise.", "antithesis": "Be verbose."},
        {"principle": "Be polite.", "antithesis": "Be rude."},
        {"principle": "Use plain words."},
    ])


def test_variants_are_distinct_positive_first_and_seeded():
    c = _three()
    vs = c.sample_variants(4, random.Random(1))
    assert vs[0].is_positive
    assert len({v.flips for v in vs}) == 4
    assert all(not v.flips[2] for v in vs)  # no antithesis: never flipped
    assert len({v.order for v in vs}) == 1  # one shuffled order shared by a query's variants
    again = c.sample_variants(4, random.Random(1))
    assert [v.text for v in vs] == [v.text for v in again]
    orders = {c.sample_variants(2, random.Random(s)).__getitem__(0).order for s in range(20)}
    assert len(orders) > 1  # shuffling happens
    unshuffled = c.sample_variants(2, random.Random(3), shuffle=False)
    assert unshuffled[0].text == "1. Be concise.\n2. Be polite.\n3. Use plain words."


def test_flip_renders_antithesis():
    c = _three()
    assert c.render([True, False, False]) == "1. Be verbose.\n2. Be polite.\n3. Use plain words."
    with pytest.raises(ConstitutionError, match="no antithesis"):
        c.render([False, False, True])


@pytest.mark.parametrize(
    "principles, n, match",
    [
        ([], 2, "no principles"),
        ([{"principle": "  ", "antithesis": "x"}], 2, "principle 1 is empty"),
        ([{"principle": "A", "antithesis": "B"}, {"principle": "a ", "antithesis": "C"}], 2, "duplicates principle 1"),
        ([{"principle": "A", "antithesis": "A"}], 2, "same text"),
        ([{"principle": "A", "antithesis": "B"}], 3, "at most 2"),
        ([{"principle": "A"}], 2, "at most 1"),
    ],
)
def test_validation_errors(principles, n, match):
    with pytest.raises(ConstitutionError, match=match):
        C.from_native(principles).validate(n)


def test_bad_files(tmp_path: Path):
    with pytest.raises(ConstitutionError, match="does not exist"):
        C.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConstitutionError, match="not valid JSON"):
        C.load(tmp_path / "bad.json")
    with pytest.raises(ConstitutionError, match="unknown key"):
        C.from_native([{"principle": "A", "antitesis": "B"}])
    with pytest.raises(ConstitutionError, match="2 principles but negative has 1"):
        C.from_reference({"positive": "1. a\n2. b", "negative": "1. c"})
