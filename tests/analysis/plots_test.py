import matplotlib.colors as mcolors
import pytest

from lovt_keras.analysis import plots


@pytest.mark.parametrize("count", [1, 10, 11, 20, 21, 33])
def test_run_colors_are_distinct(count):
    colors = plots.run_colors(count)
    assert len(colors) == count
    assert len({mcolors.to_hex(c) for c in colors}) == count


def _history(offset):
    return [{"epoch": e, "loss": offset + 1.0 / e, "val_loss": offset + 2.0 / e,
             "global_loss": offset + 0.5 / e} for e in (1, 2, 3)]


def test_loss_curves_give_each_run_one_colour_in_every_panel(tmp_path, monkeypatch):
    # 12 runs: more than the default colour cycle's 10, which repeated colours and gave a
    # run's training and validation curves different ones.
    histories = {f"run {i}": _history(i) for i in range(12)}
    saved = {}
    real_save = plots.save_figure

    def capture(fig, axes, used, path, **kwargs):
        saved["lines"] = [(ax.get_title(), line.get_label(), mcolors.to_hex(line.get_color()),
                           line.get_linestyle(), list(line.get_ydata()))
                          for ax in axes.flat for line in ax.get_lines()]
        saved["legend"] = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        return real_save(fig, axes, used, path, **kwargs)

    monkeypatch.setattr(plots, "save_figure", capture)
    path = plots.plot_loss_curves(histories, tmp_path / "curves.png")
    assert path.stat().st_size > 0

    colour_of = {}
    for title, label, colour, style, ys in saved["lines"]:
        run = label.removesuffix(" (val)")
        assert colour_of.setdefault(run, colour) == colour, (title, label)
        assert style == ("--" if label.endswith("(val)") else "-")
        offset = int(run.split()[1])
        key = title if not label.endswith("(val)") else "val_" + title
        assert ys == pytest.approx([r[key] for r in _history(offset)])
    assert len(colour_of) == 12 and len(set(colour_of.values())) == 12
    # Panels: global_loss (training only) and loss (training and validation).
    assert sorted({t for t, *_ in saved["lines"]}) == ["global_loss", "loss"]
    assert len(saved["lines"]) == 12 * 3
    assert saved["legend"] == [*histories, "training", "validation"]
