"""The second-generation world corpus and the novel-label evaluation tasks."""

from __future__ import annotations

import functools
import hashlib
import random
import re

import pytest

from tunelens.errors import TunelensInputError
from tunelens.models.world_model import _Batcher, build_tokenizer, recipe_for_size
from tunelens.tasks.world.corpus import SEP, CorpusMix, training_sequence
from tunelens.tasks.world.generator import (
    definition_blind_upper_bound,
    draw_rule,
    generate_world,
)
from tunelens.tasks.world.lexicon import LABEL_WORDS, NOVEL_LABEL_WORDS, WORD_CATEGORY
from tunelens.tasks.world.relabel import relabel_tasks, with_novel_labels

WORLD = generate_world(0)


def _sequences(mix: CorpusMix, n: int, seed: int = 0) -> list[list[str]]:
    recipe = recipe_for_size("base")
    batcher = _Batcher(recipe, build_tokenizer(0, recipe.vocabulary))
    rng = random.Random(seed)
    return [
        training_sequence(
            rng,
            seed=0,
            max_tokens=128,
            tokenize=batcher._tokenize,
            forbidden_label_sets=batcher.forbidden,
            mix=mix,
        )[0]
        for _ in range(n)
    ]


def _answers(tokens: list[str]) -> list[str]:
    return [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "Output:"]


def test_novel_words_occur_in_training_but_never_as_a_label():
    sequences = _sequences(recipe_for_size("base").mix(), 200)
    seen = {t for seq in sequences for t in seq}
    answers = {a for seq in sequences for a in _answers(seq)}
    assert set(NOVEL_LABEL_WORDS) & seen, "copy sequences should show the novel words"
    assert not set(NOVEL_LABEL_WORDS) & answers
    # Foreign labels: some answers are category words (of categories the rule does not use).
    assert answers & set(WORD_CATEGORY) and answers & set(LABEL_WORDS)


def test_definition_blocks_name_the_labels_their_examples_use():
    mix = CorpusMix(definition_blocks=1.0, facts=0.0)
    for tokens in _sequences(mix, 50, seed=3):
        text = " ".join(tokens)
        blocks = text.split("Definition:")[1:]
        assert len(blocks) >= 2
        for block in blocks:
            definition, _, examples = block.partition(SEP)
            named = set(re.findall(r'" (\S+) "', definition)) | set(
                re.findall(r'" (\S+) "\.', definition)
            )
            answers = _answers(examples.split())
            assert answers and set(answers) <= named, (definition, answers)


def test_the_first_recipe_draws_none_of_the_new_kinds():
    sequences = _sequences(CorpusMix(bursty=0.5, all_tokens_loss=True), 150)
    assert not {t for seq in sequences for t in seq} & set(NOVEL_LABEL_WORDS)
    assert all(" ".join(seq).count("Definition:") <= 1 for seq in sequences)


def test_novel_labels_replace_every_label_word_and_keep_the_twin_structure():
    tasks = relabel_tasks(WORLD.heldout, "novel")
    for old, new in zip(WORLD.heldout, tasks, strict=True):
        assert new.labels and set(new.labels) <= set(NOVEL_LABEL_WORDS)
        assert {o for i in new.instances for o in i.outputs} <= set(new.labels)
        assert [i.input for i in new.instances] == [i.input for i in old.instances]
        for word in old.labels or ():
            assert f'"{word}"' not in new.definition
        for word in new.labels:
            assert f'"{word}"' in new.definition
        assert new.metadata["labels_mode"] == "novel"
        # The mapping is one-to-one: the answers keep their partition of the inputs.
        pairs = {
            (i.outputs[0], j.outputs[0]) for i, j in zip(old.instances, new.instances, strict=True)
        }
        assert len(pairs) == len(old.labels or ())
    by_group: dict[str, set] = {}
    for task in tasks:
        by_group.setdefault(task.name[:16], set()).add(task.labels)
    assert all(len(spaces) == 1 for spaces in by_group.values())
    assert definition_blind_upper_bound(tasks) == pytest.approx(
        definition_blind_upper_bound(WORLD.heldout)
    )
    assert relabel_tasks(WORLD.heldout, "original") == list(WORLD.heldout)


def test_a_task_without_labels_cannot_be_relabelled():
    with pytest.raises(ValueError, match="no label space"):
        with_novel_labels(WORLD.heldout[0].with_changes(labels=None))


