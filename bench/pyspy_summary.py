"""Summarise a py-spy ``--format raw`` profile: the top frames by self and by total time.

``python -m bench.pyspy_summary FILE [TOP]``; FILE comes from a run with
``BENCH_PYSPY=<dir>`` (see bench/README.md). Each line of the file is a collapsed stack
(``frame;frame;...;leaf count``); a frame is ``function (file:line)``.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

LINE_NUMBER = re.compile(r":\d+\)$")


def _short(frame: str) -> str:
    """``fn (/long/path/site-packages/pkg/mod.py:12)`` -> ``fn (pkg/mod.py)``."""
    frame = LINE_NUMBER.sub(")", frame)
    for marker in ("site-packages/", "lib/python3.", "/work/main/", "/aw-snap/"):
        head, found, tail = frame.partition(marker)
        if found:
            if marker == "lib/python3.":
                tail = "stdlib/" + tail.partition("/")[2]
            name = head.partition(" (")[0]
            return f"{name} ({tail}"
    return frame


def summarise(path: Path, top: int = 25) -> str:
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        if frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]
        if not frames:
            continue
        samples += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            total_time[frame] += count
    lines = [f"{path.name}: {samples} samples"]
    for title, counter in (("self", self_time), ("total (inclusive)", total_time)):
        lines.append(f"\ntop {top} by {title}:")
        for frame, count in counter.most_common(top):
            lines.append(f"  {100 * count / samples:5.1f}%  {frame}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(summarise(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
