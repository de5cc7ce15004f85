"""The label-space rule: classification when labels repeat or the definition lists them."""

from __future__ import annotations

from tunelens.tasks.labels import MAX_LABELS, derive_label_space, label_space, quoted_spans


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
    # The enumeration names SKI_BOT too: kept, and reported as never used.
    space = label_space(outputs, definition=definition)
    assert space.labels == ("BANK_BOT", "CITY_INFO", "SHOPPING", "SKI_BOT")
    assert space.source == "definition" and space.unseen == ("SKI_BOT",)


def test_definition_match_needs_whole_words_and_every_output():
    outputs = [["cat"], ["dog"], ["emu"]]
    assert derive_label_space(outputs, definition="concatenate the dogma of emus") is None
    assert derive_label_space(outputs, definition="say cat or dog") is None
    assert derive_label_space(outputs, definition="Say Cat, Dog or Emu.") == ("cat", "dog", "emu")


def test_every_reference_counts_and_empty_input_is_free_text():
    # every reference counts; "Yes" and "yes" are one answer to exact match, so one label
    # (2 outputs each: the tie goes to the first in sorted order)
    assert derive_label_space([["Yes", "yes"], ["no"], ["no"], ["Yes"], ["no"], ["yes"]]) == (
        "Yes",
        "no",
    )
    assert derive_label_space([["Yes"], ["no"], ["no"], ["Yes"], ["no"], ["yes"]]) == ("Yes", "no")
    assert derive_label_space([["yes"], ["no"], ["yes"], ["Yes"], ["no"]]) == ("no", "yes")
    assert derive_label_space([]) is None


def test_quoted_labels_match_outputs_after_normalisation():
    outputs = [["Yes."], ["No."]] * 3
    definition = 'If enough, label "Yes", otherwise label "No". Don\'t guess.'
    space = label_space(outputs, definition=definition)
    assert space.labels == ("No.", "Yes.") and space.source == "definition"
    assert space.unseen == ()


def test_a_quoted_list_keeps_a_label_no_instance_uses():
    # SuperNI task843: the kept instances never use "negative".
    outputs = [["positive"]] * 5 + [["neutral"]] * 2
    definition = "Output must be 'positive', 'negative', or 'neutral'."
    space = label_space(outputs, definition=definition)
    assert space.labels == ("negative", "neutral", "positive")
    assert space.unseen == ("negative",)


def test_quoted_spans_that_are_no_labels_stay_out():
    outputs = [["trash"], ["treasure"]] * 3
    definition = (
        'Analogies in the form "A : B. C : ?". Replace the question mark with either '
        "`trash` or `treasure`."
    )
    assert label_space(outputs, definition=definition).labels == ("trash", "treasure")
    assert [t for _, _, t in quoted_spans("you're given 'x', and 'y'")] == ["x", "y"]


def test_bare_single_letters_must_match_case_and_not_sit_in_abbreviations():
    outputs = [["C"], ["N"], ["C"], ["N"]]
    definition = "Answer in the form of the letters E, C, and N respectively."
    space = label_space(outputs, definition=definition, example_outputs=["E", "N"])
    assert space.labels == ("C", "E", "N") and space.unseen == ("E",)
    # "e" in "i.e." and lower-case "c" name nothing.
    weak = "Say which, i.e. pick c or n."
    assert label_space([["e"], ["C"]] * 3, definition=weak) == label_space(
        [["e"], ["C"]] * 3, definition=""
    )


def test_outputs_the_definition_does_not_name_fall_back_to_the_instances():
    outputs = [["Correct"], ["Wrong"]] * 3
    definition = "Knowledge types: 'Property', 'Object'. Judge the reasoning."
    space = label_space(outputs, definition=definition)
    assert space.labels == ("Correct", "Wrong") and space.source == "instances"
