"""Fuzz suite: malformed inputs of every kind, each one line on stderr and exit status 2.

Generated cases over task files, specs, cost files, example files, model
directories and CLI options. Each runs the real entry point
(``tunelens.cli:main``, in this process: seconds instead of minutes) in a
fresh folder and asserts: exit status 2, exactly one stderr line starting
with ``error:``, no traceback, and nothing written (the folder's tree is
unchanged). ``CLASS_COUNTS`` at the bottom is checked against the issue's
minimum of 100 cases.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.helpers.cli import assert_one_error_line, invoke, tree

Setup = Callable[[Path], list[str]]  # builds files under the folder; returns the CLI arguments


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    setup: Setup

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.name}"


CASES: list[Case] = []


def case(kind: str, name: str, setup: Setup) -> None:
    CASES.append(Case(kind, name, setup))


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _jsonl(*rows: object) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


HEADER = {"tunelens_task": 1, "definition": "Is it an animal?", "labels": ["no", "yes"]}
ROWS = [{"input": f"word {i}", "output": "yes" if i % 2 else "no"} for i in range(12)]
GOOD_TASK = _jsonl(HEADER, *ROWS)

# --- task files: `tunelens tasks validate FILE` -----------------------------------------

SUPERNI = {
    "Definition": ["Say yes or no."],
    "Instances": [{"id": "t-1", "input": "x", "output": ["yes"]}],
}


def superni(**changes: object) -> str:
    data = {**SUPERNI, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not None})


TASK_FILES: dict[str, tuple[str, str | bytes]] = {
    "json-syntax": ("t.json", "{not json"),
    "json-empty": ("t.json", ""),
    "json-blank": ("t.json", "  \n\n"),
    "json-top-level-list": ("t.json", "[]"),
    "json-top-level-string": ("t.json", '"task"'),
    "json-nested-deeply": ("t.json", "[" * 200_000 + "]" * 200_000),
    "json-5001-digit-id": ("t.json", superni()[:-1] + ', "x": ' + "9" * 5001 + "}"),
    "json-not-utf8": ("t.json", b'{"Definition": "\xff\xfe"}'),
    "json-no-definition": ("t.json", superni(Definition=None)),
    "json-definition-number": ("t.json", superni(Definition=3)),
    "json-no-instances": ("t.json", superni(Instances=None)),
    "json-instances-empty": ("t.json", superni(Instances=[])),
    "json-instances-not-list": ("t.json", superni(Instances={"a": 1})),
    "json-instance-no-output": ("t.json", superni(Instances=[{"id": "a", "input": "x"}])),
    "json-output-empty-list": (
        "t.json",
        superni(Instances=[{"id": "a", "input": "x", "output": []}]),
    ),
    "json-output-not-string": (
        "t.json",
        superni(Instances=[{"id": "a", "input": "x", "output": [1]}]),
    ),
    "json-input-not-string": (
        "t.json",
        superni(Instances=[{"id": "a", "input": ["x"], "output": ["y"]}]),
    ),
    "json-duplicate-ids": (
        "t.json",
        superni(Instances=[{"id": "a", "input": "x", "output": ["y"]}] * 2),
    ),
    "json-examples-not-list": ("t.json", superni(**{"Positive Examples": "nope"})),
    "jsonl-syntax": ("t.jsonl", '{"input": "x", "output": "y"}\n{bad\n'),
    "jsonl-line-is-list": ("t.jsonl", '["x", "y"]\n'),
    "jsonl-nested-deeply": ("t.jsonl", "[" * 200_000 + "]" * 200_000 + "\n"),
    "jsonl-not-utf8": ("t.jsonl", b'{"input": "\xc3\x28", "output": "y"}\n'),
    "jsonl-empty": ("t.jsonl", ""),
    "jsonl-labels-empty": ("t.jsonl", _jsonl({**HEADER, "labels": []}, *ROWS)),
    "jsonl-label-empty-string": ("t.jsonl", _jsonl({**HEADER, "labels": ["", "yes"]}, *ROWS)),
    "jsonl-label-spaces": ("t.jsonl", _jsonl({**HEADER, "labels": ["  ", "no", "yes"]}, *ROWS)),
    "jsonl-labels-not-list": ("t.jsonl", _jsonl({**HEADER, "labels": "yes"}, *ROWS)),
    "jsonl-output-not-a-label": ("t.jsonl", _jsonl(HEADER, {"input": "x", "output": "maybe"})),
    "jsonl-header-not-first": ("t.jsonl", _jsonl(*ROWS[:2], HEADER)),
    "jsonl-no-input": ("t.jsonl", _jsonl(HEADER, {"output": "yes"})),
    "jsonl-output-blank": ("t.jsonl", _jsonl({"input": "x", "output": "  "})),
    "jsonl-task-name-empty": ("t.jsonl", _jsonl({**HEADER, "task": " "}, *ROWS)),
    "jsonl-examples-not-list": ("t.jsonl", _jsonl({**HEADER, "examples": 3}, *ROWS)),
    "jsonl-id-not-string": ("t.jsonl", _jsonl({"input": "x", "output": "y", "id": [1]})),
    "unknown-suffix": ("t.txt", "input,output\n"),
    # Issue 32: a key given twice in any JSON object; labels that exact match cannot tell apart.
    "json-key-twice": ("t.json", superni()[:-1] + ', "Definition": ["Say no."]}'),
    "json-instance-key-twice": (
        "t.json",
        superni(Instances=[]).replace(
            '"Instances": []', '"Instances": [{"input": "x", "output": ["y"], "input": "z"}]'
        ),
    ),
    "jsonl-header-key-twice": (
        "t.jsonl",
        json.dumps(HEADER)[:-1] + ', "definition": "Is it a plant?"}\n' + _jsonl(*ROWS),
    ),
    "jsonl-row-key-twice": (
        "t.jsonl",
        _jsonl(HEADER) + '{"input": "x", "output": "no", "input": "y"}\n',
    ),
    "jsonl-labels-case-twins": (
        "t.jsonl",
        _jsonl({**HEADER, "labels": ["no", "yes", "Yes"]}, *ROWS),
    ),
    "jsonl-labels-space-twins": (
        "t.jsonl",
        _jsonl({**HEADER, "labels": ["yes", "yes ", " yes", "no"]}, *ROWS),
    ),
    "jsonl-labels-punctuation-twins": (
        "t.jsonl",
        _jsonl({**HEADER, "labels": ["yes", "yes.", "no"]}, *ROWS),
    ),
}
for _name, (_file, _content) in TASK_FILES.items():
    case(
        "task file",
        _name,
        lambda d, f=_file, c=_content: ["tasks", "validate", str(_write(d / "in" / f, c))],
    )
case("task file", "missing-path", lambda d: ["tasks", "validate", str(d / "nowhere.json")])
case("task file", "empty-folder", lambda d: ["tasks", "show", str(_mkdir(d / "in"))])


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _dev_zero(d: Path) -> list[str]:
    link = d / "in" / "zero.json"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("/dev/zero")
    return ["tasks", "validate", str(link)]


case("task file", "dev-zero", _dev_zero)


def _split_missing_task(d: Path) -> list[str]:
    _write(d / "in" / "tasks" / "a.jsonl", GOOD_TASK)
    split = _write(d / "in" / "splits" / "default" / "test_tasks.txt", "a\nmissing_task\n")
    return ["tasks", "show", str(split)]


case("task file", "split-names-missing-task", _split_missing_task)


def _two_tasks_one_name(d: Path) -> list[str]:
    _write(d / "in" / "one" / "same.jsonl", GOOD_TASK)
    _write(d / "in" / "two" / "same.jsonl", GOOD_TASK)
    return ["tasks", "show", str(d / "in")]


case("task file", "same-name-twice", _two_tasks_one_name)

# --- specs: `tunelens run SPEC --out DIR` -----------------------------------------------

SPECS: dict[str, str | bytes] = {
    "unknown-top-key": "modle: world\n",
    "unknown-nested-key": "convergence:\n  kk: 3\n",
    "yaml-syntax": "convergence: [1\n",
    "yaml-python-tag": "seed: !!python/object/apply:os.system ['touch PWNED']\n",
    "not-a-mapping": "- 1\n- 2\n",
    "empty": "",
    "not-utf8": b"seed: \xff\n",
    "duplicate-top-key": "seed: 1\nnote: x\nseed: 2\n",
    "duplicate-nested-key": "audit:\n  seeds: [0]\n  seeds: [1]\n",
    "nested-deeply": "note: " + "[" * 5000 + "]" * 5000 + "\n",
    "5001-digit-seed": "seed: " + "9" * 5001 + "\n",
    "k-negative": "convergence:\n  k: [-1]\n",
    "k-zero": "convergence:\n  k: [0]\n",
    "k-bool": "convergence:\n  k: [true]\n",
    "k-float": "convergence:\n  k: [2.5]\n",
    "k-string": "convergence:\n  k: ['3']\n",
    "k-empty": "convergence:\n  k: []\n",
    "k-twice": "convergence:\n  k: [4, 4]\n",
    "k-larger-than-tasks": "convergence:\n  k: [500]\n",
    "seeds-negative": "convergence:\n  seeds: [-1]\n",
    "seeds-too-large": "audit:\n  seeds: [4294967296]\n",
    "seed-float": "seed: 1e23\n",
    "seed-bool": "seed: true\n",
    "lr-inf": "audit:\n  tuning:\n    learning_rate: .inf\n",
    "lr-nan": "convergence:\n  tuning:\n    learning_rate: .nan\n",
    "lr-zero": "convergence:\n  tuning:\n    learning_rate: 0\n",
    "lr-string": "convergence:\n  tuning:\n    learning_rate: fast\n",
    "tuning-seed": "convergence:\n  tuning:\n    seed: 3\n",
    "epochs-zero": "audit:\n  tuning:\n    epochs: 0\n",
    "batch-negative": "audit:\n  tuning:\n    batch_size: -1\n",
    "lora-dropout-one": "convergence:\n  tuning:\n    lora_dropout: 1.0\n",
    "flip-fraction-above-one": "convergence:\n  flip_fraction: [1.5]\n",
    "relevance-unknown": "convergence:\n  relevance: [nearby]\n",
    "controls-unknown": "convergence:\n  controls: [none, placebo]\n",
    "template-unknown": "convergence:\n  template: fancy\n",
    "dtype-unknown": "dtype: float64\n",
    "instances-zero": "audit:\n  instances_per_task: [0]\n",
    "instances-negative": "audit:\n  instances_per_task: [-5]\n",
    "instances-word": "audit:\n  instances_per_task: [half]\n",
    "definitions-unknown": "audit:\n  definitions: [original, rewritten]\n",
    "n-pairs-one": "convergence:\n  n_pairs: 1\n",
    "eval-instances-zero": "audit:\n  eval_instances_per_task: 0\n",
    "bootstrap-small": "audit:\n  bootstrap: 10\n",
    "section-not-mapping": "audit: yes\n",
    "world-eval-shots-negative": "world_eval:\n  shots: [-1]\n",
    "world-eval-queries-zero": "world_eval:\n  queries_per_task: 0\n",
    "tasks-missing": "convergence:\n  tasks: nowhere/tasks.jsonl\n",
    "model-missing": "model: nowhere/model\nconvergence: {}\n",
}
for _name, _text in SPECS.items():
    case(
        "spec",
        _name,
        lambda d, t=_text: ["run", str(_write(d / "in" / "spec.yaml", t)), "--out", str(d / "out")],
    )
case("spec", "is-a-folder", lambda d: ["run", str(_mkdir(d / "in")), "--out", str(d / "out")])
case("spec", "missing", lambda d: ["run", str(d / "absent.yaml"), "--out", str(d / "out")])

# --- cost files: `tunelens decide --costs FILE` (read before any model loads) ---------------

COSTS: dict[str, tuple[str, str | bytes]] = {
    "csv-no-header": ("c.csv", "no,yes,1\nyes,no,1\n"),
    "csv-wrong-columns": ("c.csv", "true,pred\nno,yes\n"),
    "csv-unknown-label": ("c.csv", "true,predicted,cost\nno,yse,1\nyes,no,1\n"),
    "csv-negative-cost": ("c.csv", "true,predicted,cost\nno,yes,-1\nyes,no,1\n"),
    "csv-nan-cost": ("c.csv", "true,predicted,cost\nno,yes,nan\nyes,no,1\n"),
    "csv-inf-cost": ("c.csv", "true,predicted,cost\nno,yes,inf\nyes,no,1\n"),
    "csv-word-cost": ("c.csv", "true,predicted,cost\nno,yes,lots\nyes,no,1\n"),
    "csv-pair-twice": ("c.csv", "true,predicted,cost\nno,yes,1\nno,yes,2\nyes,no,1\n"),
    "csv-missing-wrong-pair": ("c.csv", "true,predicted,cost\nno,yes,1\n"),
    "yaml-key-twice": ("c.yaml", "no: {yes: 1}\nyes: {no: 2}\nno: {yes: 3}\n"),
    "yaml-inner-key-twice": ("c.yaml", "no: {yes: 1, yes: 2}\nyes: {no: 2}\n"),
    "yaml-syntax": ("c.yaml", "no: {yes: 1\n"),
    "yaml-list": ("c.yaml", "- 1\n"),
    "yaml-row-not-mapping": ("c.yaml", "no: [yes, 1]\nyes: {no: 1}\n"),
    "json-syntax": ("c.json", "{"),
    "json-nested-deeply": ("c.json", "[" * 200_000 + "]" * 200_000),
    "unknown-suffix": ("c.txt", "no yes 1\n"),
    "not-utf8": ("c.csv", b"true,predicted,cost\n\xff,yes,1\n"),
    "empty": ("c.csv", ""),
}
# Issue 32: JSON is refused a key given twice as YAML and CSV are (the last used to win);
# with --k 1 the task splits, so these would otherwise run.
for _name, _text in {
    "json-key-twice": '{"no": {"yes": 1}, "yes": {"no": 2}, "no": {"yes": 1000}}',
    "json-inner-key-twice": '{"no": {"yes": 1, "yes": 1000}, "yes": {"no": 2}}',
}.items():
    case(
        "cost file",
        _name,
        lambda d, t=_text: [
            *("decide", "--task", str(_write(d / "in" / "task.jsonl", GOOD_TASK))),
            *("--model", "world", "--k", "1", "--out", str(d / "out")),
            *("--costs", str(_write(d / "in" / "c.json", t))),
        ],
    )
for _name, (_file, _content) in COSTS.items():
    case(
        "cost file",
        _name,
        lambda d, f=_file, c=_content: [
            "decide",
            "--task",
            str(_write(d / "in" / "task.jsonl", GOOD_TASK)),
            "--model",
            "world",
            "--costs",
            str(_write(d / "in" / f, c)),
            "--out",
            str(d / "out"),
        ],
    )

# --- example files: `tunelens examples add --from FILE` (read before the store is made) ----

EXAMPLES: dict[str, tuple[str, str | bytes]] = {
    "jsonl-syntax": ("e.jsonl", '{"input": "a", "output": "b"}\n{oops\n'),
    "jsonl-line-is-list": ("e.jsonl", '["a", "b"]\n'),
    "jsonl-no-input": ("e.jsonl", '{"output": "b"}\n'),
    "jsonl-no-output": ("e.jsonl", '{"input": "a"}\n'),
    "jsonl-input-not-string": ("e.jsonl", '{"input": 3, "output": "b"}\n'),
    "jsonl-accepted-not-bool": ("e.jsonl", '{"input": "a", "output": "b", "accepted": "maybe"}\n'),
    "jsonl-bad-time": ("e.jsonl", '{"input": "a", "output": "b", "time": "yesterday"}\n'),
    "jsonl-nested-deeply": ("e.jsonl", "[" * 200_000 + "]" * 200_000 + "\n"),
    "jsonl-5001-digit-number": (
        "e.jsonl",
        '{"input": "a", "output": "b", "n": ' + "9" * 5001 + "}\n",
    ),
    "jsonl-not-utf8": ("e.jsonl", b'{"input": "\xff", "output": "b"}\n'),
    "jsonl-empty": ("e.jsonl", ""),
    "csv-missing-columns": ("e.csv", "text,answer\na,b\n"),
    "csv-not-utf8": ("e.csv", b"input,output\n\xff,b\n"),
    "unknown-suffix": ("e.txt", "a -> b\n"),
}
for _name, (_file, _content) in EXAMPLES.items():
    case(
        "example file",
        _name,
        lambda d, f=_file, c=_content: [
            "examples",
            "add",
            "--db",
            str(d / "out" / "ex.sqlite"),
            "--from",
            str(_write(d / "in" / f, c)),
        ],
    )
# Issue 32: these would be stored (the store's folder exists) if they were not refused.
for _name, _content in {
    "jsonl-key-twice": '{"input": "a", "output": "b", "output": "c"}\n',
    "jsonl-task-headers-only": _jsonl({"tunelens_task": 1, "task": "t"}),
}.items():
    case(
        "example file",
        _name,
        lambda d, c=_content: [
            *("examples", "add", "--db", str(d / "ex.sqlite")),
            *("--from", str(_write(d / "in" / "e.jsonl", c))),
        ],
    )
case(
    "example file",
    "store-is-not-sqlite",
    lambda d: ["examples", "list", "--db", str(_write(d / "in" / "ex.sqlite", "not sqlite"))],
)

# --- output paths that are inputs (issue 32): refused before anything is written -----------


def _store(d: Path) -> Path:
    from tunelens.examples.store import ExampleStore, NewExample

    db = d / "in" / "ex.sqlite"
    db.parent.mkdir(parents=True, exist_ok=True)
    with ExampleStore(db) as store:
        store.add([NewExample("a film", "positive"), NewExample("b", "x", accepted=False)])
    return db


def _export_onto_store(link: str) -> Setup:
    def setup(d: Path) -> list[str]:
        db = _store(d)
        out = db if link == "none" else d / "in" / "out.jsonl"
        if link == "symlink":
            out.symlink_to(db)
        elif link == "hardlink":
            out.hardlink_to(db)
        return ["examples", "export", "--db", str(db), "--out", str(out)]

    return setup


for _link in ("none", "symlink", "hardlink"):
    case("output path", f"examples-export-onto-its-store-{_link}", _export_onto_store(_link))
case(
    "output path",
    "examples-export-to-a-folder",
    lambda d: ["examples", "export", "--db", str(_store(d)), "--out", str(_mkdir(d / "in" / "f"))],
)


def _decide_out_holds_input(which: str) -> Setup:
    def setup(d: Path) -> list[str]:
        out = _mkdir(d / "in" / "out")
        args = ["decide", "--model", "world", "--k", "1", "--out", str(out)]  # would run
        if which == "task":
            rows = [
                {"id": f"t-{i}", "input": f"w{i}", "output": [("no", "yes")[i % 2]]}
                for i in range(12)
            ]
            task = _write(out / "decide.json", superni(Instances=rows))
            return [*args, "--task", str(task)]
        task = _write(d / "in" / "task.jsonl", GOOD_TASK)
        costs = _write(out / "decide.json", '{"no": {"yes": 1}, "yes": {"no": 1}}')
        return [*args, "--task", str(task), "--costs", str(costs)]

    return setup


case("output path", "decide-out-holds-the-task", _decide_out_holds_input("task"))
case("output path", "decide-out-holds-the-costs", _decide_out_holds_input("costs"))


def _export_onto_results(d: Path) -> list[str]:
    run = _mkdir(d / "in" / "run")
    _write(run / "results.json", "{}")
    return ["export", str(run), "--out", str(run / "results.json")]


def _export_table_links_to_results(d: Path) -> list[str]:
    run = _mkdir(d / "in" / "run")
    _write(run / "results.json", "{}")
    (_mkdir(run / "export") / "audit.csv").symlink_to(run / "results.json")
    return ["export", str(run)]


def _run_spec_is_its_results(d: Path) -> list[str]:
    spec = _write(
        d / "in" / "out" / "results.json", "world_eval: {shots: [0], queries_per_task: 1}\n"
    )
    return ["run", str(spec), "--out", str(d / "in" / "out"), "--no-progress"]


case("output path", "run-spec-is-its-results-json", _run_spec_is_its_results)
case("output path", "export-out-is-results-json", _export_onto_results)
case("output path", "export-table-links-to-results-json", _export_table_links_to_results)

# --- label spaces decide cannot score (issue 32) -------------------------------------------


def _decide_labels(labels: list[str]) -> Setup:
    def setup(d: Path) -> list[str]:
        rows = [{"input": f"w{i}", "output": labels[i % len(labels)]} for i in range(12)]
        task = _write(d / "in" / "task.jsonl", _jsonl({**HEADER, "labels": labels}, *rows))
        args = ["decide", "--task", str(task), "--model", "world", "--out", str(d / "out")]
        return [*args, "--k", "1"]  # the task splits: it would run if not refused

    return setup


LABEL_SPACES = {
    "case-twins": ["Yes", "yes"],
    "case-twins-of-three": ["YES", "yes", "no"],
    "space-twins": ["yes", "yes ", " yes"],
    "punctuation-twins": ["yes", "yes.", "no"],
    "bucket-name": ["(other)", "yes", "no"],
    "bucket-name-cased": ["(Other)", "yes", "no"],
    "punctuation-only": ["+", "yes"],
}
for _name, _labels in LABEL_SPACES.items():
    case("label space", _name, _decide_labels(_labels))

# --- model directories: `tunelens world eval --model DIR` --------------------------------


def _tiny_model_dir(d: Path) -> Path:
    from tests.conftest import build_tiny_model

    model, tokenizer = build_tiny_model("llama")
    directory = d / "in" / "model"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _weights(directory: Path, edit: Callable[[dict], None]) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(directory / "model.safetensors")
    edit(weights)
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _pickle_only(directory: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()


def _drop(names: int) -> Callable[[dict], None]:
    def edit(weights: dict) -> None:
        for name in sorted(weights)[:names]:
            del weights[name]

    return edit


def _vit(directory: Path) -> None:
    (directory / "config.json").write_text(
        json.dumps(
            {
                "model_type": "vit",
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
            }
        )
    )


MODEL_DAMAGE: dict[str, Callable[[Path], object]] = {
    "no-config": lambda m: (m / "config.json").unlink(),
    "config-syntax": lambda m: (m / "config.json").write_text("{not json"),
    "config-unknown-type": lambda m: (m / "config.json").write_text('{"model_type": "nope"}'),
    "config-not-a-language-model": _vit,
    "config-a-layer-more": lambda m: _config(m, num_hidden_layers=3),
    "config-hidden-size-off": lambda m: _config(m, hidden_size=48),
    "config-vocab-too-small": lambda m: _config(m, vocab_size=8),
    "no-weights": lambda m: (m / "model.safetensors").unlink(),
    "pickle-weights-only": _pickle_only,
    "weights-garbage": lambda m: (m / "model.safetensors").write_bytes(b"\x00garbage" * 64),
    "weights-empty-file": lambda m: (m / "model.safetensors").write_bytes(b""),
    "weights-truncated": lambda m: (m / "model.safetensors").write_bytes(
        (m / "model.safetensors").read_bytes()[:400]
    ),
    "weights-one-missing": lambda m: _weights(m, _drop(1)),
    "weights-nine-missing": lambda m: _weights(m, _drop(9)),
    "weights-unexpected-tensor": lambda m: _weights(
        m, lambda w: w.update({"extra.bias": w[sorted(w)[0]][:1].clone()})
    ),
    "no-tokenizer": lambda m: [
        p.unlink() for p in m.iterdir() if p.name.startswith(("tokenizer", "special"))
    ],
}


for _name, _damage in MODEL_DAMAGE.items():

    def _model_case(d: Path, damage: Callable[[Path], object] = _damage) -> list[str]:
        directory = _tiny_model_dir(d)
        damage(directory)
        return [
            "world",
            "eval",
            "--model",
            str(directory),
            "--shots",
            "0",
            "--queries",
            "1",
            "--no-progress",
        ]

    case("model directory", _name, _model_case)
case(
    "model directory",
    "missing",
    lambda d: ["world", "eval", "--model", str(d / "nowhere"), "--shots", "0"],
)
case(
    "model directory",
    "a-file",
    lambda d: ["world", "eval", "--model", str(_write(d / "in" / "m.bin", "x")), "--shots", "0"],
)

# --- CLI options ------------------------------------------------------------------------

OPTIONS: dict[str, list[str]] = {
    "world-eval-queries-zero": ["world", "eval", "--queries", "0"],
    "world-eval-queries-word": ["world", "eval", "--queries", "many"],
    "world-eval-shots-word": ["world", "eval", "--shots", "a,b"],
    "world-eval-shots-negative": ["world", "eval", "--shots", "-1"],
    "world-eval-shots-empty": ["world", "eval", "--shots", ","],
    "world-eval-shots-too-large": ["world", "eval", "--shots", "500", "--queries", "1"],
    "world-eval-seed-negative": ["world", "eval", "--seed", "-1"],
    "world-export-instances-negative": ["world", "export", "x", "--instances", "-1"],
    "world-export-n-train-zero": ["world", "export", "x", "--n-train", "0"],
    "world-train-threads-zero": ["world", "train-model", "--workdir", "w", "--threads", "0"],
    "world-train-size-unknown": ["world", "train-model", "--workdir", "w", "--size", "huge"],
    "world-train-it-small": [
        "world",
        "train-model",
        "--workdir",
        "w",
        "--size",
        "small",
        "--instruction-tune",
    ],
    "world-eval-labels-unknown": ["world", "eval", "--labels", "odd", "--shots", "0"],
    "world-train-steps-negative": ["world", "train-model", "--workdir", "w", "--steps", "-5"],
    "world-train-bursty-above-one": ["world", "train-model", "--workdir", "w", "--bursty", "2"],
    "world-train-category-init-nan": [
        "world",
        "train-model",
        "--workdir",
        "w",
        "--category-init",
        "nan",
    ],
    "world-train-seed-too-large": [
        "world",
        "train-model",
        "--workdir",
        "w",
        "--seed",
        str(2**32),
    ],
    "convergence-k-zero": ["convergence", "--k", "0"],
    "convergence-k-word": ["convergence", "--k", "x"],
    "convergence-k-empty": ["convergence", "--k", ","],
    "convergence-k-5001-digits": ["convergence", "--k", "9" * 5001],
    "convergence-seeds-negative": ["convergence", "--seeds", "-1"],
    "convergence-flip-above-one": ["convergence", "--flip-fraction", "2"],
    "convergence-lr-inf": ["convergence", "--learning-rate", "inf"],
    "convergence-lr-negative": ["convergence", "--learning-rate", "-1"],
    "convergence-epochs-zero": ["convergence", "--epochs", "0"],
    "convergence-relevance-unknown": ["convergence", "--relevance", "near"],
    "convergence-definition-maybe": ["convergence", "--definition", "maybe"],
    "convergence-n-pairs-one": ["convergence", "--n-pairs", "1"],
    "convergence-dtype-unknown": ["convergence", "--dtype", "float64"],
    "audit-instances-zero": ["audit", "--instances-per-task", "0"],
    "audit-definitions-unknown": ["audit", "--definitions", "rewritten"],
    "audit-eval-instances-zero": ["audit", "--eval-instances-per-task", "0"],
    "run-executor-unknown": ["run", "--out", "o", "--executor", "slurm"],
    "run-unknown-option": ["run", "--out", "o", "--fast"],
    "run-no-out": ["run"],
    "examples-list-limit-zero": ["examples", "list", "--limit", "0"],
    "examples-add-input-only": ["examples", "add", "--input", "a"],
    "unknown-command": ["bogus"],
}
for _name, _args in OPTIONS.items():
    case("CLI option", _name, lambda d, a=_args: list(a))


def _decide_option(*extra: str) -> Setup:
    def setup(d: Path) -> list[str]:
        task = _write(d / "in" / "task.jsonl", GOOD_TASK)
        return ["decide", "--task", str(task), "--model", "world", "--out", str(d / "out"), *extra]

    return setup


case("CLI option", "decide-k-zero", _decide_option("--k", "0"))
case("CLI option", "decide-k-word", _decide_option("--k", "x"))
case("CLI option", "decide-test-size-above-one", _decide_option("--test-size", "2.5"))
case("CLI option", "decide-lr-nan", _decide_option("--lr", "nan"))
# Issue 32: every numeric option bounded before any model loads (tunelens.bounds); with
# --k 1 the task splits, so each of these would otherwise run (or crash after every cell).
case("CLI option", "decide-seed-negative", _decide_option("--k", "1", "--seed", "-1"))
case("CLI option", "decide-seed-10-to-23", _decide_option("--k", "1", "--seed", str(10**23)))
case("CLI option", "decide-bootstrap-2e9", _decide_option("--k", "1", "--bootstrap", "2000000000"))
case(
    "CLI option",
    "decide-max-new-tokens-huge",
    _decide_option("--k", "1", "--max-new-tokens", str(10**11)),
)
case(
    "CLI option",
    "decide-tune-sizes-huge",
    _decide_option("--k", "1", "--tune-sizes", f"8,{10**30}"),
)
case("CLI option", "decide-test-size-inf", _decide_option("--k", "1", "--test-size", "inf"))
case("CLI option", "decide-lora-r-huge", _decide_option("--k", "1", "--lora-r", str(10**12)))
case("CLI option", "decide-epochs-huge", _decide_option("--k", "1", "--epochs", str(10**14)))
case("CLI option", "run-limit-huge", lambda d: ["run", "--out", "o", "--limit", str(10**23)])
case("CLI option", "audit-seed-huge", lambda d: ["audit", "--seed", str(2**32)])
case(
    "CLI option", "examples-list-limit-huge", lambda d: ["examples", "list", "--limit", str(10**20)]
)
case(
    "CLI option",
    "world-train-threads-huge",
    lambda d: ["world", "train-model", "--workdir", "w", "--threads", str(10**11)],
)
case(
    "CLI option",
    "world-train-until-huge",
    lambda d: ["world", "train-model", "--workdir", "w", "--until", str(10**23)],
)


CLASS_COUNTS = {
    kind: sum(c.kind == kind for c in CASES) for kind in dict.fromkeys(c.kind for c in CASES)
}


def test_the_suite_covers_every_class_with_at_least_100_cases():
    assert len(CASES) >= 100, CLASS_COUNTS
    assert set(CLASS_COUNTS) == {
        "task file",
        "spec",
        "cost file",
        "example file",
        "model directory",
        "CLI option",
        "output path",
        "label space",
    }
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bad, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    args = bad.setup(tmp_path)
    before = tree(tmp_path)
    result = invoke(*args, cwd=tmp_path)
    assert_one_error_line(result)
    assert tree(tmp_path) == before, sorted(tree(tmp_path) - before)
    assert not (tmp_path / "PWNED").exists()
