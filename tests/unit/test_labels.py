"""The label-space rule: classification when labels repeat or the definition lists them."""

from __future__ import annotations

from tunelens.tasks.labels import MAX_LABELS, derive_label_space


def test_repeating_labels_are_a_sorted_space():
    outputs = [["yes"], ["no"], ["yes"], ["no"], ["no"]]
    assert derive_label_space(outputs) == ("no", "yes")


def test_unique_free_text_outputs_are_not_a_space():
    outputs = [[f"a sentence number {i}"] for i in range(30)]
    assert derive_label_space(outputs) is None


def test_too_many_distinct_outputs_are_free_text_even_if_they_repeat():
    outputs = [[f"label{i % (MAX_LABELS + 1)}"] for i in range(10 * (MAX_LABELS + 1))]
    assert derive_label_space(outputs) is None


def test_unrepeated_labels_named_by_the_definition_are_a_space():
    outputs = [["BANK_BOT"], ["CITY_INFO"], ["SHOPPING"]]
    definition = "Classify into one of: 'BANK_BOT', 'CITY_INFO', 'SHOPPING', 'SKI_BOT'."
    assert derive_label_space(outputs) is None
    assert derive_label_space(outputs, definition=definition) == (
        "BANK_BOT",
        "CITY_INFO",
        "SHOPPING",
    )


def test_definition_match_needs_whole_words_and_every_output():
    outputs = [["cat"], ["dog"], ["emu"]]
    assert derive_label_space(outputs, definition="concatenate the dogma of emus") is None
    assert derive_label_space(outputs, definition="say cat or dog") is None
    assert derive_label_space(outputs, definition="Say Cat, Dog or Emu.") == ("cat", "dog", "emu")


def test_every_reference_counts_and_empty_input_is_free_text():
    assert derive_label_space([["Yes", "yes"], ["no"], ["no"], ["Yes"], ["no"], ["yes"]]) == (
        "Yes",
        "no",
        "yes",
    )
    assert derive_label_space([]) is None
