"""Lab 2: text utilities (Bob's attempt)."""

import string


def word_count(text):
    # split on spaces
    return len(text.split(" "))


def capitalize_words(text):
    return text.title()


def is_palindrome(text):
    cleaned = "".join(c.lower() for c in text if c not in string.punctuation and c != " ")
    return cleaned == cleaned[::-1]


def most_common_word(text):
    words = [w.strip(string.punctuation).lower() for w in text.split()]
    best = max(set(words), key=lambda w: (words.count(w), -words.index(w)))
    return best
