import pytest

from lovt_keras.training import tasks as t


def test_the_eighteen_paper_tasks_follow_the_spec_table():
    assert sorted(t.PAPER_TASKS) == list(range(1, 19))
    # (dataset, head, frozen, fraction, lr grid, batch, epochs, metric) per the official
    # src/analysis/evaluation_job.py and configs/evaluation_model/*.yaml.
    expected = {
        1: (t.RSNA, "yolov3", False, 0.01, (3e-4, 1e-4), 8, 500, "mAP"),
        2: (t.RSNA, "yolov3", False, 0.1, (3e-4, 1e-3), 64, 100, "mAP"),
        3: (t.RSNA, "yolov3", False, 1.0, (3e-4, 1e-4), 64, 50, "mAP"),
        4: (t.RSNA, "yolov3", True, 0.01, (1e-3, 3e-4), 8, 500, "mAP"),
        5: (t.RSNA, "yolov3", True, 0.1, (1e-3,), 64, 100, "mAP"),
        6: (t.RSNA, "yolov3", True, 1.0, (3e-4, 1e-3), 64, 50, "mAP"),
        7: (t.RSNA, "linear", True, 0.01, (3e-2, 1e-2, 3e-3, 1e-4), 8, 500, "dice"),
        8: (t.RSNA, "linear", True, 0.1, (3e-2, 1e-2, 3e-3, 1e-3), 64, 100, "dice"),
        9: (t.RSNA, "linear", True, 1.0, (3e-2, 1e-2, 3e-3, 1e-3), 64, 50, "dice"),
        10: (t.COVID, "unet", False, 1.0, (1e-4, 3e-4), 8, 100, "dice"),
        11: (t.COVID, "unet", True, 1.0, (1e-4, 3e-4, 1e-3), 8, 100, "dice"),
        12: (t.COVID, "linear", True, 1.0, (3e-2, 1e-2, 3e-3, 1e-3), 8, 100, "dice"),
        13: (t.SIIM, "unet", False, 1.0, (3e-5, 1e-5), 64, 50, "dice"),
        14: (t.SIIM, "unet", True, 1.0, (3e-5, 1e-5), 64, 50, "dice"),
        15: (t.OBJECT_CXR, "yolov3", False, 1.0, (1e-3, 3e-4), 64, 100, "froc"),
        16: (t.OBJECT_CXR, "yolov3", True, 1.0, (1e-3, 3e-3), 64, 100, "froc"),
        17: (t.OBJECT_CXR, "linear", True, 1.0, (3e-1, 1e-1, 3e-2, 1e-2), 64, 100, "dice"),
        18: (t.NIH, "linear", True, 1.0, (1e-1, 3e-2, 1e-2), 64, 100, "dice"),
    }
    for number, task in t.PAPER_TASKS.items():
        got = (task.dataset, task.head, task.frozen, task.label_fraction, task.lr_grid,
               task.batch_size, task.max_epochs, task.metric)
        assert got == expected[number], number
        assert task.number == number and task.label.startswith(f"{number} ")
        assert task.image_size == 224 and task.classes is None
        # Patience 20 for the 1 % RSNA and the COVID tasks, else 10.
        assert task.patience == (20 if number in (1, 4, 7, 10, 11, 12) else 10)
        # RSNA validates on the first 10 % of its validation split.
        assert task.validation_fraction == (0.1 if task.dataset == t.RSNA else 1.0)
        warmup = 0 if task.frozen else (20 if task.dataset == t.COVID else 100)
        assert task.warmup_steps == warmup, number


def test_paper_task_takes_the_dataset_folder_and_overrides(tmp_path):
    task = t.paper_task(9, tmp_path, max_epochs=1)
    assert task.dataset == str(tmp_path) and task.max_epochs == 1 and task.number == 9
    assert t.PAPER_TASKS[9].dataset == t.RSNA and t.PAPER_TASKS[9].max_epochs == 50
    with pytest.raises(ValueError, match="numbered 1-18"):
        t.paper_task(19, tmp_path)


def test_synthcxr_counterparts_cover_the_task_types():
    kinds = {(x.head, x.frozen, x.classes, x.label_fraction) for x in t.SYNTH_TASKS.values()}
    for fraction in (0.01, 0.1, 1.0):
        assert ("yolov3", True, ("opacity",), fraction) in kinds
        assert ("linear", True, ("opacity",), fraction) in kinds
    assert ("unet", True, ("pneumothorax",), 0.3) in kinds
    assert ("unet", False, ("pneumothorax",), 0.3) in kinds
    assert ("yolov3", True, ("foreign_object",), 1.0) in kinds
    assert ("linear", True, ("foreign_object",), 1.0) in kinds
    findings = t.SYNTH_TASKS["synth_findings_linear"]
    assert len(findings.classes) == 6 and findings.metric == "dice"
    for task in t.SYNTH_TASKS.values():
        assert task.dataset == "synthcxr" and task.dataset_options["seed"] == 1
        assert len(task.lr_grid) == 2 and task.number is None
    assert t.SYNTH_TASKS["synth_foreign_object_yolov3_frozen"].metric == "froc"
    # Low-label SynthCXR tasks: labelled rows from 5000 images (1 % = 50), epochs of the
    # 100 % task's ceil(1000 / 16) = 63 batches; the paper's tasks keep one pass.
    low = {name: task for name, task in t.SYNTH_TASKS.items() if task.steps_per_epoch}
    assert set(low) == set(t.LOW_LABEL_TASKS) == {
        f"synth_opacity_{h}_{p}" for h in ("linear", "yolov3_frozen") for p in (1, 10)}
    for task in low.values():
        assert task.steps_per_epoch == 63 and task.batch_size == 16
        assert task.dataset_options == dict(t.SYNTHCXR_EVAL_DATA, num_train=5000)
    assert t.SYNTH_TASKS["synth_opacity_linear_100"].dataset_options["num_train"] == 1000
    assert not any(task.steps_per_epoch for task in t.PAPER_TASKS.values())
    # Resizing: the quickstart's 300 / 2000 images; batch 8 -> ceil(300 / 8) = 38.
    small = t.synth_task("synth_opacity_yolov3_frozen_1", num_train=300, low_label_num_train=2000)
    assert small.steps_per_epoch == 19 and small.dataset_options["num_train"] == 2000
    small = t.synth_task("synth_opacity_yolov3_frozen_1", num_train=300, batch_size=8)
    assert small.steps_per_epoch == 38 and small.dataset_options["num_train"] == 5000
    full = t.synth_task("synth_opacity_linear_100", num_train=300, low_label_num_train=2000)
    assert full.steps_per_epoch is None and full.dataset_options["num_train"] == 300
    assert t.synth_task("synth_opacity_linear_1", steps_per_epoch=None).steps_per_epoch is None
    small = t.synth_task("synth_opacity_linear_10", image_size=64)
    assert small.image_size == 64 and t.SYNTH_TASKS["synth_opacity_linear_10"].image_size == 224
    with pytest.raises(ValueError, match="no SynthCXR task"):
        t.synth_task("synth_nothing")
