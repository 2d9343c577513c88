"""Try the functions on a sample sentence."""

from solution import most_common_word, word_count

if __name__ == "__main__":
    sample = "the cat and the hat"
    print(word_count(sample), most_common_word(sample))
