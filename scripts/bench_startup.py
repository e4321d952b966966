"""Start-up cost of the yolo_attn hook: self time of `_yolo_attn_autoload` in `python -X importtime -c pass`.

Prints the median over several fresh interpreters, and whether torch was imported at start-up (it must not be).
Target: well under 1 ms.
"""

import statistics
import subprocess
import sys


def main(runs: int = 15) -> None:
    times, torch_seen = [], False
    for _ in range(runs):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True).stderr
        for line in err.splitlines():
            if "|" not in line:
                continue
            parts = [p.strip() for p in line.split("|")]
            name = parts[-1]
            torch_seen |= name == "torch" or name.startswith("torch.")
            if name == "_yolo_attn_autoload":
                times.append(int(parts[0].split(":")[-1]))
    if not times:
        sys.exit("_yolo_attn_autoload was not imported at start-up: is yolo_attn installed (pip install -e .)?")
    print(f"_yolo_attn_autoload self time: median {statistics.median(times)} us, max {max(times)} us over {runs} runs")
    print(f"torch imported at start-up: {torch_seen}")


if __name__ == "__main__":
    main()
