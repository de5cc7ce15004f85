"""Packed rows (tunelens.models.packing): every prompt sees exactly its own tokens, once per row.

Checked without a model: from each prompt's last token, the tokens its mask
row lets it see, in order, are the prompt's token ids, at positions 0..n-1.
Under a causal model that makes its states those of the prompt run alone (the
model-level equality is in tests/integration/test_hidden_states.py).
"""

from __future__ import annotations

import random

import pytest

from tunelens.models.packing import (
    MAX_ROW_TOKENS,
    MIN_ROW_TOKENS,
    attention_mask,
    pack_rows,
    prefix_tree,
    row_budget,
    shared_tokens,
)


def seen_by_each_prompt(rows) -> dict[int, tuple[list[int], list[int]]]:
    """prompt -> (token ids, positions) visible from its last token, in row order."""
    seen = {}
    for row in rows:
        mask = attention_mask(row)[0, 0]
        assert mask.shape == (len(row.ids), len(row.ids))
        for prompt, last in row.ends.items():
            assert prompt not in seen, "a prompt is captured in two rows"
            visible = mask[last].nonzero().flatten().tolist()
            assert visible[-1] == last
            seen[prompt] = ([row.ids[t] for t in visible], [row.positions[t] for t in visible])
    return seen


def check_exact(prompts, rows) -> None:
    seen = seen_by_each_prompt(rows)
    assert sorted(seen) == list(range(len(prompts)))
    for i, prompt in enumerate(prompts):
        ids, positions = seen[i]
        assert ids == list(prompt)
        assert positions == list(range(len(prompt)))


PREFIX = [2, 10, 11, 12, 13, 14, 15, 16]
SUFFIXES = [[20, 21], [22], [20, 23, 24, 25, 26], [27, 28, 29]]


def test_one_shared_prefix_is_computed_once():
    prompts = [PREFIX + s for s in SUFFIXES]
    rows = pack_rows(prompts)
    assert len(rows) == 1
    # the prefix once, then each suffix; [20] is shared by two suffixes, so it is there once too
    assert len(rows[0].ids) == len(PREFIX) + 1 + 1 + 1 + 4 + 3
    check_exact(prompts, rows)


def test_suffixes_see_the_prefix_and_not_each_other():
    prompts = [PREFIX + [30, 31], PREFIX + [40, 41, 42]]
    (row,) = pack_rows(prompts)
    mask = attention_mask(row)[0, 0]
    first_end, second_end = row.ends[0], row.ends[1]
    n = len(PREFIX)
    assert mask[second_end, :n].all()  # the prefix
    assert not mask[second_end, n : first_end + 1].any()  # the other suffix
    assert row.positions[first_end + 1] == n  # the second suffix restarts after the prefix


def test_no_shared_prefix_packs_side_by_side():
    prompts = [[5, 6, 7], [8, 9], [10]]
    root = prefix_tree(prompts)
    assert shared_tokens(root) == 0
    (row,) = pack_rows(prompts)
    assert len(row.ids) == 6  # no padding
    assert row.parents == [-1, -1, -1]  # block diagonal
    check_exact(prompts, rows=[row])


def test_one_prompt():
    rows = pack_rows([[4, 5, 6]])
    assert [r.ids for r in rows] == [[4, 5, 6]]
    check_exact([[4, 5, 6]], rows)


def test_prompt_that_is_the_prefix_of_others_and_duplicates():
    prompts = [PREFIX, PREFIX + [20], PREFIX, PREFIX + [20, 21], PREFIX[:3]]
    rows = pack_rows(prompts)
    assert len(rows[0].ids) == len(PREFIX) + 2  # every prompt is a path of one chain
    check_exact(prompts, rows)


def test_rows_split_at_the_budget_and_repeat_the_prefix():
    prompts = [PREFIX + [20 + i, 40 + i, 60 + i] for i in range(6)]
    rows = pack_rows(prompts, max_tokens=len(PREFIX) + 7)  # two suffixes per row
    assert len(rows) == 3
    for row in rows:
        assert row.ids[: len(PREFIX)] == PREFIX
        assert len(row.ids) <= len(PREFIX) + 7
    check_exact(prompts, rows)


def test_a_prompt_longer_than_the_budget_gets_its_own_row():
    prompts = [[1, 2, 3], list(range(10, 30)), [1, 2, 4]]
    rows = pack_rows(prompts, max_tokens=5)
    assert max(len(r.ids) for r in rows) == 20
    check_exact(prompts, rows)


@pytest.mark.parametrize("max_tokens", [1, 4, 9, 30, None])
@pytest.mark.parametrize("seed", range(5))
def test_random_prompt_sets_are_exact(seed, max_tokens):
    rng = random.Random(seed)
    stems = [[rng.randrange(6) for _ in range(rng.randint(0, 8))] for _ in range(3)]
    prompts = [
        rng.choice(stems) + [rng.randrange(6) for _ in range(rng.randint(1, 6))] for _ in range(12)
    ]
    rows = pack_rows(prompts, max_tokens=max_tokens)
    if max_tokens is not None:
        longest = max(map(len, prompts))
        assert all(len(r.ids) <= max(max_tokens, longest) for r in rows)
    check_exact(prompts, rows)


def test_empty_prompt_and_bad_budget_are_rejected():
    with pytest.raises(ValueError, match="no tokens"):
        pack_rows([[1, 2], []])
    with pytest.raises(ValueError, match="max_tokens"):
        pack_rows([[1, 2]], max_tokens=0)


def test_row_budget():
    assert row_budget(0, 512) == MIN_ROW_TOKENS
    assert row_budget(132, 512) == 783  # ceil(P + sqrt(P^2 + 6 d P))
    assert row_budget(132, 96) < row_budget(132, 512) < row_budget(300, 512)
    assert row_budget(10_000, 4096) == MAX_ROW_TOKENS
