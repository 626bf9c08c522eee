"""Few-shot prompts: a task description, demonstrations and the query, fitted to a token budget.

    demos = order_demos(select_demos(index, query, k=4))
    prompt = build_fewshot_prompt(tokenizer, query, demos, task=index.pool.task, budget=1800)
    prompt.messages   # what the Generator takes
    prompt.text       # the exact text the model reads (the tokenizer's chat template)

Two styles:
- `chat`: the task description is the system message, each demonstration a user turn and an
  assistant turn (built with langchain-core's `FewShotChatMessagePromptTemplate`), the query the
  last user turn;
- `text`: one user message holding the task, `Input: ... / Output: ...` blocks and the query
  followed by `Output:`, for models that were not tuned on chat.

The text style is assembled here rather than with langchain's `FewShotPromptTemplate`, because
that class runs the joined demonstrations through the template formatter again, so any `{` in a
demonstration would be read as a placeholder.

When the prompt has more tokens than `budget`, the least similar demonstrations are dropped
first and the result says how many. Token counts come from the tokenizer's chat template
(`bot.conversation`). Selection and ordering live in `retrieval.select` and `retrieval.order`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bot.conversation import PromptTooLong, count_prompt_tokens
from retrieval.index import DemoIndex
from retrieval.order import order_demos
from retrieval.select import Demo, select_demos

STYLES = ("chat", "text")


@dataclass
class FewShotPrompt:
    """A prompt ready for generation, and what went into it."""

    messages: list[dict]
    """Chat messages, `{"role", "content"}`."""
    demos: list[Demo]
    """The demonstrations in the prompt, in prompt order (dropped ones are not here)."""
    text: str
    """The rendered prompt: the chat template applied, ending where the answer begins."""
    prompt_tokens: int
    """Tokens of `text`."""
    dropped: int = 0
    """Demonstrations left out (the least similar) to fit the budget."""

    @property
    def notice(self) -> str | None:
        if not self.dropped:
            return None
        noun = "demonstration was" if self.dropped == 1 else "demonstrations were"
        return f"{self.dropped} least similar {noun} dropped to fit the context window."

    def demo_dicts(self) -> list[dict]:
        """The demonstrations as `{"id", "input", "output", "score"}`, for JSON output."""
        return [demo.to_dict() for demo in self.demos]


def build_fewshot_prompt(
    tokenizer,
    query: str,
    demos: list[Demo],
    task: str | None = None,
    style: str = "chat",
    budget: int | None = None,
    system: str | None = None,
) -> FewShotPrompt:
    """Compose the prompt from demonstrations in prompt order; drop the least similar ones past `budget` tokens.

    `system` is an extra system prompt placed before the task description. With `budget` None
    nothing is dropped. PromptTooLong is raised when even the prompt without demonstrations is
    over the budget.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style '{style}'; choose one of: {', '.join(STYLES)}")
    if not query.strip():
        raise ValueError("the query is empty")
    kept = list(demos)
    while True:
        messages = compose_messages(query, kept, task, style, system)
        tokens = count_prompt_tokens(tokenizer, messages)
        if budget is None or tokens <= budget:
            break
        if not kept:
            raise PromptTooLong(
                f"the query is too long: the prompt needs {tokens} tokens without any demonstration, "
                f"but only {budget} fit"
            )
        kept.pop(_least_similar(kept))
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return FewShotPrompt(messages=messages, demos=kept, text=text, prompt_tokens=tokens, dropped=len(demos) - len(kept))


def fewshot_from_index(
    index: DemoIndex,
    tokenizer,
    query: str,
    k: int = 4,
    select: str = "knn",
    order: str = "nearest-last",
    seed: int = 0,
    diversity: float = 0.5,
    fixed_ids: list[int] | None = None,
    style: str = "chat",
    budget: int | None = None,
    system: str | None = None,
) -> FewShotPrompt:
    """Select, order and compose in one call, with the pool's own task description (for the CLI and app)."""
    demos = select_demos(index, query, k, select, seed=seed, diversity=diversity, fixed_ids=fixed_ids)
    ordered = order_demos(demos, order, seed=seed)
    return build_fewshot_prompt(tokenizer, query, ordered, task=index.pool.task, style=style, budget=budget, system=system)


def _least_similar(demos: list[Demo]) -> int:
    """Position of the demonstration to drop first; without scores, the one farthest from the query."""
    scores = [-math.inf if math.isnan(demo.score) else demo.score for demo in demos]
    return scores.index(min(scores))


def compose_messages(query: str, demos: list[Demo], task: str | None, style: str, system: str | None) -> list[dict]:
    """The chat messages of a few-shot prompt, without fitting."""
    if style == "chat":
        preamble = "\n\n".join(part for part in (system, task) if part and part.strip())
        head = [{"role": "system", "content": preamble}] if preamble else []
        return head + demo_messages(demos) + [{"role": "user", "content": query}]
    head = [{"role": "system", "content": system}] if system and system.strip() else []
    return head + [{"role": "user", "content": text_block(query, demos, task)}]


def demo_messages(demos: list[Demo]) -> list[dict]:
    """One user turn and one assistant turn per demonstration."""
    if not demos:
        return []
    from langchain_core.prompts import ChatPromptTemplate, FewShotChatMessagePromptTemplate

    template = FewShotChatMessagePromptTemplate(
        examples=[{"input": demo.input, "output": demo.output} for demo in demos],
        example_prompt=ChatPromptTemplate.from_messages([("human", "{input}"), ("ai", "{output}")]),
    )
    roles = {"human": "user", "ai": "assistant"}
    return [{"role": roles[message.type], "content": message.content} for message in template.format_messages()]


def text_block(query: str, demos: list[Demo], task: str | None) -> str:
    """Task, `Input:/Output:` demonstrations and the query, as one block of text."""
    parts = [task.strip()] if task and task.strip() else []
    parts += [f"Input: {demo.input}\nOutput: {demo.output}" for demo in demos]
    parts.append(f"Input: {query}\nOutput:")
    return "\n\n".join(parts)
