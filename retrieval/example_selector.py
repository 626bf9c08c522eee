"""A langchain-core example selector backed by our FAISS `DemoIndex`.

    selector = IndexExampleSelector(index, k=4, strategy="knn", order="nearest-last")
    template = FewShotChatMessagePromptTemplate(
        example_selector=selector, input_variables=["input"],
        example_prompt=ChatPromptTemplate.from_messages([("human", "{input}"), ("ai", "{output}")]),
    )
    template.format_messages(input="the plot dragged")

It lets langchain pipelines use the same selection and ordering as the bot; the bot itself calls
`retrieval.select` and `bot.fewshot` directly. Selected examples are dicts with `input`,
`output`, `id` and `score`.
"""

from __future__ import annotations

from typing import Any

from langchain_core.example_selectors import BaseExampleSelector

from retrieval.index import DemoIndex
from retrieval.order import order_demos
from retrieval.select import select_demos


class IndexExampleSelector(BaseExampleSelector):
    """Selects demonstrations for `input_variables[query_key]` from a DemoIndex."""

    def __init__(
        self,
        index: DemoIndex,
        k: int = 4,
        strategy: str = "knn",
        order: str = "nearest-last",
        seed: int = 0,
        diversity: float = 0.5,
        query_key: str = "input",
    ):
        self.index = index
        self.k = k
        self.strategy = strategy
        self.order = order
        self.seed = seed
        self.diversity = diversity
        self.query_key = query_key

    def add_example(self, example: dict[str, str]) -> Any:
        """Embed and index one {"input", "output"} example; returns its id (None for a duplicate)."""
        added = self.index.add([example])
        return added[0].id if added else None

    def select_examples(self, input_variables: dict[str, str]) -> list[dict[str, Any]]:
        if self.query_key not in input_variables:
            raise KeyError(f"IndexExampleSelector needs the query under '{self.query_key}'; got {sorted(input_variables)}")
        demos = select_demos(
            self.index, input_variables[self.query_key], self.k, self.strategy, seed=self.seed, diversity=self.diversity
        )
        return [demo.to_dict() for demo in order_demos(demos, self.order, seed=self.seed)]
