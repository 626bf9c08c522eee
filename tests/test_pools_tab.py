"""The Pools tab through gradio_client: an uploaded pool becomes an index, and bad rows are named."""

import json

import pytest
from gradio_client import handle_file

from bot.generation import Generator
from bot.service import ChatService
from retrieval.embedder import HashEmbedder
from retrieval.library import PoolLibrary
from servers import gradio_client, launched


@pytest.fixture(scope="module")
def pools_app(tiny, tmp_path_factory):
    library = PoolLibrary(root=tmp_path_factory.mktemp("indexes"), embedder=HashEmbedder())
    service = ChatService(Generator(tiny), library)
    with launched(service) as url:
        yield service, gradio_client(url)


def test_upload_builds_an_index_and_bad_rows_point_at_the_checkbox(pools_app, tmp_path):
    service, client = pools_app
    rows = [{"input": f"movie {i} was fine", "output": "positive"} for i in range(6)]
    bad = tmp_path / "reviews.jsonl"
    bad.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"input": "no answer"}\n')
    with pytest.raises(Exception, match=r"1 bad row: line 7: missing field 'output'; tick 'Skip bad rows' to leave"):
        client.predict(handle_file(str(bad)), "reviews", "input", "output", "", False, api_name="/build_index")
    assert "reviews" not in service.pool_choices()

    note = client.predict(handle_file(str(bad)), "reviews", "input", "output", "", True, api_name="/build_index")
    assert note == "Built **reviews**: 6 examples (1 bad row skipped)."
    assert "reviews" in service.pool_choices()  # the pickers' update is checked in a browser (test_browser.py)


def test_the_note_says_when_outputs_are_class_ids(pools_app, tmp_path):
    _, client = pools_app
    table = tmp_path / "ids.csv"
    table.write_text("text,label\n" + "".join(f"film {i},{i % 2}\n" for i in range(4)))
    note = client.predict(handle_file(str(table)), "ids", "text", "label", "", False, api_name="/build_index")
    assert note == ("Built **ids**: 4 examples (every output is a number (0, 1), so the bot will answer with these "
                    "numbers; write label words in the pool to have it answer in words).")


def test_a_missing_name_is_asked_for(pools_app, tmp_path):
    _, client = pools_app
    pool = tmp_path / "p.jsonl"
    pool.write_text('{"input": "a", "output": "b"}\n')
    with pytest.raises(Exception, match="type a name for the index in 'Index name'"):
        client.predict(handle_file(str(pool)), "  ", "input", "output", "", False, api_name="/build_index")


def test_a_missing_column_points_at_the_field_box(pools_app, tmp_path):
    _, client = pools_app
    table = tmp_path / "table.csv"
    table.write_text("text,label\na fine film,positive\n")
    with pytest.raises(Exception, match=r"no column 'input' \(columns: text, label\); type the column's name in "
                                        r"'Input field'"):
        client.predict(handle_file(str(table)), "table", "input", "label", "", False, api_name="/build_index")


def test_a_pool_of_a_taken_name_is_replaced_only_when_asked(pools_app, tmp_path):
    """Pools are shared: a build under a taken name used to replace another user's pool without a word."""
    service, client = pools_app

    def pool(name, word):
        path = tmp_path / f"{name}-{word}.jsonl"
        path.write_text("".join(json.dumps({"input": f"{word} {i}", "output": "positive"}) + "\n" for i in range(3)))
        return handle_file(str(path))

    assert client.predict(pool("shared", "first"), "shared", "input", "output", "", False, False,
                          api_name="/build_index") == "Built **shared**: 3 examples."
    with pytest.raises(Exception, match="a pool named 'shared' exists already; choose another name, or replace it: "
                                        "tick 'Replace a pool of this name'"):
        client.predict(pool("shared", "second"), "shared", "input", "output", "", False, False, api_name="/build_index")
    assert service.library.get("shared").pool.examples[0].input == "first 0"  # kept
    client.predict(pool("shared", "second"), "shared", "input", "output", "", False, True, api_name="/build_index")
    assert service.library.get("shared").pool.examples[0].input == "second 0"


def test_a_gradio_client_caller_gets_the_error_as_text_not_html(pools_app, tmp_path):
    """The page's toast renders HTML, so the page gets `&lt;`; a client renders nothing and used to get `&lt;` too."""
    _, client = pools_app
    pool = tmp_path / "p.jsonl"
    pool.write_text(json.dumps({"input": "a", "output": "b"}) + "\n")
    with pytest.raises(Exception) as caught:
        client.predict(handle_file(str(pool)), "x<b>bold</b>", "input", "output", "", False, api_name="/build_index")
    assert "invalid index name 'x<b>bold</b>'" in str(caught.value) and "&lt;" not in str(caught.value)
