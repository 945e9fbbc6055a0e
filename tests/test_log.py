"""The logger: verbosity levels, the log file, and progress on a terminal and off it."""
import io

from log import Logger, fmt


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


def test_progress_redraws_in_place_on_a_terminal():
    log = Logger(level=2, stream=Terminal())
    for done in range(1, 101):
        log.progress(done, 100, "loss 0.1")
    log.info("epoch 1/1")
    text = log.stream.getvalue()
    assert text.startswith("\r1/100 loss 0.1") and "\r100/100 loss 0.1" in text
    assert text.count("\n") == 2                                   # the finished bar, then the epoch line
    assert text.count("\r") < 10                                   # redraws are throttled


def test_progress_prints_a_few_plain_lines_when_not_a_terminal():
    log = Logger(level=2, stream=io.StringIO())
    for done in range(1, 551):
        log.progress(done, 550, "x")
    lines = log.stream.getvalue().splitlines()
    assert lines == ["138/550 x", "276/550 x", "414/550 x", "550/550 x"]


def test_no_progress_below_level_2():
    log = Logger(level=1, stream=Terminal())
    log.progress(1, 2, "x")
    assert log.stream.getvalue() == ""


def test_fmt():
    assert fmt(0.12345) == "0.1235" and fmt(-2.0) == "-2.0000" and fmt(0.00001234) == "1.2340e-05"
