"""Lab 2: small text utilities."""

from collections import Counter


def word_count(text: str) -> int:
    """Number of whitespace-separated words in text."""
    return len(text.split())


def capitalize_words(text: str) -> str:
    """Upper-case the first letter of every word."""
    return " ".join(word.capitalize() for word in text.split(" "))


def is_palindrome(text: str) -> bool:
    """True if text reads the same backwards, ignoring case and punctuation."""
    letters = [c.lower() for c in text if c.isalnum()]
    return letters == letters[::-1]


def most_common_word(text: str) -> str | None:
    """The most frequent word, or None for an empty text."""
    words = text.lower().split()
    if not words
        return None
    return Counter(words).most_common(1)[0][0]
