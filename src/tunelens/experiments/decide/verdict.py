"""The verdict: what the numbers of a decide run say, in sentences with numbers and intervals.

Rules (all on 95% bootstrap intervals over test items):

* a method **wins** a comparison when the interval of the paired difference
  excludes 0; otherwise the comparison is **too close to call**, and the
  verdict says roughly how many test items would resolve a difference of the
  observed size (:func:`tunelens.experiments.decide.metrics.items_to_resolve`);
* at each tuning size n, tuning on n is compared with ICL on the largest k <= n
  (the same number of labelled examples or fewer); ICL sizes below the
  smallest tuning size are compared with zero-shot;
* the **best** method has the highest mean accuracy; methods whose difference
  from it is too close to call are **equal in quality**, and of those the one
  with the fewest inference FLOPs per 1,000 items is the cheaper path
  (tuning's one-off cost is stated beside it);
* a format-only control's **share** of the tuning gain is (control -
  zero-shot) / (tuned - zero-shot): near 1 means the gain is mostly the output
  format, near 0 that tuning taught the task. A share whose interval lies
  above 0.8 reads "mostly format", below 0.5 "more than the format"; in
  between, or when the tuning gain itself is within noise, it reads as
  undecided (:func:`tunelens.measures.verdicts.share_reading`, which the audit
  uses too).

Pure functions of decide.json data, so the sentences can be tested on
hand-made numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tunelens.measures.verdicts import share_reading


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(x: Any, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if _finite(x) else "n/a"


def fmt_stat(stat: Mapping[str, Any] | None, unit: str = "%", digits: int = 1) -> str:
    """'45.0% [38.2, 51.7]' for a {"mean", "ci"} dict."""
    if not stat:
        return "n/a"
    lo, hi = stat.get("ci", [None, None])
    return (
        f"{fmt_num(stat.get('mean'), digits)}{unit} [{fmt_num(lo, digits)}, {fmt_num(hi, digits)}]"
    )


def fmt_diff(stat: Mapping[str, Any]) -> str:
    """'+12.3 points [4.1, 20.0]' for a paired difference."""
    mean = stat.get("mean")
    lo, hi = stat.get("ci", [None, None])
    sign = "+" if mean is not None and _finite(mean) and mean >= 0 else ""
    return f"{sign}{fmt_num(mean)} points [{fmt_num(lo)}, {fmt_num(hi)}]"


def fmt_share(stat: Mapping[str, Any]) -> str:
    """'85% [60, 110]' for a share given as a fraction."""
    mean = stat.get("mean")
    lo, hi = stat.get("ci", [None, None])
    if not _finite(mean):
        return "undefined (no tuning gain to share)"

    def pct(x: Any) -> str:
        return f"{100 * x:.0f}" if _finite(x) else "n/a"

    return f"{pct(mean)}% [{pct(lo)}, {pct(hi)}]"


def fmt_flops(x: Any) -> str:
    if not _finite(x):
        return "n/a"
    return "0" if x == 0 else f"{x:.2e}"


def fmt_count(x: Any) -> str:
    return f"{x:,.0f}" if _finite(x) else "n/a"


def _by_id(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {m["id"]: m for m in results.get("methods", [])}


def identical(comp: Mapping[str, Any]) -> bool:
    """Both methods scored the same on every item (a zero difference with a zero-width CI)."""
    diff = comp["difference"]
    lo, hi = diff.get("ci", [None, None])
    return diff.get("mean") == 0 and lo == 0 and hi == 0


def _outcome(comp: Mapping[str, Any], a_label: str, b_label: str, b_id: str) -> str:
    """'<winner> wins by <difference>', or the close-call sentence when neither won."""
    if comp["winner"] == comp["a"]:
        return f"{a_label} wins by {fmt_diff(comp['difference'])}"
    if comp["winner"] == b_id:
        return f"{b_label} wins by {fmt_diff(comp['difference'])}"
    return _close_call(comp)


def _close_call(comp: Mapping[str, Any]) -> str:
    if identical(comp):
        return "no difference: the same score on every test item"
    needed = comp.get("items_to_resolve")
    tail = (
        f"; about {fmt_count(needed)} test items would resolve a difference this size"
        if needed
        else ""
    )
    return f"too close to call: {fmt_diff(comp['difference'])}{tail}"


def size_lines(results: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Which method wins at which data size: sentences and a table."""
    methods = _by_id(results)
    comparisons = results.get("comparisons", {})
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    tuned_sizes = [m["examples"] for m in methods.values() if m["family"] == "tuning"]
    smallest_tuned = min(tuned_sizes) if tuned_sizes else math.inf
    for comp in comparisons.get("vs_zero_shot", []):
        method = methods[comp["a"]]
        if method["family"] != "icl" or method["examples"] >= smallest_tuned:
            continue
        outcome = _outcome(comp, "ICL", "zero-shot", "zero_shot")
        lines.append(
            f"With {method['examples']} example(s): ICL k={method['examples']} "
            f"{fmt_stat(method['accuracy'])} vs zero-shot "
            f"{fmt_stat(methods['zero_shot']['accuracy'])}: {outcome}."
        )
        rows.append(
            {
                "examples": method["examples"],
                "a": comp["a"],
                "b": "zero_shot",
                "winner": comp["winner"],
                "difference": comp["difference"],
            }
        )
    for comp in comparisons.get("at_equal_size", []):
        tuned, icl = methods[comp["a"]], methods[comp["b"]]
        outcome = _outcome(comp, "tuning", "ICL", comp["b"])
        payback = comp.get("tuning_pays_back_after_items")
        cost = ""
        if comp["winner"] != comp["b"]:
            cost = (
                f" Tuning's one-off compute pays back after about {fmt_count(payback)} items "
                "(shorter prompts than ICL)."
                if _finite(payback)
                else " Tuning never pays back its one-off compute against this ICL prompt."
            )
        lines.append(
            f"With {tuned['examples']} examples: {tuned['name']} "
            f"{fmt_stat(tuned['accuracy'])} vs ICL k={icl['examples']} "
            f"{fmt_stat(icl['accuracy'])}: {outcome}.{cost}"
        )
        rows.append(
            {
                "examples": tuned["examples"],
                "a": comp["a"],
                "b": comp["b"],
                "winner": comp["winner"],
                "difference": comp["difference"],
            }
        )
    for comp in comparisons.get("vs_zero_shot", []):
        method = methods[comp["a"]]
        if method["family"] != "tuning" or any(
            c["a"] == comp["a"] for c in comparisons.get("at_equal_size", [])
        ):
            continue
        outcome = _outcome(comp, "tuning", "zero-shot", "zero_shot")
        lines.append(
            f"With {method['examples']} examples: {method['name']} "
            f"{fmt_stat(method['accuracy'])} vs zero-shot: {outcome} (no ICL prompt "
            "this small was measured)."
        )
    return lines, rows


