"""The fast paths on genuine tokenizers and SuperNI text (issue 26.2).

Tiny random models on the Mistral v0.3 (SentencePiece), GPT-2 and Qwen2 (byte-level
BPE) tokenizers (tests/helpers/real_models.py) read Tk-Instruct prompts of shared
Super-NaturalInstructions tasks (definition and two positive examples: one long
prefix per task), loaded through the normal task loader. Each fast path must give
what the plain computation gives: packed capture vs one ``output_hidden_states``
forward per prompt, shared-prefix generation vs ``model.generate`` per prompt, and
batched many-set tuning vs sequential PEFT tuning.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.helpers.numerics import assert_close_scaled
from tests.helpers.real_models import REAL_TOKENIZERS

from tunelens.models.loading import load_model
from tunelens.prompts import PromptStyle, render_prompt, render_target

SUPERNI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "superni"
TASKS = ("task1344_glue_entailment_classification", "task133_winowhy_reason_plausibility_detection")
STYLE = PromptStyle(template="tk", definition=True, n_positive=2)

pytestmark = pytest.mark.skipif(
    not (SUPERNI / "index.tsv").is_file(), reason=f"{SUPERNI} (the shared SuperNI subset) is absent"
)


@pytest.fixture(scope="module")
def tasks():
    from tunelens.tasks.loaders import load_tasks

    found = {t.name: t for t in load_tasks(SUPERNI / "tasks")}
    missing = [name for name in TASKS if name not in found]
    if missing:
        pytest.skip(f"SuperNI tasks {missing} are not in {SUPERNI}")
    return [found[name] for name in TASKS]


def prompts_of(task, n: int) -> list[str]:
    return [render_prompt(task, i.input, style=STYLE) for i in task.instances[:n]]


@pytest.fixture(scope="module", params=REAL_TOKENIZERS)
def real(request, real_model_dir):
    return load_model(str(real_model_dir(request.param)))


def test_packed_capture_equals_output_hidden_states_on_superni_prompts(real, tasks):
    from tunelens.models.hidden_states import capture_packed

    prompts = [p for task in tasks for p in prompts_of(task, 3)]
    ids = [real.tokenizer(p)["input_ids"] for p in prompts]
    assert min(map(len, ids)) > 40  # definition and examples: long shared prefixes
    want = []
    with torch.no_grad():
        for row in ids:
            out = real.model(input_ids=torch.tensor([row]), output_hidden_states=True)
            want.append(torch.stack([h[0, -1] for h in out.hidden_states]))
    assert_close_scaled(capture_packed(real, prompts), torch.stack(want), 1e-4)


def test_shared_prefix_generation_equals_generate_on_superni_prompts(real, tasks):
    from tunelens.models.predict import first_line, generate_predictions

    prompts = [p for task in tasks for p in prompts_of(task, 3)]
    got = generate_predictions(real, prompts, max_new_tokens=5, min_saved_tokens=0)
    want = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([real.tokenizer(prompt)["input_ids"]])
            out = real.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=5,
                do_sample=False,
                pad_token_id=real.tokenizer.pad_token_id,
            )
            text = real.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
            want.append(first_line(text))
    assert got == want


def test_batched_tuning_equals_sequential_peft_on_superni_pairs(real, tasks):
    from tunelens.models.tuning import TuningConfig, tune_many_sets, tune_on_pairs

    task = tasks[0]
    sets = [
        [
            (render_prompt(task, i.input, style=STYLE), render_target(i.outputs[0]))
            for i in task.instances[start : start + 3]
        ]
        for start in (0, 3)
    ]
    config = TuningConfig(epochs=2, batch_size=2)
    batched_losses: list[list[float]] = []
    batched = tune_many_sets(real, sets, config, seeds=[0, 1], losses=batched_losses)
    for j, (pairs, state) in enumerate(zip(sets, batched, strict=True)):
        tuned = tune_on_pairs(real, pairs, config.with_seed(j))
        try:
            want = tuned.adapter_state()
            losses = torch.tensor(tuned.losses)
        finally:
            tuned.unload()
        assert_close_scaled(torch.tensor(batched_losses[j]), losses, 1e-5)
        assert state.keys() == want.keys()
        # AdamW divides by sqrt(v): where a gradient is near zero, float rounding of the
        # two layouts moves an element by up to ~lr / 10 (GPT-2, 1 element of 768: 5.7e-4);
        # a wrong layout moves whole adapters by lr per step.
        for key in want:
            assert_close_scaled(state[key], want[key], 1e-3)
        assert any(float(state[k].abs().max()) > 0 for k in state if "lora_B" in k)
