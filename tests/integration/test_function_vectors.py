"""Function vectors against references written here with plain forward hooks.

On a tiny random Llama (and Qwen2) and a tiny GPT-2 (tests/conftest.py), with a task whose
second label takes two tokens (so labels are scored by whole continuations):

- one head's average indirect effect from ``run_heads_cell`` equals a manual
  computation: the head's mean output read with this file's own hook on the
  output projection's input, patched by another hook into a full forward of
  prompt + label, P(label) the product of its tokens' probabilities;
- the function vector added after layer L (``run_vector_cell``) equals the
  manual sum of W_O slices times the mean head outputs, added by a hook after
  block L (before block 1 for L = 0) in a full forward of prompt + label;
- a planted Llama (one head's output alone reaches the logits) gets the top
  average indirect effect, every other head exactly zero;
- an encoder-decoder exits 2 with one line.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tests.helpers.cli import assert_one_error_line, invoke
from tests.helpers.models import wrap

from tunelens.errors import TunelensInputError
from tunelens.experiments.function_vectors.measure import (
    Scorer,
    draw_task,
    gold_index,
    head_effects,
    run_heads_cell,
    run_vector_cell,
)
from tunelens.models.heads import head_layout
from tunelens.prompts import PromptStyle, render_prompt
from tunelens.tasks.types import Example, Instance, Task

LABELS = ("no maybe", "yes")  # "no maybe" is two tokens of the word-level tokenizer
INPUTS = ("cat", "dog", "bird", "fish", "apple", "pear", "knife", "spoon", "tree", "river")
PARAMS = {"k": 3, "n_prompts": 3, "n_queries": 4, "template": "plain", "definition": False}
STYLE = PromptStyle(template="plain", definition=False, n_positive=0)


def small_task(n: int = 24, seed: int = 0) -> Task:
    rng = random.Random(seed)
    instances = tuple(
        Instance(f"i{i}", f"the {rng.choice(INPUTS)} {rng.choice(INPUTS)}", (rng.choice(LABELS),))
        for i in range(n)
    )
    return Task("tiny_task", "Say yes or no maybe.", instances, labels=tuple(sorted(LABELS)))


def projection_of(model, arch: str, block: int) -> torch.nn.Module:
    """The output projection, located by its known attribute path (not by the code's search)."""
    if arch == "gpt2":
        return model.transformer.h[block].attn.c_proj
    return model.model.layers[block].self_attn.o_proj


def blocks_of_model(model, arch: str):
    return model.transformer.h if arch == "gpt2" else model.model.layers


def head_slice_weight(model, arch: str, block: int, head: int, head_dim: int) -> torch.Tensor:
    """W_O columns of one head as ``[hidden, head_dim]`` (GPT-2's Conv1D stores W transposed)."""
    proj = projection_of(model, arch, block)
    cols = slice(head * head_dim, (head + 1) * head_dim)
    return proj.weight[cols, :].T if arch == "gpt2" else proj.weight[:, cols]


def encode(tokenizer, prompt: str, label: str) -> tuple[list[int], list[int]]:
    return (
        tokenizer(prompt)["input_ids"],
        tokenizer(" " + label, add_special_tokens=False)["input_ids"],
    )


@torch.no_grad()
def label_probability(model, tokenizer, prompt: str, label: str) -> float:
    """P(label | prompt): its tokens' probabilities multiplied, one forward of prompt + label."""
    prompt_ids, label_ids = encode(tokenizer, prompt, label)
    ids = torch.tensor([prompt_ids + label_ids])
    logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    start = len(prompt_ids) - 1
    return float(
        torch.exp(sum(logp[start + j, t] for j, t in enumerate(label_ids)))  # type: ignore[arg-type]
    )


@torch.no_grad()
def manual_head_means(model, tokenizer, arch: str, prompts: list[str], n_heads: int):
    """``[blocks, hidden]`` mean output-projection input at each prompt's last token."""
    blocks = blocks_of_model(model, arch)
    seen: list[list[torch.Tensor]] = [[] for _ in blocks]
    handles = [
        projection_of(model, arch, b).register_forward_pre_hook(
            lambda m, args, b=b: seen[b].append(args[0][0, -1].clone())
        )
        for b in range(len(blocks))
    ]
    try:
        for prompt in prompts:
            model(input_ids=torch.tensor([tokenizer(prompt)["input_ids"]]))
    finally:
        for h in handles:
            h.remove()
    return torch.stack([torch.stack(s).mean(0) for s in seen])


def tiny(tiny_model, arch: str):
    return wrap(tiny_model(arch), arch)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_one_heads_indirect_effect_equals_a_manual_patch(tiny_model, arch: str) -> None:
    loaded = tiny(tiny_model, arch)
    model, tokenizer = loaded.model, loaded.tokenizer
    task = small_task()
    result = run_heads_cell(loaded, task, PARAMS, seed=0)
    draw = draw_task(task, PARAMS["k"], PARAMS["n_prompts"], PARAMS["n_queries"], 0)
    clean = [render_prompt(task, q.input, d, STYLE, tokenizer) for q, d in draw.clean]
    means = manual_head_means(model, tokenizer, arch, clean, 4)
    head_dim = means.shape[1] // 4
    for block, head in ((1, 2), (0, 1)):
        cols = slice(head * head_dim, (head + 1) * head_dim)
        for i, (query, demos) in enumerate(draw.shuffled):
            prompt = render_prompt(task, query.input, demos, STYLE, tokenizer)
            gold = query.outputs[0]
            base = label_probability(model, tokenizer, prompt, gold)
            at = len(tokenizer(prompt)["input_ids"]) - 1

            def patch(module, args, cols=cols, at=at, block=block):
                x = args[0].clone()
                x[0, at, cols] = means[block, cols]
                return (x,)

            handle = projection_of(model, arch, block).register_forward_pre_hook(patch)
            try:
                patched = label_probability(model, tokenizer, prompt, gold)
            finally:
                handle.remove()
            assert result["aie"][i][block][head] == pytest.approx(patched - base, abs=2e-6)
    assert any(abs(v) > 1e-4 for row in result["aie"] for layer in row for v in layer)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_function_vector_added_at_a_layer_equals_a_manual_residual_add(
    tiny_model, arch: str
) -> None:
    loaded = tiny(tiny_model, arch)
    model, tokenizer = loaded.model, loaded.tokenizer
    task = small_task(seed=1)
    heads = [[2, 1], [1, 3], [2, 0]]
    result = run_vector_cell(loaded, task, {**PARAMS, "heads": heads, "layers": []}, seed=3)
    draw = draw_task(task, PARAMS["k"], PARAMS["n_prompts"], PARAMS["n_queries"], 3)
    clean = [render_prompt(task, q.input, d, STYLE, tokenizer) for q, d in draw.clean]
    means = manual_head_means(model, tokenizer, arch, clean, 4)
    head_dim = means.shape[1] // 4
    vector = sum(
        head_slice_weight(model, arch, layer - 1, head, head_dim)
        @ means[layer - 1, head * head_dim : (head + 1) * head_dim]
        for layer, head in heads
    ).detach()
    assert result["vector_norm"] == pytest.approx(float(vector.norm()), rel=1e-5)
    blocks = blocks_of_model(model, arch)
    assert result["layers"] == list(range(len(blocks) + 1))
    for q, query in enumerate(draw.queries):
        prompt = render_prompt(task, query.input, [], STYLE, tokenizer)
        gold = query.outputs[0]
        at = len(tokenizer(prompt)["input_ids"]) - 1
        plain = label_probability(model, tokenizer, prompt, gold)
        assert result["zero_shot"]["p"][q] == pytest.approx(plain, rel=1e-5, abs=1e-9)
        for layer in result["layers"]:

            def add_pre(module, args, kwargs, at=at):
                hidden = (args[0] if args else kwargs["hidden_states"]).clone()
                hidden[0, at] += vector
                if args:
                    return (hidden, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": hidden}

            def add_post(module, args, output, at=at):
                hidden = (output[0] if isinstance(output, tuple) else output).clone()
                hidden[0, at] += vector
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            if layer == 0:
                handle = blocks[0].register_forward_pre_hook(add_pre, with_kwargs=True)
            else:
                handle = blocks[layer - 1].register_forward_hook(add_post)
            try:
                steered = label_probability(model, tokenizer, prompt, gold)
            finally:
                handle.remove()
            got = result["vector"]["p"][layer][q]
            assert got == pytest.approx(steered, rel=1e-4, abs=1e-7), (layer, q)
    assert result["vector"]["p"][0] != result["zero_shot"]["p"]  # the vector does something


def plant_one_head(model, block: int, head: int, yes: int, no: int) -> None:
    """Only ``head`` of ``block`` writes into the residual stream (every other head's W_O
    columns and every MLP zeroed). It attends uniformly (its queries zero) and reads, from
    each token, how much more it looks like "yes" than "no"; it writes that into the
    direction that moves the "yes" logit above the "no" logit."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    group = head // (config.num_attention_heads // config.num_key_value_heads)
    embed = model.model.embed_tokens.weight
    readout = model.lm_head.weight
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.zero_()
            layer.self_attn.o_proj.weight.zero_()
        attention = model.model.layers[block].self_attn
        rows = slice(head * head_dim, (head + 1) * head_dim)
        attention.q_proj.weight[rows] = 0.0
        v_rows = slice(group * head_dim, (group + 1) * head_dim)
        attention.v_proj.weight[v_rows] = 0.0
        attention.v_proj.weight[group * head_dim] = 4.0 * (embed[yes] - embed[no])
        direction = readout[yes] - readout[no]
        attention.o_proj.weight[:, head * head_dim] = 8.0 * direction / direction.norm()


def test_a_planted_head_gets_the_top_indirect_effect(tiny_model) -> None:
    """Demonstrations labelled "yes" (clean) or "no" (corrupted), the answer always "yes":
    only the planted head can carry the demonstrations' label to the answer."""
    loaded = tiny(tiny_model, "llama")
    tokenizer = loaded.tokenizer
    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
    plant_one_head(loaded.model, block=1, head=2, yes=yes, no=no)
    task = Task(
        "planted",
        "",
        tuple(Instance(f"i{i}", w, ("yes",)) for i, w in enumerate(INPUTS)),
        labels=("no", "yes"),
    )
    rng = random.Random(0)

    def prompts(label: str) -> list[str]:
        out = []
        for _ in range(6):
            words = rng.sample(INPUTS, 5)
            demos = [Example(w, label) for w in words[:4]]
            out.append(render_prompt(task, words[-1], demos, STYLE))
        return out

    gold = [gold_index(task, task.instances[0])] * 6
    effects = head_effects(
        Scorer(loaded, task), head_layout(loaded), (prompts("yes"), gold), (prompts("no"), gold)
    )
    aie = effects.aie.mean(axis=0)
    assert aie[1, 2] > 0.3
    others = [aie[b, h] for b in range(2) for h in range(4) if (b, h) != (1, 2)]
    assert max(abs(x) for x in others) < 1e-6
    assert effects.clean.correct.mean() == 1.0 and effects.corrupted.correct.mean() == 0.0


def test_an_encoder_decoder_is_refused(tiny_model) -> None:
    loaded = tiny(tiny_model, "t5")
    with pytest.raises(TunelensInputError, match="encoder-decoder"):
        head_layout(loaded, where="function_vectors.models")


def test_an_encoder_decoder_spec_exits_2_with_one_line(tmp_path: Path) -> None:
    from tests.helpers.models import save_tiny_model

    model_dir = save_tiny_model("t5", tmp_path / "t5")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"model: {model_dir}\nfunction_vectors:\n  tasks: world:heldout\n  n_prompts: 2\n"
        "  n_queries: 2\n"
    )
    result = invoke("run", str(spec), "--out", str(tmp_path / "out"), "--no-progress")
    line = assert_one_error_line(result)
    assert "function_vectors.models" in line and "encoder-decoder" in line
