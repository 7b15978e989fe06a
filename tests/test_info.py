from charrnn.info import _epoch, loss_chart, settings_flags, vocab_preview


def test_chart_has_a_column_per_point_or_per_run_of_points():
    lines = loss_chart([(10 * i, 3.0 - i / 100) for i in range(1, 201)], height=5, width=60)
    assert len(lines) == 5 + 2 and lines[-2].endswith("+" + "-" * 60) and lines[-1].strip() == "step 10 to 2,000"
    assert lines[0].split("|")[0].strip() == f"{3.0 - (1 + 2 + 3) / 300:.3f}"  # the mean of the first column
    assert lines[0].split("|")[1].startswith("*") and lines[4].split("|")[1].startswith(" ")  # falling
    assert lines[4].endswith("*") and lines[4].split("|")[0].strip() == "1.015"
    flat = loss_chart([(1, 2.0), (2, 2.0)], height=3)
    assert flat[0].endswith("|**")


def test_epochs_are_steps_over_steps_per_epoch():
    assert _epoch(10, 20) == 0.5 and _epoch(25, 20) == 1.25
    assert _epoch(None, 20) is None and _epoch(5, None) is None and _epoch(5, 0) is None


def test_settings_read_as_train_flags():
    config = {"cell": "gru", "layers": 2, "hidden": 8, "embed": 4, "dropout": 0.25, "vocab_size": 9}
    train = {"batch_size": 5, "lr": 0.002, "max_time": 90.0, "max_steps": None}
    assert settings_flags(config, train) == ("--cell gru --layers 2 --hidden 8 --embed 4 --dropout 0.25 "
                                             "--batch-size 5 --lr 0.002 --max-time 90s")


def test_vocabulary_preview_shows_control_characters():
    assert vocab_preview(["\n", " ", "a", "é"]) == '"\\n aé"'
    assert vocab_preview([chr(0x4E00 + i) for i in range(100)], limit=3) == '"一丁丂" and 97 more'
