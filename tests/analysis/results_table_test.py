import numpy as np
import pandas as pd
import pytest

from lovt_keras.analysis.results_table import (
    format_cell,
    results_table,
    to_markdown,
    write_table,
)


def _result(method, task, mean, ci, number=None, label=None):
    return {"method": method, "task": task, "label": label, "mean": mean, "ci95": ci,
            "number": number}


RESULTS = [
    _result("LoVT", "synth_a", 0.4567, 0.0123),
    _result("LoVT", "rsna_linear_100", 0.518, 0.0, number=9, label="9 RSNA Lin 100%"),
    _result("LoVT", "rsna_yolov3_frozen_10", 0.164, 0.013, number=5, label="5 RSNA YOLO-Frz 10%"),
    _result("Random", "rsna_yolov3_frozen_10", 0.04, 0.003, number=5, label="5 RSNA YOLO-Frz 10%"),
    _result("Random", "synth_a", 0.1, float("nan")),
]


def test_cells_are_percent_mean_plus_minus_ci():
    assert format_cell(0.4567, 0.0123) == "45.7 ± 1.2"
    assert format_cell(0.05, 0.0) == "5.0 ± 0.0"
    assert format_cell(0.1, float("nan")) == "10.0"  # one seed: no interval
    assert format_cell(0.12345, 0.01, decimals=2) == "12.35 ± 1.00"
    assert format_cell(float("nan"), 0.1) == "nan"


def test_methods_are_rows_and_tasks_columns_in_paper_order():
    table = results_table(RESULTS)
    assert list(table.index) == ["LoVT", "Random"] and table.index.name == "method"
    # Paper tasks by number, then the others in order of appearance.
    assert list(table.columns) == ["5 RSNA YOLO-Frz 10%", "9 RSNA Lin 100%", "synth_a"]
    assert table.loc["LoVT"].tolist() == ["16.4 ± 1.3", "51.8 ± 0.0", "45.7 ± 1.2"]
    assert table.loc["Random"].tolist() == ["4.0 ± 0.3", "", "10.0"]
    chosen = results_table(RESULTS, methods=["Random", "LoVT"], columns=["synth_a"])
    assert chosen.to_dict() == {"synth_a": {"Random": "10.0", "LoVT": "45.7 ± 1.2"}}


def test_duplicates_and_missing_method_are_errors():
    with pytest.raises(ValueError, match="two results for method 'LoVT' and task 'synth_a'"):
        results_table(RESULTS + [_result("LoVT", "synth_a", 0.1, 0.1)])
    with pytest.raises(ValueError, match="has no 'method'"):
        results_table([{"task": "t", "mean": 0.1, "ci95": 0.0}])


def test_markdown_and_csv_files(tmp_path):
    table = results_table(RESULTS[:2])
    assert to_markdown(table) == (
        "| method | 9 RSNA Lin 100% | synth_a |\n"
        "|---|---|---|\n"
        "| LoVT | 51.8 ± 0.0 | 45.7 ± 1.2 |\n"
    )
    csv_path, md_path = write_table(table, tmp_path / "out" / "results")
    assert csv_path.name == "results.csv" and md_path.name == "results.md"
    assert md_path.read_text() == to_markdown(table)
    back = pd.read_csv(csv_path, index_col="method", keep_default_na=False)
    assert back.loc["LoVT", "synth_a"] == "45.7 ± 1.2"
    np.testing.assert_array_equal(back.to_numpy(), table.to_numpy())
