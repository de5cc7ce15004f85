"""`tunelens.io`: every way a user's JSON file can be wrong is one TunelensInputError."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelens.errors import TunelensInputError
from tunelens.io import iter_json_lines, parse_json, read_json, read_json_lines, read_text


def _error(path: Path, **kwargs) -> TunelensInputError:
    with pytest.raises(TunelensInputError) as info:
        read_json(path, **kwargs)
    assert info.value.source == str(path)
    return info.value


def test_reads_json_and_tolerates_a_byte_order_mark(tmp_path):
    path = tmp_path / "ok.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": [1, 2.5, "\u00e9"]}).encode())
    assert read_json(path) == {"a": [1, 2.5, "\u00e9"]}


def test_missing_file(tmp_path):
    error = _error(tmp_path / "absent.json")
    assert "no such file" in error.message


def test_a_folder_is_not_a_file(tmp_path):
    assert "is a directory" in _error(tmp_path).message


def test_bad_utf8_names_the_byte_and_line(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"a":\n "caf\xe9"}')
    error = _error(path)
    assert "not UTF-8" in error.message and "byte 11" in error.message
    assert error.where == "line 2, column 6"


def test_truncated_json_gives_line_and_column(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{\n  "Definition": ["x"],\n  "Instances": [\n', encoding="utf-8")
    error = _error(path)
    assert error.message.startswith("invalid JSON:")
    assert error.where == "line 4, column 1"
    assert str(error) == f"{path}: line 4, column 1: {error.message}"


def test_deep_nesting_is_an_input_error_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert "nested too deeply" in _error(path).message


def test_huge_integer_is_an_input_error(tmp_path):
    path = tmp_path / "big.json"
    path.write_text('{"n": ' + "9" * 100_000 + "}", encoding="utf-8")
    assert "invalid JSON" in _error(path).message


def test_empty_and_oversized_files(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("  \n", encoding="utf-8")
    assert "is empty" in _error(empty).message
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 1000 + "0]", encoding="utf-8")
    assert "larger than" in _error(big, max_bytes=100).message
    assert read_text(empty, allow_empty=True) == "  \n"


def test_json_lines_name_the_file_line(tmp_path):
    text = '{"input": "a"}\n\n{"input": "b", }\n'
    with pytest.raises(TunelensInputError) as info:
        list(iter_json_lines(text, source="x.jsonl"))
    assert info.value.where == "line 3, column 16"
    with pytest.raises(TunelensInputError, match="expected a JSON object"):
        list(iter_json_lines("[1]\n", source="x.jsonl"))
    path = tmp_path / "ok.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert read_json_lines(path) == [(1, {"a": 1}), (3, {"a": 2})]
    with pytest.raises(TunelensInputError, match="nested too deeply") as info:
        parse_json("[" * 100_000, source="x.jsonl", line=7)
    assert info.value.where == "line 7"


def test_cli_turns_a_bad_task_file_into_exit_2(tmp_path):
    path = tmp_path / "task.json"
    path.write_text("[" * 100_000, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "tunelens", "tasks", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert str(path) in done.stderr and "nested too deeply" in done.stderr


def test_a_key_given_twice_is_an_error_naming_key_file_and_line(tmp_path):
    with pytest.raises(TunelensInputError, match=r"x\.json: invalid JSON: key 'a' is given twice"):
        parse_json('{"b": {"a": 1, "a": 2}}', source="x.json")
    assert parse_json('[{"a": 1}, {"a": 2}]', source="x.json") == [{"a": 1}, {"a": 2}]
    rows = '{"input": "x"}\n\n{"input": "y", "input": "z"}\n'
    with pytest.raises(TunelensInputError, match=r"r\.jsonl: line 3: invalid JSON: key 'input'"):
        list(iter_json_lines(rows, source="r.jsonl"))


def test_atomic_writes_leave_one_file_and_refuse_inputs(tmp_path):
    from tunelens.io import atomic_path, atomic_write_bytes, refuse_overwriting_inputs

    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"one")
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("the library failed")
    assert target.read_bytes() == b"one"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(TunelensInputError, match="would destroy the input"):
        refuse_overwriting_inputs([tmp_path / "link"], [target])
    refuse_overwriting_inputs([tmp_path / "new"], [target, tmp_path / "absent"])  # passes
