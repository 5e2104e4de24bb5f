"""Prompts for the two tasks, and response post-processing and filters.

- summarization: post -> summary (the paper's TL;DR experiments);
- dialogue: query -> assistant reply (the paper's single-turn HH-RLHF runs).

Base models get a plain-text template; instruct models get the tokenizer's chat
template with the constitution in the system turn (folded into the user turn when the
template has no system role). The query is the only part that is truncated to fit the
model's length; the constitution and the response never are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

PLAIN_TEMPLATES = {
    "summarization": (
        "Below is a Reddit post and a summary of it. The summary follows these principles:\n"
        "{constitution}\n\n"
        "POST: {query}\n\n"
        "SUMMARY:"
    ),
    "dialogue": (
        "Below is a conversation between a human and an AI assistant. The assistant's replies "
        "follow these principles:\n"
        "{constitution}\n\n"
        "Human: {query}\n\n"
        "Assistant:"
    ),
}

SYSTEM_TEMPLATE = "Follow these principles in your reply:\n{constitution}"
USER_TEMPLATES = {
    "summarization": "Summarize the following Reddit post.\n\nPOST: {query}",
    "dialogue": "{query}",
}
TASKS = tuple(PLAIN_TEMPLATES)


def _check_task(task: str) -> None:
    if task not in PLAIN_TEMPLATES:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")


def plain_prompt(task: str, constitution: str, query: str) -> str:
    _check_task(task)
    return PLAIN_TEMPLATES[task].format(constitution=constitution, query=query)


def chat_messages(task: str, constitution: str, query: str) -> list[dict]:
    _check_task(task)
    return [
        {"role": "system", "content": SYSTEM_TEMPLATE.format(constitution=constitution)},
        {"role": "user", "content": USER_TEMPLATES[task].format(query=query)},
    ]


def use_chat_format(prompt_format: str, tokenizer) -> bool:
    if prompt_format == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("model.prompt_format is 'chat' but the tokenizer has no chat template; use 'plain'")
        return True
    if prompt_format == "plain":
        return False
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt(task: str, constitution: str, query: str, *, tokenizer=None, chat: bool = False) -> str:
    """The exact prompt text a model sees (before tokenization)."""
    if not chat:
        return plain_prompt(task, constitution, query)
    messages = chat_messages(task, constitution, query)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates that reject a system turn: fold it into the user turn
        folded = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
        return tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)


@dataclass
class PromptBuilder:
    """Builds prompts that fit a token budget by truncating the query only."""

    task: str
    tokenizer: object
    chat: bool
    max_prompt_tokens: int
    truncations: int = 0

    def n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def __call__(self, constitution: str, query: str) -> str:
        prompt = build_prompt(self.task, constitution, query, tokenizer=self.tokenizer, chat=self.chat)
        over = self.n_tokens(prompt) - self.max_prompt_tokens
        if over <= 0:
            return prompt
        q_ids = self.tokenizer(query, add_special_tokens=False)["input_ids"]
        keep = len(q_ids) - over
        # Token counts of decoded-then-re-encoded text can drift by a few; shrink until it fits.
        while keep > 0:
            cut = self.tokenizer.decode(q_ids[:keep], skip_special_tokens=True).rstrip() + " ..."
            prompt = build_prompt(self.task, constitution, cut, tokenizer=self.tokenizer, chat=self.chat)
            excess = self.n_tokens(prompt) - self.max_prompt_tokens
            if excess <= 0:
                self.truncations += 1
                return prompt
            keep -= max(excess, 1)
        raise ValueError(
            f"the prompt without its query needs more than {self.max_prompt_tokens} tokens: "
            "shorten the constitution or raise max_prompt_tokens"
        )


def postprocess(text: str, stop_sequences: Sequence[str] = ()) -> str:
    """Cut at the first stop sequence and strip surrounding whitespace."""
    cut = len(text)
    for s in stop_sequences:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut].strip()


def is_valid(text: str, *, drop_substrings: Sequence[str] = (), min_chars: int = 1) -> bool:
    if len(text) < min_chars:
        return False
    return not any(s and s in text for s in drop_substrings)


def keep_query(responses: Sequence[str], *, valid: Sequence[bool], require_distinct: bool) -> bool:
    """The paper kept a query only if all its N responses were valid (and distinct)."""
    if not all(valid):
        return False
    return not require_distinct or len(set(responses)) == len(responses)
