"""The prompt budget checked at submit, without torch: does every constitution variant's
prompt, with an empty query, fit the tokens the stage will allow it?

The stage cuts a long query to fit (never the constitution), and refuses to start when
the prompt without its query is already over the budget: hours after a submit, on a GPU
node. For a local model folder with a ``tokenizer.json`` (the `tokenizers` library: no
torch) and the plain prompt format, the same count is made at submit. Chat formats and
hub ids are left to the stage (rendering a chat template, or reading a hub tokenizer,
needs transformers).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sami_core.prompts import PromptTemplates

DEFAULT_CONTEXT = 2048  # as the stage: when neither the config nor the tokenizer says


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def context_length(model_dir: Path) -> int:
    """The model's context as the stage computes it: the smaller of the config's
    ``max_position_embeddings`` and the tokenizer's ``model_max_length``."""
    limits = [_json(model_dir / "config.json").get("max_position_embeddings"),
              _json(model_dir / "tokenizer_config.json").get("model_max_length")]
    limits = [x for x in limits if isinstance(x, int) and not isinstance(x, bool) and 0 < x < 1_000_000]
    return min(limits) if limits else DEFAULT_CONTEXT


def budget_problem(model_dir: str | Path, *, task: str, prompt_format: str, prompts: Any,
                   max_prompt_tokens: int | None, max_new_tokens: int,
                   constitution_texts: Iterable[str]) -> tuple[str, str] | None:
    """(field, reason) when some constitution's prompt leaves no room for a query within the
    budget (``max_prompt_tokens``, else the model's context less ``max_new_tokens``); None
    when all fit or when this cannot be told here (no local tokenizer.json, a chat format)."""
    model_dir = Path(model_dir)
    tok_file = model_dir / "tokenizer.json"
    chat_template = (_json(model_dir / "tokenizer_config.json").get("chat_template")
                     or any((model_dir / f).is_file() for f in ("chat_template.jinja", "chat_template.json")))
    if not tok_file.is_file() or prompt_format == "chat" or (prompt_format == "auto" and chat_template):
        return None
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tok_file))
    except Exception:  # noqa: BLE001 - a tokenizer this library cannot read: the stage will say
        return None
    context = context_length(model_dir)
    budget = max_prompt_tokens or context - max_new_tokens
    if budget < 8:
        return ("generation.max_new_tokens", f"{max_new_tokens} new tokens leave no room for a prompt in the "
                                             f"model's {context} tokens; lower it or set max_prompt_tokens")
    templates = PromptTemplates.from_spec(task, prompts)
    for text in constitution_texts:
        for prompt in dict.fromkeys((templates.generation_prompt(text, ""), templates.training_prompt(text, ""))):
            n = len(tok.encode(prompt).ids)
            if n >= budget:
                field = "max_prompt_tokens" if max_prompt_tokens else "generation.max_new_tokens"
                return (field, f"the prompt without its query already takes {n} tokens of the {budget} allowed "
                               f"(constitution and template), leaving no room for a query: raise max_prompt_tokens, "
                               f"lower generation.max_new_tokens or shorten the constitution")
    return None