def best_line(results: Mapping[str, Any]) -> str:
    methods = _by_id(results)
    best = results.get("best")
    if not best:
        return ""
    top = methods[best["id"]]
    tied = best.get("indistinguishable", [])
    if best["id"] == "label_guess":
        models = [m for m in methods.values() if m["id"] != "label_guess"]
        runner_up = max(models, key=lambda m: m["accuracy"]["mean"]) if models else None
        text = (
            f"No method beats guessing a label ({fmt_stat(top['accuracy'])}): on this "
            "evidence no method has learned the task."
        )
        if runner_up is not None:
            text += (
                f" The best model method is {runner_up['name']}, {fmt_stat(runner_up['accuracy'])}."
            )
        return text
    text = f"Best: {top['name']}, accuracy {fmt_stat(top['accuracy'])}."
    if "label_guess" in [best["id"], *tied]:
        text += (
            " It is not distinguishable from guessing a label "
            f"({fmt_stat(methods['label_guess']['accuracy'])}): on this evidence no "
            "method has learned the task."
        )
        return text
    if tied:
        text += (
            " Equal in quality within the intervals: "
            + ", ".join(methods[i]["name"] for i in tied)
            + "."
        )
    cheapest = methods[best["cheapest_at_equal_quality"]]
    per = cheapest["compute"]["per_1000_items"]
    text += (
        f" Cheapest of these per 1,000 items: {cheapest['name']} "
        f"({fmt_flops(per['flops'])} FLOPs, {fmt_count(per['prompt_tokens'])} prompt tokens"
    )
    training = cheapest["compute"].get("training")
    if training:
        text += f", plus {fmt_flops(training['flops'])} FLOPs once for tuning"
    return text + ")."


