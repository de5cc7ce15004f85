"""The example store: personal-data flags, duplicates, transactions, reading files, export."""

from __future__ import annotations

import sqlite3

import pytest

from tunelens.errors import TunelensInputError
from tunelens.examples.pii import find_cards, find_phones, luhn_valid, pii_flags
from tunelens.examples.store import ExampleStore, NewExample, read_example_file
from tunelens.tasks.jsonl import load_jsonl

# ---------------------------------------------------------------- personal data


@pytest.mark.parametrize(
    "text,flags",
    [
        ("write to jane.doe+news@mail.example.co.uk today", ("email",)),
        ("call +1 555 123 4567", ("phone",)),
        ("tel (030) 1234567 or 555-123-4567", ("phone",)),
        ("ring 03012345678", ("phone",)),
        ("paid with 4111 1111 1111 1111", ("card",)),
        ("card 5555555555554444, mail a@b.io", ("email", "card")),
        ("a great film, five stars", ()),
        ("order 20230115 shipped on 2024-05-01", ()),  # an id and a date, not a phone
        ("server 192.168.100.111 at 12.50 per hour", ()),
        ("4111 1111 1111 1112", ()),  # fails the Luhn check
        ("user@localhost", ()),
    ],
)
def test_pii_flags(text, flags):
    assert pii_flags(text) == flags


def test_luhn_and_finders():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert not luhn_valid("12a4")
    assert find_cards("x 4111-1111-1111-1111 y") == ["4111-1111-1111-1111"]
    assert find_phones("card 4111 1111 1111 1111") == []


# ---------------------------------------------------------------- the store


def ex(input_text: str, output: str = "positive", **kw) -> NewExample:
    return NewExample(input_text, output, **kw)


def test_add_list_and_refuse_duplicates(tmp_path):
    db = tmp_path / "ex.sqlite"
    with ExampleStore(db) as store:
        result = store.add([ex("good film", label="pos", source="web"), ex("bad film", "negative")])
        assert [r.id for r in result.added] == [1, 2]
        with pytest.raises(TunelensInputError, match="duplicate of example #1"):
            store.add([ex("new one"), ex("good film", label="pos")])
        assert store.count() == 2  # the whole add was rolled back, "new one" included
        # same input and output with another label is not an exact duplicate
        assert len(store.add([ex("good film", label="other")]).added) == 1
        skipped = store.add(
            [ex("good film", label="pos", where="line 1"), ex("fresh")], skip_duplicates=True
        )
        assert [r.input for r in skipped.added] == ["fresh"]
        assert skipped.skipped == [("line 1", 1)]
        # duplicates inside one call are caught too
        with pytest.raises(TunelensInputError, match="duplicate"):
            store.add([ex("twice"), ex("twice")])
        rows = store.examples()
    assert [r.input for r in rows] == ["good film", "bad film", "good film", "fresh"]
    first = rows[0]
    assert (first.label, first.source, first.accepted, first.pii) == ("pos", "web", True, ())
    assert first.time.endswith("Z")


def test_flags_are_stored_and_filtered(tmp_path):
    with ExampleStore(tmp_path / "ex.sqlite") as store:
        store.add([ex("mail me at bob@example.org"), ex("fine"), ex("x", "call 555-123-4567")])
        flagged = store.examples(flagged=True)
        assert [(r.input, r.pii) for r in flagged] == [
            ("mail me at bob@example.org", ("email",)),
            ("x", ("phone",)),
        ]
        assert [r.input for r in store.examples(flagged=False)] == ["fine"]


def test_export_loads_through_the_jsonl_loader(tmp_path):
    with ExampleStore(tmp_path / "ex.sqlite") as store:
        store.add(
            [
                ex("good film", "positive", label="pos"),
                ex("dull film", "negative"),
                ex("awful, write me: x@y.com", "negative"),
                ex("rejected one", "positive", accepted=False),
            ]
        )
        result = store.export_task(
            tmp_path / "set.jsonl", task="reviews", definition="Is the review positive or negative?"
        )
        assert (result.written, result.left_out_flagged, result.left_out_rejected) == (2, 1, 1)
        task = load_jsonl(tmp_path / "set.jsonl")
        assert task.name == "reviews"
        assert task.definition == "Is the review positive or negative?"
        assert [(i.id, i.input, i.outputs) for i in task.instances] == [
            ("ex1", "good film", ("positive",)),
            ("ex2", "dull film", ("negative",)),
        ]
        everything = store.export_task(tmp_path / "all.jsonl", task="reviews", include_flagged=True)
        assert everything.written == 3
        assert len(load_jsonl(tmp_path / "all.jsonl").instances) == 3


