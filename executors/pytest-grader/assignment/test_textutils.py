"""Tests of lab 2, text utilities: word_count, capitalize_words, is_palindrome, most_common_word."""

from types import ModuleType


def test_word_count_counts_words(solution: ModuleType) -> None:
    assert solution.word_count("the quick brown fox") == 4


def test_word_count_ignores_irregular_whitespace(solution: ModuleType) -> None:
    assert solution.word_count("  one\ttwo\n  three  ") == 3


def test_word_count_of_blank_text_is_zero(solution: ModuleType) -> None:
    assert solution.word_count("") == 0
    assert solution.word_count(" \n ") == 0


def test_capitalize_words(solution: ModuleType) -> None:
    assert solution.capitalize_words("hello world") == "Hello World"


def test_capitalize_words_keeps_spacing_and_apostrophes(solution: ModuleType) -> None:
    assert solution.capitalize_words("don't  stop me now") == "Don't  Stop Me Now"


def test_is_palindrome(solution: ModuleType) -> None:
    assert solution.is_palindrome("racecar") is True
    assert solution.is_palindrome("python") is False


def test_is_palindrome_ignores_case_spaces_and_punctuation(solution: ModuleType) -> None:
    assert solution.is_palindrome("A man, a plan, a canal: Panama!") is True


def test_most_common_word(solution: ModuleType) -> None:
    assert solution.most_common_word("the cat and the hat") == "the"


def test_most_common_word_ignores_case_and_punctuation(solution: ModuleType) -> None:
    assert solution.most_common_word("Dog! dog, cat. DOG? cat") == "dog"


def test_most_common_word_ties_and_empty_text(solution: ModuleType) -> None:
    assert solution.most_common_word("b a a b") == "b"
    assert solution.most_common_word("") is None
