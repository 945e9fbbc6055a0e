"""What the program tells the user: a logger with one verbosity integer and an optional file.

Levels (higher always means more):
  0  warnings only (and the results a task exists to print);
  1  plus one line per epoch and what happens (downloads, saves), and on a terminal a progress
     bar while an epoch runs, which the epoch line replaces (as Keras's default);
  2  plus progress within an epoch as plain lines where the output is not a terminal (a pipe, a file);
  3  plus debug details.

The epoch line (`epoch_line`) shows "train (running)": the mean loss and accuracy over the
epoch's batches, each measured as the weights changed during the epoch, so it usually sits below
the "valid" figures, which the finished epoch's weights give.

Results and messages go to stdout, warnings and errors to stderr. The log file, when given,
receives every line that is shown, without the in-place progress bar.
"""
import sys
import time


def fmt(value):
    """A number as the progress bar and epoch lines show it: .4f, or .4e when tiny."""
    return f"{value:.4f}" if abs(value) > 1e-3 or value == 0 else f"{value:.4e}"


def counted(n, noun, plural=None):
    """"1 epoch", "2 epochs": n and its noun, plural (noun + "s" unless given) unless n is 1."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def fmt_seconds(seconds):
    """A duration: 0.42s under ten seconds, 12.3s from there."""
    return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"


def epoch_line(record, num_epochs):
    """epoch 3/30  train (running) loss 0.1234 acc 96.50%  valid loss 0.1111 acc 96.80%  lr 0.1  2.14s,
    from an epoch's record (engine.py's `Engine.train`)."""
    line = (f"epoch {record['epoch']}/{num_epochs}  train (running) loss {fmt(record['train_loss'])} "
            f"acc {100 * record['train_accuracy']:.2f}%")
    if record["valid_loss"] is not None:
        line += f"  valid loss {fmt(record['valid_loss'])} acc {100 * record['valid_accuracy']:.2f}%"
    return line + f"  lr {record['lr']:.4g}  {fmt_seconds(record['seconds'])}"


class Logger:
    def __init__(self, level=1, log_file=None, stream=None):
        self.level = level
        self.stream = stream or sys.stdout
        self.file = open(log_file, "a", encoding="utf-8") if log_file else None
        self._last_draw = 0.0
        self._drawn = False

    def _emit(self, message, stream):
        self.end_progress()                   # the message takes the progress bar's place
        stream.write(message + "\n")
        stream.flush()
        if self.file:
            self.file.write(message + "\n")
            self.file.flush()

    def result(self, message):
        self._emit(message, self.stream)

    def warning(self, message):
        self._emit(f"warning: {message}", sys.stderr)

    def error(self, message):
        """A failure the task goes on past (one of several inputs, say); the task decides the exit status."""
        self._emit(f"error: {message}", sys.stderr)

    def info(self, message):
        if self.level >= 1:
            self._emit(message, self.stream)

    def debug(self, message):
        if self.level >= 3:
            self._emit(message, self.stream)

    def progress(self, done, total, text=""):
        """Progress within a longer step: `done` of `total` (None if unknown) batches or bytes.

        On a terminal, from level 1: a bar redrawn in place at most 10 times a second, erased by
        the next message. Elsewhere, from level 2: a plain line about four times per `total`.
        `text` may be a function giving the text, called only when it is shown (it may have to
        copy from a GPU).
        """
        if self.stream.isatty() and self.level >= 1:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or done == total:
                self.stream.write("\r" + progress_bar(done, total, _text(text)) + "\033[K")   # \033[K: clear to the end
                self.stream.flush()
                self._drawn, self._last_draw = True, now
        elif self.level >= 2 and total and (done == total or done % -(-total // 4) == 0):   # -(-a // b): ceil(a / b)
            self._emit(f"{done}/{total} {_text(text)}".rstrip(), self.stream)

    def end_progress(self):
        """Erases the progress bar, if one is drawn, so that the next line starts clean."""
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False

    def close(self):
        if self.file:
            self.file.close()
            self.file = None


def _text(text):
    return text() if callable(text) else text


def progress_bar(done, total, text="", width=30):
    """'120/550 [======>.......................] text', or '120 text' when the total is unknown."""
    if not total:
        return f"{done} {text}".rstrip()
    filled = min(width, width * done // total)
    bar = "=" * filled + (">" + "." * (width - filled - 1) if filled < width else "")
    return f"{done}/{total} [{bar}] {text}".rstrip()
