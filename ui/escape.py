"""Show HTML in chat messages as text: `<b>` appears as the five characters `<b>`, never as markup,
and a Markdown image as a link that loads nothing until clicked.

Gradio's chatbot sanitizes HTML (scripts and handlers are stripped) but still renders safe tags.
A chat about prompts should show what was typed, so `EscapingChatbot` escapes `&`, `<` and `>`
in message text before it reaches the browser, outside code (Markdown shows code verbatim
already), and undoes exactly that when the browser sends the history back, so the model reads
what the user typed.
"""

from __future__ import annotations

import logging
import re

import gradio as gr

CODE = re.compile(r"```.*?(?:```|$)|~~~.*?(?:~~~|$)|(?<!`)(`+)(?!`)[^\n]*?(?<!`)\1(?!`)", re.DOTALL)
"""Code, which Markdown shows verbatim: ``` and ~~~ fences (to the end when unclosed) and spans in
one or more backticks (``a ` b``)."""
ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
UNESCAPES = {value: key for key, value in ESCAPES.items()} | {"&#33;": "!"}
IMAGE = "!["
"""Markdown's image syntax: the browser would fetch the URL as the message is drawn, so a reply (or a
prompt injected into one) could send data to any server. Its `!` goes as an entity: the text reads
the same, and the image becomes a link, fetched only if clicked."""


def shown_error(error) -> gr.Error:
    """A gr.Error whose message shows as written: Gradio's toast renders HTML, and messages quote what
    users typed (an index or adapter name) and what files hold (a column name). A `gradio_client`
    caller gets the text as it is (it renders nothing). A refused request is the user's to fix, not
    the server's: the log gets one line, not Gradio's two tracebacks."""
    text = str(error)
    logging.getLogger(__name__).warning("request refused: %s", text)
    return gr.Error(text if from_client() else _escape(text), print_exception=False)


def from_client() -> bool:
    """Whether the event being handled came from `gradio_client` (which sends `x-gradio-user: api`)."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    headers = getattr(request, "headers", None) or {}
    return headers.get("x-gradio-user") == "api"


def _escape(text: str) -> str:
    return re.sub(r"[&<>]", lambda m: ESCAPES[m.group()], text)


def escape_outside_code(text: str) -> str:
    return _outside_code(text, lambda part: _escape(part).replace(IMAGE, "&#33;["))


def unescape_outside_code(text: str) -> str:
    return _outside_code(text, lambda part: re.sub(r"&(?:amp|lt|gt|#33);", lambda m: UNESCAPES[m.group()], part))


def _outside_code(text: str, change) -> str:
    """`text` with `change` applied to every stretch that is not code."""
    parts, at = [], 0
    for code in CODE.finditer(text):
        parts += [change(text[at:code.start()]), code.group()]
        at = code.end()
    return "".join(parts) + change(text[at:])


class EscapingChatbot(gr.Chatbot):
    def get_block_name(self) -> str:
        return "chatbot"  # the browser draws it with Gradio's own chatbot

    def postprocess(self, value):
        data = super().postprocess(value)
        for message in data.root:
            for part in message.content:
                if isinstance(getattr(part, "text", None), str):
                    part.text = escape_outside_code(part.text)
        return data

    def preprocess(self, payload):
        history = super().preprocess(payload)
        for message in history or []:
            for part in message.get("content") if isinstance(message.get("content"), list) else []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"] = unescape_outside_code(part["text"])
            if isinstance(message.get("content"), str):
                message["content"] = unescape_outside_code(message["content"])
        return history
