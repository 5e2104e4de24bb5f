"""Pairwise judging: candidate vs baseline responses -> verdicts, cached and resumable.

Modules: ``prompt`` (the built-in template, TEMPLATE_VERSION, answer parser), ``template``
(template files: system message, user template, answer pattern; shipped ones in
``templates/``), ``pairs`` (response sources, joining), ``cache`` (file-based judgment
cache, request and token estimate), ``client`` (OpenAI-compatible / Azure / local HF
judges, retries, usage), ``usage`` (tokens and their cost), ``runner`` (bounded-concurrency
judging), ``stage`` (the `judge` and `write_constitution` stages). Importing this
package imports neither torch nor the openai client.
"""

from sami_core.judge.cache import JudgmentCache, RequestEstimate, cache_key, estimate_requests
from sami_core.judge.client import JudgeError, make_client
from sami_core.judge.pairs import Pair, Response, ResponseSet, load_responses, make_pairs
from sami_core.judge.prompt import TEMPLATE_VERSION, ParsedAnswer, build_prompt, parse_answer
from sami_core.judge.runner import JudgeSettings, JudgeTask, RetryPolicy, judge_pairs, judge_tasks, plan_tasks
from sami_core.judge.stage import estimate_judge_job, run_judge, run_write_constitution

__all__ = [
    "TEMPLATE_VERSION", "JudgeError", "JudgeSettings", "JudgeTask", "JudgmentCache", "Pair", "ParsedAnswer",
    "RequestEstimate", "Response", "ResponseSet", "RetryPolicy", "build_prompt", "cache_key", "estimate_judge_job",
    "estimate_requests", "judge_pairs", "judge_tasks", "load_responses", "make_client", "make_pairs", "parse_answer",
    "plan_tasks", "run_judge", "run_write_constitution",
]
