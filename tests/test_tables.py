import numpy as np
import pandas as pd
import scipy.stats

from covidlens.evaluate.tables import comparison_csv, comparison_frame, comparison_rows

CLASSES = ["NCP", "CP", "Normal"]


def predictions(truth: list[int], predicted: list[int], ids: list[str] | None = None) -> pd.DataFrame:
    """A Predictions table whose argmax is `predicted` (probability 0.8 on it)."""
    probs = np.full((len(truth), 3), 0.1)
    probs[np.arange(len(truth)), predicted] = 0.8
    frame = pd.DataFrame(
        {
            "sample_id": ids or [f"s{i}" for i in range(len(truth))],
            "round": 0,
            "fold": 0,
            "y_true": [CLASSES[t] for t in truth],
        }
    )
    for i, name in enumerate(CLASSES):
        frame[f"p_{name}"] = probs[:, i]
    return frame


def groups():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 200).tolist()
    good = [t if rng.uniform() < 0.95 else (t + 1) % 3 for t in truth]
    poor = [t if rng.uniform() < 0.70 else (t + 1) % 3 for t in truth]
    other_truth = rng.integers(0, 3, 150).tolist()
    other = [t if rng.uniform() < 0.9 else (t + 2) % 3 for t in other_truth]
    return {
        "depth=2": predictions(truth, good),
        "depth=4": predictions(truth, poor),
        "depth=8": predictions(other_truth, other, [f"v{i}" for i in range(150)]),
    }, truth, good, poor


def test_rows_carry_fisher_stars_against_the_first_row_as_scipy_computes_them():
    frames, truth, good, poor = groups()
    settings = {name: {"depth": int(name.split("=")[1])} for name in frames}
    rows = comparison_rows(frames, settings, CLASSES, "NCP", n_resamples=200, seed=1)
    assert [r["group"] for r in rows] == list(frames)
    first, second = rows[0], rows[1]
    assert first["metrics"]["accuracy"]["stars"] == "" and first["metrics"]["accuracy"]["p_value"] is None
    correct_good = int(np.sum(np.array(good) == np.array(truth)))
    correct_poor = int(np.sum(np.array(poor) == np.array(truth)))
    p = scipy.stats.fisher_exact([[correct_poor, 200 - correct_poor], [correct_good, 200 - correct_good]])[1]
    assert np.isclose(second["metrics"]["accuracy"]["p_value"], p)
    assert second["metrics"]["accuracy"]["stars"] == ("***" if p < 0.001 else "**" if p < 0.01 else "*")
    assert second["metrics"]["f1"]["p_value"] is None  # F1 has no Fisher test
    assert np.isclose(second["metrics"]["accuracy"]["estimate"], correct_poor / 200)
    assert second["metrics"]["accuracy"]["low"] < second["metrics"]["accuracy"]["estimate"]


def test_mcnemar_only_for_paired_predictions_and_equal_to_the_exact_binomial_test():
    frames, truth, good, poor = groups()
    settings = {name: {"depth": name} for name in frames}
    rows = comparison_rows(frames, settings, CLASSES, "NCP", n_resamples=50)
    a = np.array(good) == np.array(truth)
    b = np.array(poor) == np.array(truth)
    discordant_ab, discordant_ba = int(np.sum(a & ~b)), int(np.sum(~a & b))
    expected = scipy.stats.binomtest(discordant_ab, discordant_ab + discordant_ba, 0.5).pvalue
    assert rows[0]["mcnemar_p"] is None
    assert np.isclose(rows[1]["mcnemar_p"], expected)
    assert rows[2]["mcnemar_p"] is None  # tested on other samples: no paired test


def test_mcnemar_pairs_rows_by_sample_id_not_by_position():
    frames, *_ = groups()
    shuffled = frames["depth=4"].sample(frac=1.0, random_state=3).reset_index(drop=True)
    pair = {"a": frames["depth=2"], "b": frames["depth=4"]}
    pair_shuffled = {"a": frames["depth=2"], "b": shuffled}
    settings = {"a": {"k": 1}, "b": {"k": 2}}
    p = comparison_rows(pair, settings, CLASSES, "NCP", n_resamples=20)[1]["mcnemar_p"]
    p_shuffled = comparison_rows(pair_shuffled, settings, CLASSES, "NCP", n_resamples=20)[1]["mcnemar_p"]
    assert p == p_shuffled


def test_printed_table_has_paper_002_layout_and_html_marks_the_best_and_escapes_settings():
    frames, *_ = groups()
    settings = {name: {"model": f"<{name}>", "batch size": 8} for name in frames}
    rows = comparison_rows(frames, settings, CLASSES, "NCP", n_resamples=100)
    text = comparison_frame(rows)
    assert list(text.columns[:6]) == ["model", "batch size", "Accuracy (95% CI)", "F1-score (95% CI)",
                                      "Precision (95% CI)", "Recall (95% CI)"]
    cell = text.loc[1, "Accuracy (95% CI)"]
    mean = rows[1]["metrics"]["accuracy"]["bootstrap_mean"]
    assert cell.startswith(f"{mean:.4f}***") and cell.endswith(")")
    html = comparison_frame(rows, html=True)
    assert html.loc[0, "Accuracy (95% CI)"].startswith("<b>")  # depth=2 is the most accurate
    assert not html.loc[1, "Accuracy (95% CI)"].startswith("<b>")
    assert html.loc[0, "model"] == "&lt;depth=2&gt;"
    flat = comparison_csv(rows)
    assert {"accuracy_estimate", "accuracy_low", "accuracy_high", "recall_p_value", "mcnemar_p"} <= set(flat.columns)
    assert len(flat) == 3


def test_settings_columns_follow_the_given_order():
    frames, *_ = groups()
    settings = {name: {"batch_size": 8, "depth": i} for i, name in enumerate(frames)}
    rows = comparison_rows(frames, settings, CLASSES, "NCP", n_resamples=20)
    assert list(comparison_frame(rows, settings=["depth", "batch_size"]).columns[:2]) == ["depth", "batch_size"]
    assert list(comparison_frame(rows).columns[:2]) == ["batch_size", "depth"]
