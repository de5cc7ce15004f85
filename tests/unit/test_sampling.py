"""The one sampler family: nested convergence sets, world-eval draws, prefixes, subsets."""

from __future__ import annotations

import random

import pytest

from tunelens.errors import TunelensInputError
from tunelens.tasks.sampling import (
    as_examples,
    first_examples,
    sample_demo_sets,
    sample_instances,
    sample_queries_with_demos,
)
from tunelens.tasks.types import Example, Instance, Task

KS = (0, 1, 2, 4, 8)


def make_task(name: str, n: int = 20, labels=("no", "yes")) -> Task:
    instances = tuple(
        Instance(f"{name}-{i}", f"{name} input {i}", (labels[i % len(labels)],)) for i in range(n)
    )
    return Task(name, f"Define {name}.", instances, labels=tuple(labels))


TASKS = [make_task(f"t{j}", n=12 + 3 * j) for j in range(4)]


def draw(k, relevance="same", seed=0, tasks=TASKS, **kw):
    kw = {"n_pairs": 7, "anchors_per_set": 2, "k_max": max(KS), **kw}
    return sample_demo_sets(tasks, k=k, relevance=relevance, seed=seed, **kw)


@pytest.mark.parametrize("relevance", ["same", "other"])
@pytest.mark.parametrize("k_max", [max(KS), None])
def test_one_seed_same_anchors_and_nested_demos_across_k(relevance, k_max):
    for seed in range(10):
        by_k = {k: draw(k, relevance, seed, k_max=k_max) for k in KS}
        base = by_k[max(KS)]
        assert len(base) == 4  # ceil(7 / 2)
        for k, sets in by_k.items():
            assert [s.task.name for s in sets] == [s.task.name for s in base]
            assert [s.anchors for s in sets] == [s.anchors for s in base]
            for small, large in zip(sets, base, strict=True):
                assert len(small.demos) == k
                assert small.demos == large.demos[:k]


def test_draws_are_seeded():
    assert draw(4, seed=3) == draw(4, seed=3)
    assert len({tuple(s.anchors for s in draw(4, seed=s)) for s in range(10)}) > 1


def test_demos_never_include_an_anchor_input():
    # Duplicated inputs: an instance with another id but an anchor's input must not be a demo.
    dup = Task(
        "dup",
        "",
        tuple(Instance(f"d{i}", f"x{i % 5}", ("a" if i % 2 else "b",)) for i in range(30)),
        labels=("a", "b"),
    )
    for seed in range(30):
        for demo_set in draw(8, seed=seed, tasks=[dup, *TASKS], k_max=8):
            anchor_inputs = {a.input for a in demo_set.anchors}
            assert not anchor_inputs & {d.input for d in demo_set.demos}
            assert len(set(demo_set.anchors)) == len(demo_set.anchors)


def test_other_relevance_excludes_the_anchor_task_and_its_inputs():
    # "t1" shares some inputs with "t0": those must never be t0's demonstrations.
    shared = make_task("t0", 20)
    t1 = Task(
        "t1",
        "",
        tuple(Instance(f"s{i}", f"t0 input {i}", ("yes",)) for i in range(10))
        + make_task("t1", 20).instances,
        labels=("no", "yes"),
    )
    # Positive examples are not instances: convergence draws demonstrations from instances only.
    t2 = make_task("t2", 20).with_changes(positive_examples=(Example("t2 shown", "no", "e"),))
    tasks = [shared, t1, t2]
    pools = {t.name: set(as_examples(t.instances)) for t in tasks}
    for seed in range(30):
        for demo_set in draw(8, "other", seed, tasks=tasks):
            own_inputs = {i.input for i in demo_set.task.instances}
            assert not own_inputs & {d.input for d in demo_set.demos}
            assert not set(demo_set.demos) & pools[demo_set.task.name]
            sources = [n for n, pool in pools.items() if set(demo_set.demos) <= pool]
            assert sources and demo_set.task.name not in sources


def test_small_tasks_are_left_out_for_every_k_or_named():
    tiny = make_task("tiny", n=5)
    with_tiny = [tiny, *TASKS]
    for k in KS:
        assert "tiny" not in {s.task.name for s in draw(k, tasks=with_tiny, n_pairs=40)}
    with pytest.raises(TunelensInputError, match=r"'tiny'.*k=4"):
        draw(4, tasks=with_tiny, k_max=None)
    with pytest.raises(TunelensInputError, match="largest k"):
        draw(16, k_max=8)
    with pytest.raises(TunelensInputError, match="no task"):
        draw(1, tasks=[tiny])
    with pytest.raises(TunelensInputError, match="two usable tasks"):
        draw(1, "other", tasks=[TASKS[0]])
    with pytest.raises(TunelensInputError, match="relevance"):
        draw(1, "elsewhere")


def legacy_query_demos(task, k, queries, rng):
    """The world evaluation's draw before the sampler family (reference_eval.json's)."""
    pool = list(task.instances)
    out = []
    for q in range(queries):
        query = pool[q % len(pool)]
        others = [i for i in pool if i.id != query.id]
        out.append((query, [Example(i.input, i.outputs[0]) for i in rng.sample(others, k)]))
    return out


@pytest.mark.parametrize("k", [0, 1, 8])
def test_world_eval_draws_are_unchanged(k):
    tasks = [make_task(f"w{j}", 12) for j in range(3)]
    new_rng, old_rng = random.Random(7919 + k), random.Random(7919 + k)
    for task in tasks:  # one generator shared over the tasks, as evaluate_icl does
        drawn = sample_queries_with_demos(task, k, 15, new_rng)
        assert drawn == legacy_query_demos(task, k, 15, old_rng)
        for query, demos in drawn:
            assert query.input not in {d.input for d in demos} and len(demos) == k
    with pytest.raises(TunelensInputError, match="k=12"):
        sample_queries_with_demos(tasks[0], 12, 1, new_rng)


def test_first_examples_is_a_prefix():
    pool = make_task("p", 10).instances
    assert first_examples(pool, 3) == first_examples(pool, 7)[:3] == as_examples(pool[:3])
    assert first_examples(pool, 0) == []
    with pytest.raises(TunelensInputError, match="demonstration pool holds 10"):
        first_examples(pool, 11, what="demonstration pool")


def test_sample_instances():
    pool = make_task("p", 10).instances
    assert sample_instances(pool, "full", random.Random(0)) == list(pool)
    drawn = sample_instances(pool, 4, random.Random(1))
    assert drawn == random.Random(1).sample(list(pool), 4)  # the audit's previous draw
    assert len(set(drawn)) == 4 and set(drawn) <= set(pool)
    assert len(sample_instances(pool, 50, random.Random(0))) == 10
