import datasets
import keras
import numpy as np
import pytest

from lovt_keras.training.data import EpochView, first_studies


class Numbers(keras.utils.PyDataset):
    def __init__(self, n):
        super().__init__(workers=3, max_queue_size=5)
        self.n = n
        self.calls = []

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return {"x": np.full((1,), index)}

    def on_epoch_begin(self):
        self.calls.append("begin")

    def on_epoch_end(self):
        self.calls.append("end")


def test_epoch_view_slices_and_forwards_hooks():
    data = Numbers(7)
    view = EpochView(data, start=2, stop=6)
    assert len(view) == 4
    assert [int(view[i]["x"][0]) for i in range(4)] == [2, 3, 4, 5]
    assert view.workers == 3 and view.max_queue_size == 5
    with pytest.raises(IndexError):
        view[4]
    view.on_epoch_begin()
    view.on_epoch_end()
    assert data.calls == ["begin", "end"]
    assert len(EpochView(data)) == 7
    with pytest.raises(ValueError, match="0 <= start < stop <= len"):
        EpochView(data, start=6, stop=6)


def test_epoch_view_feeds_fit_the_remaining_batches():
    seen = []

    class Recording(Numbers):
        def __getitem__(self, index):
            seen.append(index)
            x = np.full((2, 1), float(index), "float32")
            return x, x

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    data = Recording(5)
    data.workers = 1
    model.fit(EpochView(data, start=3), epochs=1, verbose=0, shuffle=False)
    # TensorFlow reads a few batches ahead of time to infer the signature.
    assert sorted(set(seen)) == [3, 4]


def test_first_studies_keeps_the_rows_of_the_first_studies():
    dataset = datasets.Dataset.from_dict(
        {"study_id": ["a", "a", "b", "c", "c", "d", "b"], "row": list(range(7))}
    )
    assert first_studies(dataset) is dataset
    assert first_studies(dataset, fraction=1.0) is dataset
    # 4 studies in order of first appearance a, b, c, d: 50 % -> a and b (rows 0, 1, 2, 6).
    assert first_studies(dataset, fraction=0.5)["row"] == [0, 1, 2, 6]
    assert first_studies(dataset, fraction=0.3)["row"] == [0, 1]  # round(1.2) = 1 study
    assert first_studies(dataset, fraction=0.75, max_studies=1)["row"] == [0, 1]
    assert first_studies(dataset, max_studies=10) is dataset
    with pytest.raises(ValueError, match="keeps no study"):
        first_studies(dataset, fraction=0.1)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        first_studies(dataset, fraction=1.5)