def share_lines(results: Mapping[str, Any]) -> list[str]:
    share = results.get("format_share")
    if not share:
        return []
    methods = _by_id(results)
    tuned = methods[share["tuned"]]
    gain = share["tuning_gain"]
    lo, hi = gain["ci"]
    gain_decided = _finite(lo) and _finite(hi) and lo > 0
    line = f"Tuning gain ({tuned['name']} minus zero-shot): {fmt_diff(gain)}."
    if not gain_decided:
        line += (
            " Its interval does not lie above 0, so the share of it that format-only "
            "controls reach cannot be read."
        )
    lines = [line]
    for control, data in share.get("controls", {}).items():
        name = methods[control]["name"]
        reading = share_reading(data["share"], gain_decided)
        explained = {
            "mostly format": "most of the tuning gain is the output format",
            "more than the format": "tuning taught more than the output format",
            "undecided": "the interval is too wide to say how much is format",
        }[reading]
        if not _finite(data["share"].get("mean")):
            lines.append(
                f"{name} ({fmt_stat(methods[control]['accuracy'])}): no share, "
                "since tuning gained nothing over zero-shot."
            )
            continue
        lines.append(
            f"{name} ({fmt_stat(methods[control]['accuracy'])}) reaches "
            f"{fmt_share(data['share'])} of the tuning gain: {explained}."
        )
    return lines


def cost_line(results: Mapping[str, Any]) -> str:
    entries = [m for m in results.get("methods", []) if "cost_per_1000" in m]
    if not entries:
        return ""
    cheapest = min(entries, key=lambda m: (m["cost_per_1000"]["mean"], m["examples"]))
    zero = _by_id(results).get("zero_shot")
    text = (
        f"Lowest expected error cost per 1,000 items: {cheapest['name']}, "
        f"{fmt_stat(cheapest['cost_per_1000'], unit='', digits=2)}"
    )
    if zero is not None and zero["id"] != cheapest["id"]:
        text += f" (zero-shot: {fmt_stat(zero['cost_per_1000'], unit='', digits=2)})"
    return text + "."


def similarity_line(results: Mapping[str, Any]) -> str:
    sim = results.get("similarity")
    if not sim or not sim.get("layers"):
        return ""
    last = sim["layers"][-1]
    return (
        f"Hidden states at k={sim['k']} ({sim['n_items']} test items, last layer): cosine "
        f"ICL-IT {fmt_stat(last['icl_it'], unit='', digits=3)}, anchor-ICL "
        f"{fmt_stat(last['anchor_icl'], unit='', digits=3)}, anchor-IT "
        f"{fmt_stat(last['anchor_it'], unit='', digits=3)}."
    )


def too_wide(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every comparison whose interval includes 0, with its width and the items to resolve it."""
    methods = _by_id(results)
    out = []
    comparisons = results.get("comparisons", {})
    for group in ("vs_zero_shot", "at_equal_size"):
        for comp in comparisons.get(group, []):
            if comp["winner"] is None and not identical(comp):
                lo, hi = comp["difference"]["ci"]
                out.append(
                    {
                        "a": methods[comp["a"]]["name"],
                        "b": methods[comp["b"]]["name"],
                        "difference": comp["difference"],
                        "width": (hi - lo) if _finite(lo) and _finite(hi) else None,
                        "items_to_resolve": comp.get("items_to_resolve"),
                    }
                )
    return out


def verdict(results: Mapping[str, Any], notes: Sequence[str] = ()) -> dict[str, Any]:
    """``{"summary": [...], "by_size": [...], "format": [...], "too_wide": [...]}``."""
    lines, rows = size_lines(results)
    wide = too_wide(results)
    summary = [line for line in (best_line(results), cost_line(results)) if line]
    if wide:
        summary.append(
            f"{len(wide)} comparison(s) are too close to call at this test size "
            f"({results['methods'][0]['n_items']} items); see the list below."
        )
    sim = similarity_line(results)
    return {
        "summary": summary,
        "by_size": lines,
        "by_size_table": rows,
        "format": share_lines(results),
        "similarity": sim,
        "too_wide": wide,
        "notes": list(notes),
    }
