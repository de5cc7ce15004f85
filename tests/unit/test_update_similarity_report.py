"""The update-similarity part of the convergence report and its export rows."""

from __future__ import annotations

from pathlib import Path

from tunelens.experiments.convergence.tidy import update_rows
from tunelens.experiments.convergence.updates_report import update_sentences, update_view


def _stat(mean: float | None) -> dict:
    return {
        "mean": mean,
        "ci": [None if mean is None else mean - 0.1, None if mean is None else mean + 0.1],
    }


def _test(p_holm: float | None) -> dict:
    return {"statistic": 1.0, "p": p_holm, "p_holm": p_holm, "effect": 0.5}


def _updates(rec_value: float | None = 60.0) -> dict:
    rows = [
        {"layer": 0, "simaou": _stat(None), "floor": _stat(None), "above_floor": _test(None)},
        {"layer": 1, "simaou": _stat(0.8), "floor": _stat(0.3), "above_floor": _test(0.001)},
        {"layer": 2, "simaou": _stat(0.5), "floor": _stat(0.4), "above_floor": _test(0.3)},
    ]
    control = [
        {
            "layer": r["layer"],
            "random_init": _stat(0.2),
            "difference": _stat(0.3),
            "above_random_init": _test(0.01 if r["layer"] else None),
        }
        for r in rows
    ]
    rec = {
        "n_pairs": 90,
        "zs_wrong": 40,
        "it_fixed": 20,
        "icl_fixed": 25,
        "both_fixed": 12,
        "min_denominator": 10,
        "value": _stat(rec_value) if rec_value is not None else None,
        "floor": _stat(50.0) if rec_value is not None else None,
        "above_floor": _stat(10.0) if rec_value is not None else None,
        "undecided": None if rec_value is not None else "only 3 pairs ...",
    }
    return {
        "method": "m",
        "attention": {"n_pairs": 90, "layers": rows},
        "residual": {"n_pairs": 90, "layers": rows},
        "rec2ftp": rec,
        "against_random_init": {
            "attention": {"n_pairs": 90, "seeds": [0], "layers": control},
            "residual": None,
            "attention_test": {
                "alpha": 0.05,
                "above_floor_layers": [1],
                "above_random_init_layers": [1, 2],
                "passes_layers": [1],
            },
            "residual_test": None,
            "rec2ftp": {**rec, "value": None, "undecided": "only 2 pairs were wrong ..."},
        },
    }


def test_sentences_state_dai_reading_deutch_test_and_rec2ftp_counts() -> None:
    lines = update_sentences(_updates())
    assert "Dai et al." in lines[0] and "Deutch et al." in lines[0]
    attention = next(line for line in lines if "attention output" in line)
    assert "test passes at layer 1." in attention and "peaks at 0.800" in attention
    assert "above the random-init copy at layers 1-2" in attention
    residual = next(line for line in lines if "residual stream" in line)
    assert "above its floor at layer 1 (no random-init copy ran)" in residual
    rec = next(line for line in lines if line.startswith("Rec2FTP"))
    assert "12 of the 20 pairs" in rec and "40 of 90 pairs were wrong zero-shot" in rec
    assert "more overlap than" in rec  # difference 10 [9.9, 10.1]
    copy = next(line for line in lines if "random-init copy's Rec2FTP" in line)
    assert "undecided" in copy


def test_undecided_rec2ftp_is_said_with_its_reason() -> None:
    lines = update_sentences(_updates(rec_value=None))
    rec = next(line for line in lines if line.startswith("Rec2FTP"))
    assert rec.startswith("Rec2FTP: undecided: only 3 pairs")


def test_view_writes_its_figure_and_tables(tmp_path: Path) -> None:
    entry = {"condition": {"k": 8, "control": "none"}, "update_similarity": _updates()}
    view = update_view(entry, tmp_path / "u.png")
    assert view is not None and (tmp_path / "u.png").stat().st_size > 1000
    attention, residual = view["tables"]
    assert attention["columns"][-1] == "Holm p (> copy)" and len(residual["columns"]) == 4
    assert update_view({"condition": {}}, tmp_path / "none.png") is None


def test_export_rows_name_each_measure() -> None:
    rows = list(update_rows({"model": "m", "seed": "pooled"}, _updates()))
    names = {r["measure"] for r in rows}
    assert {"simaou_attention", "simaou_floor_residual", "simaou_random_init_attention"} <= names
    assert {"rec2ftp", "rec2ftp_floor", "rec2ftp it_fixed", "rec2ftp_random_init it_fixed"} <= names
    rec = next(r for r in rows if r["measure"] == "rec2ftp both_fixed")
    assert rec["value"] == 12 and rec["layer"] is None
