"""The renamed behaviour keys (issue 26): label accuracy now, first-token results still load.

Convergence code version 11 scores each label by its whole continuation and
writes ``behaviour.label_accuracy`` and ``behaviour.scoring``; results.json
written before holds ``behaviour.next_token_accuracy`` (the first-token
reading), which must still validate and be described as what it was.
"""

from __future__ import annotations

import copy

from tests.unit.test_convergence_calibrated_aggregate import cell

from tunelens.experiments.convergence import aggregate_convergence
from tunelens.experiments.convergence.results import dump_convergence
from tunelens.experiments.convergence.words import convergence_sentences


def test_new_entries_hold_label_accuracy_and_how_it_was_read():
    (entry,) = aggregate_convergence([cell(0), cell(1)])
    behaviour = entry["behaviour"]
    assert set(behaviour["label_accuracy"]) == {"anchor", "icl", "it"}
    assert "next_token_accuracy" not in behaviour
    assert behaviour["scoring"]["method"].startswith("label log-likelihood")
    text = " ".join(convergence_sentences(entry))
    assert "next-token" not in text and "Over the labels KL(ICL || IT)" in text


def test_results_written_before_the_rename_still_load_and_say_next_token():
    (entry,) = aggregate_convergence([cell(0), cell(1)])
    old = copy.deepcopy(entry)
    behaviour = old["behaviour"]
    behaviour["next_token_accuracy"] = behaviour.pop("label_accuracy")
    del behaviour["scoring"]
    (loaded,) = dump_convergence([old])
    assert loaded["behaviour"]["next_token_accuracy"] == entry["behaviour"]["label_accuracy"]
    assert "label_accuracy" not in loaded["behaviour"]
    text = " ".join(convergence_sentences(loaded))
    assert "label accuracy" not in text and "At the answer position KL(ICL || IT)" in text
