"""Instruction-formatted tasks for causal language models.

Every example becomes a prompt and a target, in the way of the CL benchmark's
instruction tuning (O-LoRA; Sculpting Subspaces):

    {instruction}
    Options: {option 1}, {option 2}, ...
    Text: {text}
    Answer:{" " + label text}

The instruction is the task's own (data.instruction / a stream task's instruction), else
one for the benchmark's task by its name, else a generic one. Only the text is
truncated, so that the instruction, the options and the answer always fit max_length.
Prompt and answer are tokenized apart (the answer as a continuation, with its leading
space), so that training and rank classification read exactly the same option tokens.

Two tensor layouts (clients.models.causal_lm reads them):
- training: (ids, mask, target mask, labels), prompt + answer, right padded;
- scoring: (ids, mask, zeros, labels, option ids (N, C, L), option mask), the prompt
  alone, left padded, every option of the task per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

TOPIC, SENTIMENT = "What is the topic of the text?", "What is the sentiment of the review?"
INSTRUCTIONS = {  # the CL benchmark's tasks, by folder name
    "dbpedia": TOPIC, "agnews": TOPIC, "yahoo": TOPIC,
    "amazon": SENTIMENT, "yelp": SENTIMENT, "imdb": SENTIMENT,
    "SST-2": "What is the sentiment of the sentence?",
    "MNLI": "What is the relation between the two sentences?",
    "QQP": "Do the two questions ask the same thing?",
}
GENERIC = "Which option fits the text?"


@dataclass(frozen=True)
class PromptFormat:
    """How one task's examples read: its instruction and its label texts, in label order."""

    instruction: str
    label_names: tuple[str, ...]

    def prefix(self) -> str:
        return f"{self.instruction}\nOptions: {', '.join(self.label_names)}\nText: "


def instruction_for(task_name: str, given: str | None) -> str:
    return given or INSTRUCTIONS.get(task_name, GENERIC)


def example_text(row: dict) -> str:
    pair = row.get("text_pair")
    return row["text"] if pair is None else f"{row['text']}\nSecond text: {pair}"


def answer_ids(tokenizer, label: str) -> list[int]:
    """The tokens of one label option as the continuation of 'Answer:'."""
    return tokenizer(" " + label, add_special_tokens=False)["input_ids"]


def answer_room(tokenizer, fmt: PromptFormat) -> int:
    """Tokens of the task's longest answer."""
    return max(len(answer_ids(tokenizer, name)) for name in fmt.label_names)


def frame_ids(tokenizer, fmt: PromptFormat) -> tuple[list[int], list[int]]:
    """The prompt's tokens before the text (instruction, options) and after it."""
    return (tokenizer(fmt.prefix(), add_special_tokens=False)["input_ids"],
            tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"])


def text_budget(tokenizer, fmt: PromptFormat, max_length: int) -> int:
    """Tokens left for an example's text; a clear error naming model.max_length when the
    instruction, options and answer alone do not fit."""
    head, tail = frame_ids(tokenizer, fmt)
    room = answer_room(tokenizer, fmt)
    budget = max_length - len(head) - len(tail) - room
    if budget < 1:
        raise ValueError(
            f"model.max_length: {max_length} tokens leave no room for the text of a prompt "
            f"with {len(head) + len(tail)} tokens of instruction and options and a "
            f"{room}-token answer; give at least {len(head) + len(tail) + room + 16}")
    return budget


def prompt_ids(tokenizer, fmt: PromptFormat, rows: list[dict], max_length: int) -> list[list[int]]:
    """Each row's prompt tokens, its text cut so that the longest answer still fits."""
    budget = text_budget(tokenizer, fmt, max_length)
    head, tail = frame_ids(tokenizer, fmt)
    texts = tokenizer([example_text(r) for r in rows], add_special_tokens=False)["input_ids"]
    return [head + text[:budget] + tail for text in texts]


def training_set(rows: list[dict], tokenizer, fmt: PromptFormat, max_length: int) -> TensorDataset:
    """(ids, mask, target mask, labels): prompt + the row's answer, right padded."""
    answers = [answer_ids(tokenizer, name) for name in fmt.label_names]
    ids = torch.full((len(rows), max_length), tokenizer.pad_token_id, dtype=torch.long)
    mask, target = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (prompt, row) in enumerate(zip(prompt_ids(tokenizer, fmt, rows, max_length),
                                          rows, strict=True)):
        answer = answers[row["label"]]
        end = len(prompt) + len(answer)
        ids[i, :end] = torch.tensor(prompt + answer)
        mask[i, :end] = 1
        target[i, len(prompt):end] = 1
    return TensorDataset(ids, mask, target, torch.tensor([r["label"] for r in rows]))


def scoring_set(rows: list[dict], tokenizer, fmt: PromptFormat, max_length: int) -> TensorDataset:
    """(ids, mask, zeros, labels, option ids, option mask): the prompt, left padded, and
    every option of the task."""
    answers = [answer_ids(tokenizer, name) for name in fmt.label_names]
    room = answer_room(tokenizer, fmt)
    prompts = prompt_ids(tokenizer, fmt, rows, max_length)
    width = max_length - room
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):] = torch.tensor(prompt)
        mask[i, width - len(prompt):] = 1
    options = torch.full((len(answers), room), tokenizer.pad_token_id, dtype=torch.long)
    option_mask = torch.zeros_like(options)
    for c, answer in enumerate(answers):
        options[c, :len(answer)] = torch.tensor(answer)
        option_mask[c, :len(answer)] = 1
    n = len(rows)
    return TensorDataset(ids, mask, torch.zeros_like(ids), torch.tensor([r["label"] for r in rows]),
                         options.expand(n, -1, -1).contiguous(),
                         option_mask.expand(n, -1, -1).contiguous())