def test_export_with_nothing_to_write(tmp_path):
    with ExampleStore(tmp_path / "ex.sqlite") as store:
        store.add([ex("mail me at bob@example.org")])
        with pytest.raises(TunelensInputError, match="flagged for personal data"):
            store.export_task(tmp_path / "set.jsonl", task="t")
    assert not (tmp_path / "set.jsonl").exists()


def test_not_a_store(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all, just text " * 10)
    with pytest.raises(TunelensInputError, match="not a tunelens examples database"):
        ExampleStore(junk)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(TunelensInputError, match="something else"):
        ExampleStore(other)
    with pytest.raises(TunelensInputError, match="no examples database"):
        ExampleStore(tmp_path / "absent.sqlite", create=False)


def test_an_error_mid_add_leaves_nothing(tmp_path):
    db = tmp_path / "ex.sqlite"
    with ExampleStore(db) as store:
        store.add([ex("kept")])

        def rows():
            yield ex("first of many")
            raise KeyboardInterrupt  # e.g. Ctrl-C while a long file is being added

        with pytest.raises(KeyboardInterrupt):
            store.add(rows())
        assert [r.input for r in store.examples()] == ["kept"]


# ---------------------------------------------------------------- reading files


def test_read_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(
        '{"tunelens_task": 1, "task": "t", "definition": "d"}\n'
        '{"input": "a", "output": ["yes"], "label": "y", "accepted": false}\n\n'
        '{"input": "b", "output": "no", "time": "2024-05-01T10:00:00Z"}\n'
    )
    rows = read_example_file(jsonl)
    assert [(r.input, r.output, r.label, r.accepted, r.time, r.source) for r in rows] == [
        ("a", "yes", "y", False, None, "rows.jsonl"),
        ("b", "no", None, True, "2024-05-01T10:00:00Z", "rows.jsonl"),
    ]
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text('input,output,label,accepted\n"a, with comma",yes,,0\nb,no,n,true\n')
    rows = read_example_file(csv_path, default_source="review")
    assert [(r.input, r.label, r.accepted, r.source) for r in rows] == [
        ("a, with comma", None, False, "review"),
        ("b", "n", True, "review"),
    ]


@pytest.mark.parametrize(
    "name,text,message,where",
    [
        (
            "r.jsonl",
            '{"input": "a", "output": "b"}\n{"input": "a"}\n',
            "field 'output': missing",
            "line 2",
        ),
        (
            "r.jsonl",
            '{"input": "a", "output": "b"}\n{bad json\n',
            "invalid JSON",
            "line 2, column 2",
        ),
        ("r.jsonl", '["a", "b"]\n', "JSON object", "line 1"),
        ("r.jsonl", '{"input": 3, "output": "b"}\n', "field 'input': expected a string", "line 1"),
        ("r.jsonl", '{"input": " ", "output": "b"}\n', "field 'input': empty", "line 1"),
        ("r.jsonl", '{"input": "a", "output": "b", "accepted": "perhaps"}\n', "accepted", "line 1"),
        ("r.jsonl", '{"input": "a", "output": "b", "time": "yesterday"}\n', "ISO 8601", "line 1"),
        ("r.jsonl", "\n\n", "no examples", None),
        ("r.csv", "text,answer\nx,y\n", "header must name", "line 1"),
        ("r.csv", "input,output,colour\nx,y,red\n", "unknown CSV column", "line 1"),
        ("r.csv", "input,output\nx,y,z\n", "more fields", "line 2"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, name, text, message, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TunelensInputError) as info:
        read_example_file(path)
    assert message in info.value.message
    assert info.value.source == str(path)
    assert info.value.where == where
