"""Training logs stay readable where stderr is not a terminal (a log file, a server's captured output): whole lines,
one at the end of every epoch, and none of the carriage-return frames a progress bar draws."""
import re

import medanomaly
from medanomaly.io import read_image


def test_training_to_a_non_terminal_writes_lines_not_bar_frames(kermany_films, capsys):
    films = [read_image(path) for path in kermany_films["NORMAL"][:6]]
    model = medanomaly.create("ae", image_size=32, channels=[4, 8, 8], batch_size=2, epochs=2, num_workers=0)
    model.fit(films, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b[" not in err  # no redrawn bar, no terminal control codes
    lines = err.splitlines()
    for epoch in (1, 2):
        ends = [line for line in lines if re.match(rf"epoch {epoch}/2 step (\d+)/\1 loss \d", line)]
        assert len(ends) == 1, err  # exactly one line closes each epoch
    assert len(lines) < 20, err  # a line per epoch (and one every 30 s on a slow machine), not one per step
