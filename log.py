"""What the program tells the user: a logger with one verbosity integer and an optional file.

Levels (higher always means more):
  0  warnings only (and the results a task exists to print);
  1  plus one line per epoch and what happens (downloads, saves);
  2  plus progress within an epoch;
  3  plus debug details.
Results and messages go to stdout, warnings to stderr. The log file, when given, receives
every line that is shown, without the in-place progress redraws.
"""
import sys
import time


def fmt(value):
    """A number as the progress bar and epoch lines show it: .4f, or .4e when tiny."""
    return f"{value:.4f}" if abs(value) > 1e-3 or value == 0 else f"{value:.4e}"


class Logger:
    def __init__(self, level=1, log_file=None, stream=None):
        self.level = level
        self.stream = stream or sys.stdout
        self.file = open(log_file, "a", encoding="utf-8") if log_file else None
        self._last_draw = 0.0
        self._drawn = False

    def _emit(self, message, stream):
        if self._drawn:                       # finish an in-place progress line first
            self.stream.write("\n")
            self._drawn = False
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
        """At level 2, a progress line: redrawn in place on a terminal at most 10 times a second,
        otherwise printed as a plain line about four times per `total`. `text` may be a function
        giving the text, called only when a line is shown (it may have to copy from a GPU)."""
        if self.level < 2:
            return
        line = lambda: f"{done}/{total if total is not None else '?'} {text() if callable(text) else text}".rstrip()
        now = time.monotonic()
        if self.stream.isatty():
            if now - self._last_draw >= 0.1 or done == total:
                self.stream.write("\r" + line() + "\033[K")
                self.stream.flush()
                self._drawn, self._last_draw = done != total, now
                if done == total:
                    self.stream.write("\n")
        elif total and (done == total or done % -(-total // 4) == 0):   # -(-a // b) is ceil(a / b)
            self._emit(line(), self.stream)

    def close(self):
        if self.file:
            self.file.close()
            self.file = None
