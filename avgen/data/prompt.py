"""Prompts: one value, one rule and one message wherever a prompt is read (the CLI, the studio, the
datasets and the pipeline).

A prompt is a sequence of labels from a vocabulary, one per event, in order: "3 1 4" for Talking
Digits, "circle square" for shapes. The empty prompt is the null prompt (an unconditional clip).

The rule (`Vocabulary.parse`): labels are separated by spaces or commas; when every label of the
vocabulary is one character (the digits), a run such as "314" is read as "3 1 4", because that is
how people type numbers. An unknown label, too many labels or an over-long text is refused with one
sentence (`PromptError`).
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_PROMPT_CHARS = 1000  # far beyond any model's events; refused before it is split


class PromptError(ValueError):
    """A prompt the vocabulary cannot read; the message says what is wrong and what is accepted."""


def split_words(text: str) -> list[str]:
    """Words of a prompt or caption: separated by whitespace or commas."""
    return text.replace(",", " ").split()


@dataclass(frozen=True)
class Prompt:
    """A parsed prompt: the labels in order (empty = the null prompt)."""

    labels: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The canonical form, "3 1 4" (what sidecars and reports record)."""
        return " ".join(self.labels)

    @property
    def is_null(self) -> bool:
        return not self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __str__(self) -> str:
        return self.text


NULL = Prompt()


@dataclass(frozen=True)
class Vocabulary:
    """The labels a model (or a dataset) knows, in id order, and how many fit in one clip."""

    labels: tuple[str, ...]
    max_events: int

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(str(lab) for lab in self.labels))
        if self.max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {self.max_events}")

    @property
    def single_characters(self) -> bool:
        return bool(self.labels) and all(len(lab) == 1 for lab in self.labels)

    def describe(self) -> str:
        """How a person is told what the vocabulary holds."""
        if self.labels == tuple("0123456789"):
            return "digits 0-9"
        if not self.labels:
            return "no labels (only unconditional clips)"
        return "the labels " + ", ".join(self.labels)

    def parse(self, text: str | Prompt | None) -> Prompt:
        """A person's (or a dataset's) prompt -> `Prompt`; None and "" are the null prompt."""
        if isinstance(text, Prompt):
            words = list(text.labels)
        else:
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise PromptError(f"the prompt must be text (labels such as '3 1 4'), got {type(text).__name__}")
            if len(text) > MAX_PROMPT_CHARS:
                raise PromptError(f"the prompt has {len(text)} characters; at most {MAX_PROMPT_CHARS} are read")
            words = split_words(text)
            if self.single_characters:
                words = [ch for w in words for ch in w]
        bad = [w for w in words if w not in self.labels]
        if bad and not self.labels:
            raise PromptError("these weights have no labels (trained on clips without captions); "
                              "leave the prompt empty for an unconditional clip")
        if bad:
            raise PromptError(f"the prompt may only hold {self.describe()}; {_shown(bad[0])} is not one "
                              "(leave it empty for an unconditional clip)")
        if len(words) > self.max_events:
            raise PromptError(f"the prompt has {len(words)} labels; at most {self.max_events} fit in a clip")
        return Prompt(tuple(words))

    def ids(self, prompt: Prompt) -> list[int]:
        """The label ids of a parsed prompt."""
        index = {lab: i for i, lab in enumerate(self.labels)}
        return [index[lab] for lab in prompt.labels]


def _shown(word: str) -> str:
    text = repr(word)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["MAX_PROMPT_CHARS", "NULL", "Prompt", "PromptError", "Vocabulary", "split_words"]
