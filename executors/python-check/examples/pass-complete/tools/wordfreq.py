"""Print the ten most common words of a text file (my own helper for the lab)."""

import sys
from collections import Counter


def main(path: str) -> None:
    with open(path, encoding="utf-8") as handle:
        counts = Counter(handle.read().lower().split())
    for word, count in counts.most_common(10):
        print(f"{count:5d}  {word}")


if __name__ == "__main__":
    main(sys.argv[1])
