"""The logger: verbosity levels, the log file, and progress on a terminal and off it."""
import io

from log import Logger, epoch_line, fmt, fmt_seconds, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_levels_and_log_file(tmp_path, capsys):
    path = tmp_path / "run.log"
    log = Logger(level=1, log_file=str(path), stream=io.StringIO())
    log.info("epoch line")
    log.debug("details")
    log.warning("careful")
    log.result("Test accuracy: 99.00%")
    log.close()
    assert log.stream.getvalue() == "epoch line\nTest accuracy: 99.00%\n"
    assert capsys.readouterr().err == "warning: careful\n"
    assert path.read_text() == "epoch line\nwarning: careful\nTest accuracy: 99.00%\n"


def test_progress_is_a_bar_on_a_terminal_that_the_next_line_replaces():
    log = Logger(level=1, stream=Terminal())
    for done in range(1, 101):
        log.progress(done, 100, "loss 0.1")
    log.info("epoch 1/1")
    text = log.stream.getvalue()
    assert text.startswith("\r1/100 [>" + "." * 29 + "] loss 0.1\033[K")
    assert "\r100/100 [" + "=" * 30 + "] loss 0.1\033[K" in text
    assert text.endswith("\r\033[K" + "epoch 1/1\n")                # the bar is erased, then the epoch line
    assert text.count("\n") == 1 and text.count("\r") < 10          # redraws are throttled


def test_progress_prints_a_few_plain_lines_when_not_a_terminal_at_level_2(tmp_path):
    log = Logger(level=2, stream=io.StringIO(), log_file=str(tmp_path / "run.log"))
    for done in range(1, 551):
        log.progress(done, 550, "x")
    log.close()
    lines = log.stream.getvalue().splitlines()
    assert lines == ["138/550 x", "276/550 x", "414/550 x", "550/550 x"]
    assert (tmp_path / "run.log").read_text().splitlines() == lines


def test_no_progress_off_a_terminal_below_level_2_nor_at_level_0():
    for level, stream in ((1, io.StringIO()), (0, Terminal())):
        log = Logger(level=level, stream=stream)
        log.progress(1, 2, "x")
        assert log.stream.getvalue() == ""


def test_a_bar_of_unknown_total_and_a_full_one():
    assert progress_bar(5, None, "file.gz") == "5 file.gz"
    assert progress_bar(3, 3, width=4) == "3/3 [====]" and progress_bar(1, 4, width=4) == "1/4 [=>..]"


def test_fmt():
    assert fmt(0.12345) == "0.1235" and fmt(-2.0) == "-2.0000" and fmt(0.00001234) == "1.2340e-05"


def test_durations_under_ten_seconds_keep_two_decimals():
    assert fmt_seconds(0.004) == "0.00s" and fmt_seconds(0.42) == "0.42s" and fmt_seconds(9.5) == "9.50s"
    assert fmt_seconds(10) == "10.0s" and fmt_seconds(41.24) == "41.2s"


def test_the_epoch_line_says_the_train_figures_are_running_ones():
    record = {"epoch": 3, "train_loss": 0.12344, "train_accuracy": 0.965, "valid_loss": 0.11112,
              "valid_accuracy": 0.968, "lr": 0.1, "seconds": 0.421}
    assert epoch_line(record, 30) == ("epoch 3/30  train (running) loss 0.1234 acc 96.50%  "
                                      "valid loss 0.1111 acc 96.80%  lr 0.1  0.42s")
    record.update(valid_loss=None, valid_accuracy=None, seconds=12.34)
    assert epoch_line(record, 30) == "epoch 3/30  train (running) loss 0.1234 acc 96.50%  lr 0.1  12.3s"
