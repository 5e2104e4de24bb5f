"""Prompts for the two tasks, the prompt templates of a spec, and response post-processing
and filters.

- summarization: post -> summary (the paper's TL;DR experiments);
- dialogue: query -> assistant reply (the paper's single-turn HH-RLHF runs).

Built-in prompts: base models get a plain-text template; instruct models get the
tokenizer's chat template with the constitution in the system turn (folded into the user
turn when the template has no system role).

A spec may instead give its own templates (:class:`PromptTemplates`, from a preset or
inline): a *generation* template (what the policy sees to sample a response, optionally
followed by a forced response prefix that the model continues) and a *training*
template (what training and evaluation score the response under: log p(y | training
prompt)). Both take the placeholders ``{constitution}`` and ``{query}`` only; a chat model
gets the rendered template as its one user turn. The query is the only part that is
truncated to fit the model's length; the constitution and the response never are.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Sequence

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
PLACEHOLDERS = ("constitution", "query")


# ---- presets ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """Named templates. ``generation``/``training`` None = the built-in prompt of the task."""

    description: str
    generation: str | None = None
    training: str | None = None
    response_prefix: str = ""
    tasks: tuple[str, ...] = TASKS


# The SAMI paper's TL;DR setting, written in our own words from its description: it samples
# with a scaffold (an instruction, the expected layout, a short acknowledging turn, then the
# constitution and the post, ending in "Summary:" followed by the forced start "The post"),
# and trains on a short prompt (instruction, constitution, post, "Summary:"). The square
# brackets of the layout are what the paper's `]` / `[insert` filters catch when a base
# model copies the layout instead of summarising.
_PAPER_TLDR_GENERATION = (
    "You will summarize a Reddit post. The summary must follow the principles listed before the post.\n"
    "Write your answer in this layout:\n\n"
    "Principles: [the principles the summary follows]\n"
    "Post: [the Reddit post]\n"
    "Summary: [a summary of the post that follows the principles]\n\n"
    "Reply: Thank you for the instructions. I will keep to the layout and the principles.\n\n"
    "Principles:\n{constitution}\n\n"
    "Post: {query}\n\n"
    "Summary:"
)
_PAPER_TLDR_TRAINING = (
    "Summarize the Reddit post below so that the summary follows these principles:\n"
    "{constitution}\n\n"
    "Post: {query}\n\n"
    "Summary:"
)
PRESETS: dict[str, Preset] = {
    "builtin": Preset("this project's prompts: the same prompt for generation and training (plain text, or the "
                      "model's chat template with the constitution in the system turn)"),
    "paper-tldr": Preset("the SAMI paper's TL;DR setting (our wording): a scaffold with a forced 'The post' start "
                         "to generate, a short prompt to train", _PAPER_TLDR_GENERATION, _PAPER_TLDR_TRAINING,
                         "The post", ("summarization",)),
}


def format_fields(text: str) -> list[tuple[str, str, str]]:
    """(name, format spec, conversion) of each ``{...}`` placeholder in ``text``, in order
    (str.format syntax); ValueError for malformed braces. The prompt, query and judge
    templates each check these against their own rules."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise ValueError(f"{err} (write {{{{ and }}}} for literal braces)") from None
    return [(name, fmt or "", conv or "") for _literal, name, fmt, conv in parsed if name is not None]


def check_template(template: str) -> list[str]:
    """The placeholders of a prompt template, in order; ValueError saying what is wrong
    (malformed braces, a placeholder other than {constitution} / {query}, or one of them
    missing)."""
    names = []
    for name, fmt, conv in format_fields(template):
        if name not in PLACEHOLDERS or fmt or conv:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{fmt}" if fmt else "") + "}"
            raise ValueError(f"unknown placeholder {shown}: a prompt template takes {{constitution}} and {{query}} "
                             "only (write {{ and }} for literal braces)")
        names.append(name)
    missing = [f"{{{n}}}" for n in PLACEHOLDERS if n not in names]
    if missing:
        raise ValueError(f"has no {' or '.join(missing)}: a SAMI prompt shows the constitution and the query")
    return names


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


def _apply_chat(tokenizer, messages: list[dict]) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates that reject a system turn: fold it into the user turn
        if messages[0]["role"] != "system":
            raise
        folded = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
        return tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)


def build_prompt(task: str, constitution: str, query: str, *, tokenizer=None, chat: bool = False) -> str:
    """The exact built-in prompt text a model sees (before tokenization)."""
    if not chat:
        return plain_prompt(task, constitution, query)
    return _apply_chat(tokenizer, chat_messages(task, constitution, query))


def response_separator(prompt: str) -> str:
    """What goes between a prompt and the response that follows it: one space unless the
    prompt ends in whitespace. Training (sami_core.train.tokenize_rows) and the forced
    response prefix both use it, so the scored text is the text that was generated."""
    return " " if prompt and not prompt[-1].isspace() else ""