def _definition_ngrams(n: int = 4) -> set[tuple[str, ...]]:
    """The word 4-grams of 300 rules' definitions (all paraphrases) that quote a label
    (the rest, such as "is a piece of", facts share)."""
    batcher, rng = _batcher("world-base"), random.Random(11)
    grams: set[tuple[str, ...]] = set()
    for _ in range(300):
        rule = draw_rule(rng, seed=0, heldout=rng.random() < 0.5)
        for template in range(3):
            words = batcher._tokenize(rule.definition(template))
            grams |= {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
    return {gram for gram in grams if any('"' in word for word in gram)}


@functools.cache
def _batcher(size: str) -> _Batcher:
    recipe = recipe_for_size(size)
    return _Batcher(recipe, build_tokenizer(0, recipe.vocabulary))


def _base_sequences(
    n: int, family: str | None, soup: bool = False, size: str = "world-base", seed: int = 7
) -> list[list[str]]:
    recipe = recipe_for_size(size, preamble_soup=soup)
    batcher = _batcher(size)
    rng = random.Random(seed)
    return [
        training_sequence(
            rng,
            seed=0,
            max_tokens=recipe.seq_len,
            tokenize=batcher._tokenize,
            forbidden_label_sets=batcher.forbidden,
            mix=recipe.mix(),
            family=family,
        )[0]
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    ("family", "soup"), [("word_category", False), (None, False), (None, True)]
)  # the curriculum, then all families; the recipe's preambles, then word soup
def test_the_base_corpus_shows_no_definition_and_no_label_at_zero_shots(family, soup):
    labels = set(LABEL_WORDS) | set(WORD_CATEGORY)
    definitions = _definition_ngrams()
    tasks = preambles = 0
    for tokens in _base_sequences(300, family, soup):
        # No definition or its header (a preamble's word soup may hold a
        # definition's words, never a stretch of one).
        assert "Definition:" not in tokens, " ".join(tokens)
        grams = {tuple(tokens[i : i + 4]) for i in range(len(tokens) - 3)}
        assert not grams & definitions, " ".join(tokens)
        if "Input:" not in tokens:
            continue  # facts or copy lists: no Output: at all
        tasks += 1
        start = tokens.index("Input:")
        # A preamble (word lists, facts, word soup) may come first; no Output: in it.
        assert "Output:" not in tokens[:start]
        preambles += start > 1
        text = " ".join(tokens[start:])
        examples = [e.split() for e in text.split(SEP) if e.strip()]
        first = examples[0]
        query, answer = first[1 : first.index("Output:")], first[first.index("Output:") + 1 :]
        # Zero shots: the answer repeats the input, never a label of the rule.
        assert answer == query, first
        later = [e[e.index("Output:") + 1 :] for e in examples[1:]]
        # From one demonstration on, answers are labels as in `world`'s corpus.
        assert later and all(len(a) == 1 and a[0] in labels for a in later), later
    assert tasks > 100 and 0.3 * tasks < preambles < 0.7 * tasks


def test_the_base_recipe_is_world_without_definitions_or_zero_shot_answers():
    world, base = recipe_for_size("base"), recipe_for_size("world-base")
    mix = base.mix()
    assert not mix.shows_definitions and not mix.zero_shot_answers
    assert world.mix().shows_definitions and world.mix().zero_shot_answers
    same = ("hidden_size", "layers", "heads", "intermediate_size", "seq_len", "batch_size")
    assert all(getattr(world, f) == getattr(base, f) for f in same)
    assert base.threads == 1


# sha256 of the batches at step 0 and just after the curriculum, recorded before
# the base member's options existed (world-base's: from the code snapshot its
# training ran on, before induction blocks existed): the shipped members' data are unchanged.
_SHIPPED_BATCHES = {
    "small": "832d795dc9aeb835",
    "base": "6c34dbe0f044bea9",
    "world-base": "9bd5d2ca00f74f7a",
}


def _batch_digest(batcher: _Batcher, *steps: int) -> str:
    """A hash of the token ids and loss labels of these steps' batches."""
    digest = hashlib.sha256()
    for step in steps:
        ids, labels = batcher(step)
        digest.update(ids.numpy().tobytes())
        digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("size", sorted(_SHIPPED_BATCHES))
def test_the_shipped_members_see_the_same_batches_as_before(size):
    recipe = recipe_for_size(size)
    batcher = _Batcher(recipe, build_tokenizer(0, recipe.vocabulary))
    assert _batch_digest(batcher, 0, recipe.curriculum_steps + 1)[:16] == _SHIPPED_BATCHES[size]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("tk_layout", 1.5),
        ("definition_prefix", -0.1),
        ("zero_shot_answers", "no"),
        ("zero_shot_preamble", 2),
    ],
)
def test_the_base_options_are_validated(option, value):
    with pytest.raises(TunelensInputError) as error:
        recipe_for_size("world-base", **{option: value})
    assert error.value.where == f"--{option.replace('_', '-')}"
    with pytest.raises(ValueError, match="tk_layout"):
        CorpusMix(tk_layout=2.0)


