"""One line of G-code as words: comments, line number and checksum taken off and checked.

Syntax only; what the words mean to the machine is gcode_machine's business. The dialect
is RepRap/Marlin's (`;` comments, `N<n>` line numbers, `*<xor>` checksums, `M117 text`)
plus the RS-274 `( )` comments that CNC files use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A letter, then optionally a signed decimal number; spaces may separate them.
WORD = re.compile(r"\s*(?P<letter>[A-Za-z])\s*(?P<number>[-+]?(?:\d+\.?\d*|\.\d+))?")
CHECKSUM = re.compile(r"\s*(\d{1,3})\s*")
# Commands whose rest of line is free text, not words.
TEXT_COMMANDS = frozenset({"M117", "M118"})


class GcodeSyntaxError(ValueError):
    """A line that cannot be read as G-code; the message says what is wrong."""


@dataclass(frozen=True)
class Word:
    """A letter and its number as written (`None` for a bare letter, e.g. `G28 X`)."""

    letter: str
    number: str | None

    @property
    def value(self) -> float | None:
        return None if self.number is None else float(self.number)

    @property
    def code(self) -> str:
        """`G1`, `M104`, `T0`: the command name, leading zeros dropped (`G01` is `G1`)."""
        if self.number is None:
            return self.letter
        value = float(self.number)
        return f"{self.letter}{int(value)}" if value.is_integer() else f"{self.letter}{value:g}"


@dataclass(frozen=True)
class Statement:
    """The meaning-bearing part of one line."""

    number: int | None  # the `N` line number, if any
    words: tuple[Word, ...]
    text: str | None = None  # the message of M117/M118

    @property
    def empty(self) -> bool:
        return not self.words


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment): `;` ends the code, `( )` comments are cut out of it."""
    code: list[str] = []
    comment: list[str] = []
    depth = 0
    for index, char in enumerate(line):
        if depth == 0 and char == ";":
            comment.append(line[index + 1 :])
            break
        if char == "(":
            depth += 1
        elif char == ")" and depth > 0:
            depth -= 1
            code.append(" ")  # a comment separates words like a space
        elif depth == 0:
            code.append(char)
        else:
            comment.append(char)
    if depth:
        raise GcodeSyntaxError("a '(' comment is not closed on this line")
    return "".join(code), "".join(comment).strip()


def xor_checksum(text: str) -> int:
    """The RepRap checksum: XOR of every byte before the `*`."""
    result = 0
    for byte in text.encode("utf-8", errors="replace"):
        result ^= byte
    return result


def take_checksum(line: str) -> str:
    """The line without its `*<checksum>`, after checking the checksum if there is one."""
    head = line.split(";", 1)[0]
    star = head.rfind("*")
    if star < 0:
        return line
    written = CHECKSUM.fullmatch(head[star + 1 :])
    if written is None:
        raise GcodeSyntaxError("'*' must be followed by a checksum number (0-255)")
    expected = xor_checksum(head[:star].lstrip())
    if int(written[1]) != expected:
        raise GcodeSyntaxError(
            f"checksum mismatch: the line says *{written[1]}, its bytes give *{expected}"
        )
    return head[:star]


def read_words(code: str) -> tuple[list[Word], str | None]:
    """The words of a comment-free line, and the free text after M117/M118."""
    words: list[Word] = []
    position = 0
    while code[position:].strip():
        match = WORD.match(code, position)
        if match is None:
            bad = code[position:].strip().split()[0]
            raise GcodeSyntaxError(
                f"cannot read {bad!r} at column {position + 1}: expected a letter and a number"
            )
        words.append(Word(match["letter"].upper(), match["number"]))
        position = match.end()
        if words[-1].code in TEXT_COMMANDS:
            return words, code[position:].strip()
    return words, None


def parse_line(line: str) -> Statement:
    """One raw line (without its newline) as a Statement; GcodeSyntaxError if unreadable."""
    code, _comment = split_comment(take_checksum(line))
    words, text = read_words(code)
    number = None
    if words and words[0].letter == "N":
        head = words.pop(0)
        if head.number is None or not head.number.isdigit():
            raise GcodeSyntaxError("a line number must be N followed by digits, e.g. N10")
        number = int(head.number)
    return Statement(number, tuple(words), text)