@dataclass(frozen=True)
class PromptTemplates:
    """The prompts of a stage: a generation prompt (followed by ``response_prefix``, which
    the model continues) and a training prompt (what the response is scored under).
    ``generation``/``training`` None = the built-in prompt of ``task``; ``keep_prefix``:
    the forced prefix is part of the stored (and scored) response, or stripped from it."""

    task: str = "summarization"
    generation: str | None = None
    training: str | None = None
    response_prefix: str = ""
    keep_prefix: bool = True

    @classmethod
    def from_spec(cls, task: str, prompts: Any = None) -> "PromptTemplates":
        """From a stage spec's ``prompts`` section (sami_core.spec.PromptSpec, or None):
        the preset's values, overridden by the fields the section gives."""
        _check_task(task)
        if prompts is None:
            return cls(task)
        preset = PRESETS[prompts.preset]
        generation = prompts.generation if prompts.generation is not None else preset.generation
        if prompts.training is not None:
            training = prompts.training
        elif prompts.generation is not None:  # own generation template, no training one: train on it
            training = prompts.generation
        else:
            training = preset.training
        prefix = prompts.response_prefix if prompts.response_prefix is not None else preset.response_prefix
        return cls(task, generation, training, prefix, prompts.keep_prefix)

    def _render(self, template: str | None, constitution: str, query: str, tokenizer, chat: bool) -> str:
        if template is None:
            return build_prompt(self.task, constitution, query, tokenizer=tokenizer, chat=chat)
        body = template.format(constitution=constitution, query=query)
        return _apply_chat(tokenizer, [{"role": "user", "content": body}]) if chat else body

    def generation_prompt(self, constitution: str, query: str, *, tokenizer=None, chat: bool = False) -> str:
        """What the policy sees to sample a response: the generation template, then the
        forced response prefix (after :func:`response_separator`)."""
        prompt = self._render(self.generation, constitution, query, tokenizer, chat)
        return prompt + response_separator(prompt) + self.response_prefix if self.response_prefix else prompt

    def training_prompt(self, constitution: str, query: str, *, tokenizer=None, chat: bool = False) -> str:
        """What a response is scored under: log p(response | training prompt)."""
        return self._render(self.training, constitution, query, tokenizer, chat)

    def chat_preview(self, which: str, constitution: str, query: str) -> list[dict]:
        """The chat messages of a prompt (``which``: generation | training), for a preview
        without the model's tokenizer; the forced prefix, if any, starts the assistant turn."""
        template = self.generation if which == "generation" else self.training
        if template is None:
            messages = chat_messages(self.task, constitution, query)
        else:
            messages = [{"role": "user", "content": template.format(constitution=constitution, query=query)}]
        if which == "generation" and self.response_prefix:
            messages.append({"role": "assistant (forced start)", "content": self.response_prefix})
        return messages

    def finish(self, raw: str, n_tokens: int, max_new_tokens: int, stop_sequences: Sequence[str]) -> "Finished":
        """A generated continuation as the stored response: cut at the first stop sequence,
        the forced prefix put in front (``keep_prefix``) or not, whitespace stripped."""
        body, stopped = cut_at_stop(raw, stop_sequences)
        text = (self.response_prefix + body) if self.keep_prefix else body
        # The model ended the text itself only when nothing cut it: no stop sequence, and
        # fewer tokens than the cap (n_tokens counts those before the EOS).
        return Finished(text.strip(), ended_with_eos=not stopped and n_tokens < max_new_tokens)


@dataclass(frozen=True)
class Finished:
    text: str
    ended_with_eos: bool  # the model emitted its EOS there (not cut at a stop string or the length cap)


@dataclass
class PromptBuilder:
    """Builds prompts that fit a token budget by truncating the query only.

    ``pair`` gives a query's generation and training prompts, cut at the same point so
    that both fit; calling the builder gives the generation prompt."""

    task: str
    tokenizer: object
    chat: bool
    max_prompt_tokens: int
    templates: PromptTemplates | None = None
    truncations: int = 0

    def __post_init__(self) -> None:
        if self.templates is None:
            self.templates = PromptTemplates(self.task)

    def n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def _both(self, constitution: str, query: str) -> tuple[str, str]:
        t, kw = self.templates, dict(tokenizer=self.tokenizer, chat=self.chat)
        return t.generation_prompt(constitution, query, **kw), t.training_prompt(constitution, query, **kw)

    def _excess(self, prompts: tuple[str, str]) -> int:
        return max(self.n_tokens(p) for p in dict.fromkeys(prompts)) - self.max_prompt_tokens

    def pair(self, constitution: str, query: str) -> tuple[str, str]:
        """(generation prompt, training prompt), both within ``max_prompt_tokens``."""
        prompts = self._both(constitution, query)
        over = self._excess(prompts)
        if over <= 0:
            return prompts
        q_ids = self.tokenizer(query, add_special_tokens=False)["input_ids"]
        keep = len(q_ids) - over
        # Token counts of decoded-then-re-encoded text can drift by a few; shrink until it fits.
        while keep > 0:
            cut = self.tokenizer.decode(q_ids[:keep], skip_special_tokens=True).rstrip() + " ..."
            prompts = self._both(constitution, cut)
            excess = self._excess(prompts)
            if excess <= 0:
                self.truncations += 1
                return prompts
            keep -= max(excess, 1)
        raise ValueError(
            f"the prompt without its query needs more than {self.max_prompt_tokens} tokens: "
            "shorten the constitution or raise max_prompt_tokens"
        )

    def __call__(self, constitution: str, query: str) -> str:
        return self.pair(constitution, query)[0]


