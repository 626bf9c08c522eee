"""Pickers whose choices follow the service: adapters trained and pools built after the app started.

Gradio checks a request's value against the component's choices as built at start-up. A page
gets the current lists when it opens (see `app.keep_pickers_current`), but a `gradio_client`
call never opens a page, so `/chat` refused an adapter or pool that `/v1` already served. These
pickers add the current choices to their own before each request checks its value.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr


def _as_pairs(choices: list) -> list[tuple]:
    """Choices as Gradio keeps them: (shown name, value) pairs."""
    return [tuple(c) if isinstance(c, (tuple, list)) else (str(c), c) for c in choices]


def _with_current(known: list, choices_now: Callable[[], list], payload) -> list[tuple]:
    """The choices a picker knows (a page's, which can hold one deleted since: the refresh that
    replaces it must get past this check), and the current ones where `payload` holds a value it
    does not know (reading them can cost a request to a remote server). The service refuses a gone
    name with its own message."""
    pairs = _as_pairs(known)
    values = {value for _, value in pairs}
    asked = payload if isinstance(payload, list) else [payload]
    if all(value in values or value is None for value in asked):
        return pairs
    try:
        current = _as_pairs(choices_now())
    except Exception:  # the remote server's list is out of reach: Gradio refuses the value as unknown
        return pairs
    return pairs + [pair for pair in current if pair[1] not in values]


class _Current:
    """Before Gradio checks a request's value against the choices, adds the current ones where the
    value is not among them, and for a value still unknown raises `why_not`'s reason where it has one
    (Gradio would say only that the value is not in the list). Gradio rebuilds a page's copy of a
    component from its class and its constructor's keyword arguments, so `choices_now` and `why_not`
    are among them (each class's own `__init__`, which Gradio records); the props sent to the
    browser stay the base component's."""

    _choices_now: Callable[[], list]
    _why_not: Callable[[str], str | None] | None

    def preprocess(self, payload):
        from ui.escape import shown_error

        self.choices = _with_current(self.choices, self._choices_now, payload)
        known = {value for _, value in self.choices}
        for value in payload if isinstance(payload, list) else [payload]:
            reason = self._why_not(value) if self._why_not and value is not None and value not in known else None
            if reason:
                raise shown_error(reason)
        return super().preprocess(payload)


class _CurrentDropdown(_Current, gr.Dropdown):
    def __init__(self, *, choices_now: Callable[[], list], why_not: Callable[[str], str | None] | None = None,
                 **kwargs):
        self._choices_now, self._why_not = choices_now, why_not
        super().__init__(**kwargs)

    def get_config(self, cls=None):
        return super().get_config(cls or gr.Dropdown)

    def get_block_name(self) -> str:
        return "dropdown"  # the browser draws it with Gradio's own


class _CurrentCheckboxGroup(_Current, gr.CheckboxGroup):
    def __init__(self, *, choices_now: Callable[[], list], why_not: Callable[[str], str | None] | None = None,
                 **kwargs):
        self._choices_now, self._why_not = choices_now, why_not
        super().__init__(**kwargs)

    def get_config(self, cls=None):
        return super().get_config(cls or gr.CheckboxGroup)

    def get_block_name(self) -> str:
        return "checkboxgroup"


def current_dropdown(choices_now: Callable[[], list], why_not: Callable[[str], str | None] | None = None,
                     **kwargs) -> gr.Dropdown:
    """A `gr.Dropdown` of `choices_now()` that takes any value among them at the time of the request;
    `why_not(value)` may say why a value is not among them (an adapter trained on another base)."""
    return _CurrentDropdown(choices=choices_now(), choices_now=choices_now, why_not=why_not, **kwargs)


def current_checkbox_group(choices_now: Callable[[], list], why_not: Callable[[str], str | None] | None = None,
                           **kwargs) -> gr.CheckboxGroup:
    """A `gr.CheckboxGroup` of `choices_now()` that takes any values among them at the time of the request."""
    return _CurrentCheckboxGroup(choices=choices_now(), choices_now=choices_now, why_not=why_not, **kwargs)
