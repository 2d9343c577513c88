"""Lab 2: small text utilities."""

import re
from collections import Counter

WORD = re.compile(r"[a-z0-9']+")


def word_count(text: str) -> int:
    """Number of whitespace-separated words in text."""
    return len(text.split())


def capitalize_words(text: str) -> str:
    """Upper-case the first letter of every word, keeping the spacing as it is."""
    return re.sub(r"\S+", lambda m: m.group()[:1].upper() + m.group()[1:], text)


def is_palindrome(text: str) -> bool:
    """True if text reads the same backwards, ignoring case, spaces and punctuation."""
    letters = [c.lower() for c in text if c.isalnum()]
    return letters == letters[::-1]


def most_common_word(text: str) -> str | None:
    """The most frequent word (case-insensitive); ties go to the word seen first."""
    words = WORD.findall(text.lower())
    if not words:
        return None
    counts = Counter(words)
    return max(counts, key=lambda w: (counts[w], -words.index(w)))


if __name__ == "__main__":
    sample = "The cat and the hat sat on the mat."
    print(word_count(sample), most_common_word(sample), capitalize_words(sample))