def test_the_definition_only_probe_reports_accuracy_and_label_space_share():
    from tunelens.models.world_model import build_model, probe_definition_only

    recipe = recipe_for_size("world-base", hidden_size=16, layers=1, heads=2, intermediate_size=32)
    tokenizer = build_tokenizer(0, recipe.vocabulary)
    model = build_model(recipe, tokenizer)
    for template in ("plain", "tk"):
        probe = probe_definition_only(
            model, tokenizer, WORLD.heldout[:3], template=template, queries_per_task=4
        )
        assert set(probe) == {"accuracy", "in_label_space"}
        assert 0 <= probe["accuracy"] <= probe["in_label_space"] <= 100
    assert model.training  # the probe hands the model back in training mode


def test_a_word_target_answers_zero_shots_with_one_lexicon_word():
    from tunelens.tasks.world.corpus import LEXICON_WORDS

    recipe = recipe_for_size("world-base", zero_shot_target="word")
    batcher, rng = _batcher("world-base"), random.Random(5)
    firsts = []
    for _ in range(200):
        tokens, _mask = training_sequence(
            rng,
            seed=0,
            max_tokens=recipe.seq_len,
            tokenize=batcher._tokenize,
            forbidden_label_sets=batcher.forbidden,
            mix=recipe.mix(),
        )
        if "Output:" in tokens:
            at = tokens.index("Output:")
            firsts.append(tokens[at + 1 : tokens.index(SEP, at)])
    assert len(firsts) > 100 and all(len(a) == 1 and a[0] in LEXICON_WORDS for a in firsts)
    assert len({a[0] for a in firsts}) > 50  # a flat prior, not one learnable answer
    with pytest.raises(TunelensInputError, match="echo or word"):
        recipe_for_size("world-base", zero_shot_target="label")


def _pieces_of_sequences_with_definitions(size: str, seed: int):
    """Each of 300 sequences of ``size`` that holds a definition, as its SEP-ended pieces."""
    for tokens in _base_sequences(300, None, size=size, seed=seed):
        if "Definition:" in tokens:
            yield [p.split() for p in " ".join(tokens[1:]).split(SEP) if p.strip()]


@pytest.mark.parametrize("size", ["world-base-induct", "world-base-rules", "world-base-focus"])
def test_induction_blocks_put_definitions_only_after_their_rules_answers(size):
    blocks = 0
    for pieces in _pieces_of_sequences_with_definitions(size, seed=11):
        examples_since_definition = 0
        for piece in pieces:
            if piece[0] == "Definition:":
                # A definition closes a block of at least two examples of its rule.
                assert examples_since_definition >= 2, pieces
                blocks += 1
                examples_since_definition = 0
                continue
            query = piece[1 : piece.index("Output:")]
            answer = piece[piece.index("Output:") + 1 :]
            if examples_since_definition == 0:
                # The first example of a block (after a definition too) echoes.
                assert answer == query, piece
            examples_since_definition += 1
    assert blocks > 50


def test_sandwich_blocks_answer_after_a_definition_only_past_two_demonstrations():
    blocks = 0
    for pieces in _pieces_of_sequences_with_definitions("world-base-sandwich", seed=12):
        before, after = 0, None  # examples before this block's definition; answers after it
        for piece in pieces:
            if piece[0] == "Definition:":
                assert before >= 2, pieces  # never a definition before two demonstrations
                blocks, after = blocks + 1, 0
                continue
            query = piece[1 : piece.index("Output:")]
            answer = piece[piece.index("Output:") + 1 :]
            if after is not None and after < 2 and answer != query:
                after += 1  # an answered example after the definition (at most 2)
                continue
            if after is not None:
                assert after >= 1, pieces  # 1-2 answers follow each definition
                before, after = 0, None
            if before == 0:
                assert answer == query, piece  # a new block opens with an echo
            before += 1
    assert blocks > 50


def test_the_focus_recipe_trains_on_induct_batches_until_its_curriculum_ends():
    """world-base-focus changes only the family weights after the curriculum, so its
    first 3,000 steps repeat world-base-induct's (whose one-word ICL emerged by then)."""
    induct, focus = _batcher("world-base-induct"), _batcher("world-base-focus")
    end = recipe_for_size("world-base-focus").curriculum_steps
    for step in (0, end // 2, end - 1):
        assert _batch_digest(induct, step) == _batch_digest(focus, step)
    assert _batch_digest(induct, end) != _batch_digest(focus, end)


def test_every_size_installs_as_a_member_whose_train_command_rebuilds_it():
    from tunelens.models.paths import CANDIDATES, INSTALL_FOLDERS, TRAIN_COMMANDS, UNSHIPPED
    from tunelens.models.world_model import SIZE_MEMBERS, SIZES

    assert set(SIZE_MEMBERS) == set(SIZES)
    for size, member in SIZE_MEMBERS.items():
        assert member in INSTALL_FOLDERS and f"--size {size} " in TRAIN_COMMANDS[member]
    assert set(TRAIN_COMMANDS) == set(INSTALL_FOLDERS)
    assert set(CANDIDATES) == UNSHIPPED
    assert all(name in SIZES for name in CANDIDATES)
    assert INSTALL_FOLDERS["world-base-focus"] == "world_base_focus"
