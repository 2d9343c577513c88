"""Lab 2: text utilities."""

from collections import Counter


def word_count(text: str) -> int:
    return len(text.split())


def capitalize_words(text: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))


def is_palindrome(text: str) -> bool:
    letters = [c.lower() for c in text if c.isalnum()]
    return letters == letters[::-1]


def most_common_word(text: str) -> str | None:
    words = text.lower().split()
    return Counter(words).most_common(1)[0][0] if words else None