def cut_at_stop(text: str, stop_sequences: Sequence[str] = ()) -> tuple[str, bool]:
    """(text up to the first stop sequence, whether one was found)."""
    cut = len(text)
    for s in stop_sequences:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut], cut < len(text)


def postprocess(text: str, stop_sequences: Sequence[str] = ()) -> str:
    """Cut at the first stop sequence and strip surrounding whitespace."""
    return cut_at_stop(text, stop_sequences)[0].strip()


# ---- filters ------------------------------------------------------------------------------------
def response_failures(text: str, *, min_chars: int = 1, drop_substrings: Sequence[str] = (),
                      ends_with: Sequence[str] = ()) -> list[str]:
    """The response filters ``text`` fails, by their spec names (each checked on its own):
    ``min_chars`` (shorter), ``drop_substrings`` (contains one), ``ends_with`` (ends with
    none of them; an empty list accepts every ending)."""
    failed = []
    if len(text) < min_chars:
        failed.append("min_chars")
    if any(s and s in text for s in drop_substrings):
        failed.append("drop_substrings")
    if ends_with and not any(text.endswith(e) for e in ends_with if e):
        failed.append("ends_with")
    return failed


def is_valid(text: str, *, drop_substrings: Sequence[str] = (), min_chars: int = 1,
             ends_with: Sequence[str] = ()) -> bool:
    return not response_failures(text, min_chars=min_chars, drop_substrings=drop_substrings, ends_with=ends_with)


def keep_query(responses: Sequence[str], *, valid: Sequence[bool], require_distinct: bool) -> bool:
    """The paper kept a query only if all its N responses were valid (and distinct)."""
    if not all(valid):
        return False
    return not require_distinct or len(set(responses)) == len(responses)


# Why a response's query was dropped when the response itself passed every filter.
DROPPED_WITH_QUERY = "other_response"  # another of the query's N responses failed a filter


def drop_reasons(responses: Sequence[str], filters: Any) -> list[str | None]:
    """Per response of one query (its N responses), the filter that dropped it, None
    when the query is kept: the response's own first failed filter (``min_chars``,
    ``drop_substrings``, ``ends_with``, as :func:`response_failures`), else
    :data:`DROPPED_WITH_QUERY` when a sibling failed one, else ``require_distinct``
    when the N responses are not all different. Agrees with :func:`apply_filters`'
    keep decision: all None exactly when the query is kept."""
    failed = [response_failures(r, min_chars=filters.min_chars, drop_substrings=filters.drop_substrings,
                                ends_with=filters.ends_with) for r in responses]
    if any(failed):
        return [f[0] if f else DROPPED_WITH_QUERY for f in failed]
    if not keep_query(responses, valid=[True] * len(responses), require_distinct=filters.require_distinct):
        return ["require_distinct"] * len(responses)
    return [None] * len(responses)


@dataclass
class FilterCounts:
    """What the filters did to a generate run, as reported in its outputs.json.

    Response filters are counted independently (a response failing two counts in both);
    ``drop_substrings_each`` counts the responses containing each substring. A query is
    dropped for an invalid response (``queries_with_invalid``) or, all of its responses
    valid, for identical ones (``require_distinct``); the two add up to the dropped queries."""

    responses: int = 0
    min_chars: int = 0
    drop_substrings: int = 0
    drop_substrings_each: dict[str, int] = field(default_factory=dict)
    ends_with: int = 0
    queries: int = 0
    queries_with_invalid: int = 0
    require_distinct: int = 0
    kept: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def apply_filters(groups: Sequence[Sequence[str]], filters: Any) -> tuple[list[bool], FilterCounts]:
    """Which queries to keep (one group of N responses each) under ``filters`` (a
    sami_core.spec.FilterSpec: min_chars, drop_substrings, ends_with, require_distinct),
    and the counts per filter."""
    counts = FilterCounts(drop_substrings_each={s: 0 for s in filters.drop_substrings if s})
    keep = []
    for responses in groups:
        counts.queries += 1
        valid = []
        for r in responses:
            counts.responses += 1
            failed = response_failures(r, min_chars=filters.min_chars, drop_substrings=filters.drop_substrings,
                                       ends_with=filters.ends_with)
            for name in failed:
                setattr(counts, name, getattr(counts, name) + 1)
            for s in counts.drop_substrings_each:
                counts.drop_substrings_each[s] += s in r
            valid.append(not failed)
        if not all(valid):
            counts.queries_with_invalid += 1
            keep.append(False)
        elif not keep_query(responses, valid=valid, require_distinct=filters.require_distinct):
            counts.require_distinct += 1
            keep.append(False)
        else:
            counts.kept += 1
            keep.append(True)
    return keep, counts
