"""The lab's refusals and reports for inputs an exploratory test found mishandled: each is refused
before the model loads where the config alone says enough, with a message naming the flag."""

import json

import pytest

from lab.config import LabConfig
from lab.errors import LabError
from lab.runner import run_experiment
from test_lab_experiments import TEST, TRAIN, config, run, write_pool


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the lab gets as far as loading a model."""
    import bot.models

    monkeypatch.setattr(bot.models, "load_model", lambda *a, **k: pytest.fail("loaded the model before refusing"))


def test_negative_seed_is_refused_and_repeated_seeds_count_once(tmp_path):
    with pytest.raises(LabError, match=r"seeds must be a whole number >= 0, got -1"):
        config(tmp_path, "x", seeds=[0, -1])
    assert config(tmp_path, "x", seeds=[2, 0, 2, 1, 0]).seeds == [2, 0, 1]


def test_unknown_embedder_is_refused_before_the_model_loads(tmp_path, no_model_load):
    with pytest.raises(LabError, match="--embedder nosuch: unknown embedder 'nosuch'"):
        run_experiment("shots", config(tmp_path, "x", embedder="nosuch"))


def test_test_set_with_one_label_is_refused(tmp_path, no_model_load):
    test = write_pool(tmp_path / "one-label.jsonl", [(text, "positive") for text, _ in TEST])
    with pytest.raises(LabError, match=r"the test set has only one label \('positive'\), so every answer would score"):
        run_experiment("labels", config(tmp_path, "x", test=test))


def test_out_that_is_a_file_is_refused(tmp_path, no_model_load):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(LabError, match="--out .*afile is a file; give a folder"):
        run_experiment("labels", config(tmp_path, "x", out=str(tmp_path / "afile")))
    assert (tmp_path / "afile").read_text() == "mine"


def test_out_holding_files_is_refused_and_kept(tmp_path, no_model_load):
    """An earlier run's folder (or anyone's) is never written over: result.json would be replaced."""
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "result.json").write_text("earlier run")
    with pytest.raises(LabError, match="--out .*earlier already holds files .*give a new folder"):
        run_experiment("labels", config(tmp_path, "x", out=str(earlier)))
    assert [p.name for p in earlier.iterdir()] == ["result.json"] and (earlier / "result.json").read_text() == "earlier run"


def test_out_below_a_file_is_refused_before_the_model_loads(tmp_path, no_model_load):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(LabError, match=r"--out: cannot create '.*afile/sub': '.*afile' is a file, not a folder"):
        run_experiment("labels", config(tmp_path, "x", out=str(tmp_path / "afile" / "sub")))


def test_default_run_folders_never_collide_and_a_refused_run_leaves_none(tmp_path, monkeypatch, no_model_load):
    import datetime as real

    import lab.runner

    class Frozen(real.datetime):  # every run starts in the same second
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 27, 9, 30, 0)

    monkeypatch.setattr(lab.runner, "datetime", Frozen)
    runs = tmp_path / "runs"
    first, second = (lab.runner.new_run_folder(runs, "labels") for _ in range(2))
    assert (first.name, second.name) == ("labels-20261127-093000", "labels-20261127-093000-2")
    assert first.is_dir() and second.is_dir()
    with pytest.raises(LabError, match="--embedder nosuch"):
        run_experiment("shots", config(tmp_path, "x", out=None, embedder="nosuch"), runs=runs)
    assert sorted(p.name for p in runs.iterdir()) == [first.name, second.name]
    (tmp_path / "mine").mkdir()  # an empty folder the user named stays after a refused run
    with pytest.raises(LabError, match="--embedder nosuch"):
        run_experiment("shots", config(tmp_path, "x", out=str(tmp_path / "mine"), embedder="nosuch"))
    assert (tmp_path / "mine").is_dir()


def test_finetune_with_an_adapter_is_refused(tmp_path, no_model_load):
    with pytest.raises(LabError, match="finetune experiment trains its adapter on the bare base model; drop --adapter"):
        run_experiment("finetune", config(tmp_path, "x", adapter=str(tmp_path)))


def test_prompts_beyond_the_model_window_are_refused(tmp_path, tiny):
    window = tiny.model.config.max_position_embeddings
    long_train = [(" ".join(["word"] * (window // 2)) + f" {i}", label) for i, (_, label) in enumerate(TRAIN)]
    train = write_pool(tmp_path / "long.jsonl", long_train)
    run(tmp_path, tiny, "labels", k=1)  # sanity: the same experiment with short demonstrations runs
    with pytest.raises(LabError, match=rf"a prompt takes \d+ tokens and its answer up to \d+ more, but the model reads at "
                                       rf"most {window}; lower --k"):
        run_experiment("labels", config(tmp_path, "long", train=train, k=3), loaded=tiny)


def test_labels_report_shows_how_many_random_labels_were_wrong(tmp_path, tiny):
    result = run(tmp_path, tiny, "labels")
    wrong = [r["wrong_labels"] for r in result["results"] if r["condition"] == "random"]
    report = (tmp_path / "runs" / "labels" / "report.md").read_text()
    assert f"| wrong labels in random | {' | '.join(map(str, wrong))} |" in report


def test_the_report_counts_the_duplicates_the_pool_dropped(tmp_path, tiny):
    train = write_pool(tmp_path / "dups.jsonl", TRAIN + TRAIN[:3])
    result = run(tmp_path, tiny, "labels", train=train, seeds=[0])
    report = (tmp_path / "runs" / "labels" / "report.md").read_text()
    assert result["train_size"] == len(TRAIN) and result["train_duplicates"] == 3
    assert f"dups.jsonl ({len(TRAIN)} examples; 3 exact duplicates dropped)" in report


def test_test_items_are_held_out_of_the_train_pool(tmp_path, tiny):
    """Copies of test items in the train file, written with other case, spacing and punctuation, are
    never shown as demonstrations; texts that only look alike stay."""
    copies = [("Quick, FOX!", "positive"), ("TERRIBLE   dog.", "negative")]  # TEST[0] and TEST[1]
    alike = [("quick foxes", "positive"), ("terrible dog food", "negative")]
    train = write_pool(tmp_path / "with-copies.jsonl", TRAIN + copies + alike)
    result = run(tmp_path, tiny, "labels", train=train, seeds=[0, 1, 2, 3, 4, 5], k=4)
    assert result["train_held_out"] == 2 and result["train_size"] == len(TRAIN) + 2
    shown = {demo["input"] for row in result["results"] for demo in row["shown"]}
    assert shown <= {text for text, _ in TRAIN + alike} and shown & {text for text, _ in alike}
    report = (tmp_path / "runs" / "labels" / "report.md").read_text()
    assert f"({len(TRAIN) + 2} examples; 2 held out as test items)" in report


def test_one_file_as_train_and_test_holds_its_sample_out():
    from lab.data import load_data

    pool = "retrieval/pools/sentiment.jsonl"
    data = load_data(pool, pool, 40)
    tested = {item.input for item in data.test}
    assert len(data.test) == 40 and data.held_out == 40 and len(data.train) == 64 - 40
    assert not tested & {example.input for example in data.train.examples}


@pytest.mark.parametrize("a, b, same", [
    ("Quick, FOX!", "quick fox", True), ("  Great   movie. ", "great movie", True), ("好电影！", "好电影", True),
    ("\"Why?\" (she asked)", "why she asked", True),
    ("What is C++?", "What is C#?", False), ("12+7", "12-7", False), ("🙂", "🙁", False),
    ("quick fox", "quick foxes", False),
])
def test_same_text_ignores_case_spacing_and_sentence_punctuation_only(a, b, same):
    from lab.data import same_text

    assert (same_text(a) == same_text(b)) is same


def test_k_beyond_what_is_left_after_holding_out_says_why(tmp_path, no_model_load):
    both = write_pool(tmp_path / "both.jsonl", TEST)
    with pytest.raises(LabError, match=r"k=2 is larger than the training pool \(0 examples .*after leaving out "
                                       r"the 4 that are test items\)"):
        run_experiment("labels", config(tmp_path, "x", train=both, test=both))


def test_the_report_gives_the_majority_baseline_of_the_test_sample(tmp_path, tiny):
    test = write_pool(tmp_path / "skewed.jsonl", TEST + [("fine film", "positive"), ("good dog", "positive")])
    result = run(tmp_path, tiny, "labels", test=test, seeds=[0])
    answers = [item["output"] for item in result["test"]]
    assert result["test_label_counts"] == {"positive": answers.count("positive"), "negative": answers.count("negative")}
    assert result["majority"] == answers.count("positive") / len(answers) == 4 / 6
    report = (tmp_path / "runs" / "labels" / "report.md").read_text()
    assert "- test answers: positive 4, negative 2; always answering 'positive' scores 0.667" in report
    assert "train answers no test item has" not in report and result["train_only_labels"] == []


def test_the_report_names_train_answers_that_are_never_scored(tmp_path, tiny):
    train = write_pool(tmp_path / "extra.jsonl", TRAIN + [("so-so film", "neutral"), ("meh", "neutral")])
    result = run(tmp_path, tiny, "labels", train=train, seeds=[0])
    assert result["labels"] == ["negative", "positive"] and result["train_only_labels"] == ["neutral"]
    report = (tmp_path / "runs" / "labels" / "report.md").read_text()
    assert "- train answers no test item has (demonstrations may show them; they are never scored): neutral" in report


def test_a_tied_pick_counts_as_the_mean_of_the_tied_orders(monkeypatch):
    """It used to count as the first tied order (always the identity order, the first permutation),
    which the report then set against all orders as if the criterion had chosen it."""
    from types import SimpleNamespace

    import lab.experiments.order as order

    golds = ["a", "b", "a", "b"]
    permutations = [{"order": [0, 1], "accuracy": 1.0, "predictions": ["a", "b", "a", "b"]},
                    {"order": [1, 0], "accuracy": 0.5, "predictions": ["a", "a", "a", "a"]}]
    monkeypatch.setattr(order, "probe_inputs", lambda *args: ["a probe"])
    monkeypatch.setattr(order, "rank_orders", lambda *args: {
        "globale": [0.0, 0.0], "locale": [0.0, 1.0], "globale_orders": [[0, 1], [1, 0]], "locale_orders": [[1, 0]]})
    context = SimpleNamespace(predictor=None, config=SimpleNamespace(probe_size=1))
    lu = order._lu_remedy(context, ["d0", "d1"], [(0, 1), (1, 0)], permutations, seed=0)
    assert lu["globale"] == {"order": [0, 1], "orders": [[0, 1], [1, 0]], "tied": 2, "accuracy": 0.75}
    assert lu["locale"] == {"order": [1, 0], "orders": [[1, 0]], "tied": 1, "accuracy": 0.5}
    result = {"sets": [{"seed": 0, "demos": [{}, {}], "permutations": permutations, "lu": lu}]}
    gains = {row["name"]: row["difference"] for row in order.uncertainty(result, golds)["comparisons"]}
    assert gains == {"set 0: GlobalE pick - all orders": pytest.approx(0.0, abs=1e-12),
                     "set 0: LocalE pick - all orders": pytest.approx(-0.25)}


def test_a_criterion_that_ties_every_order_gains_nothing_over_them(tmp_path, tiny, monkeypatch):
    """Every order scores the same on the probes: the pick is their mean, the permutation mean, and
    the report says why."""
    import lab.experiments.order

    real = lab.experiments.order.rank_orders

    def flat(predictor, demos, orders, probes):
        ranking = real(predictor, demos, orders, probes)
        return {**ranking, "globale": [0.0] * len(orders), "globale_orders": [list(order) for order in orders]}

    monkeypatch.setattr(lab.experiments.order, "rank_orders", flat)
    result = run(tmp_path, tiny, "order", k=3, permutations=6, seeds=[0])
    entry = result["sets"][0]
    pick = entry["lu"]["globale"]
    assert pick["tied"] == 6 and sorted(map(tuple, pick["orders"])) == sorted(tuple(p["order"]) for p in
                                                                              entry["permutations"])
    assert pick["accuracy"] == pytest.approx(entry["lu"]["permutation_mean"]) == pytest.approx(entry["mean"])
    gain = next(row for row in result["uncertainty"]["comparisons"] if row["name"] == "set 0: GlobalE pick - all orders")
    assert gain["difference"] == pytest.approx(0, abs=1e-12) and gain["p"] == 1.0
    report = (tmp_path / "runs" / "order" / "report.md").read_text()
    assert "(mean of 6 tied)" in report and "so it cannot choose among them" in report


def test_best_orders_are_every_order_of_the_top_score():
    from lab.entropy import _best

    assert _best([0.1, 0.5, 0.2]) == [1]
    assert _best([0.0, 0.3, 0.3, 0.1, 0.3]) == [1, 2, 4]


def test_order_plot_marks_keep_one_colour_per_criterion(tmp_path, monkeypatch):
    """The legend labels the first box's marks; every other box's marks must use the same colours."""
    import lab.plots

    captured = {}
    monkeypatch.setattr(lab.plots, "_save", lambda plt, fig, ax, path, title, ylabel: captured.update(ax=ax))
    marks = {f"set {i}": {"GlobalE": 0.5, "LocalE": 0.4} for i in range(3)}
    lab.plots.box({name: [0.3, 0.6] for name in marks}, tmp_path / "p.png", "t", marks=marks)
    points = captured["ax"].collections  # one scatter per mark, box by box: GlobalE, LocalE, GlobalE, ...
    assert len(points) == 6
    colours = [tuple(point.get_facecolor()[0]) for point in points]
    assert len(set(colours[0::2])) == 1 and len(set(colours[1::2])) == 1  # the same colour in every box
    assert colours[0] != colours[1]
    legend = captured["ax"].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["GlobalE", "LocalE"]
    assert [tuple(handle.get_facecolor()[0]) for handle in legend.legend_handles] == colours[:2]


def test_finetune_trains_from_a_csv_pool(tmp_path):
    from tiny import save_tiny

    model = save_tiny(tmp_path / "model")
    csv = tmp_path / "train.csv"
    csv.write_text("input,output\n" + "".join(f"{text},{label}\n" for text, label in TRAIN))
    test = write_pool(tmp_path / "test.jsonl", TEST)
    folder = run_experiment("finetune", LabConfig(train=str(csv), test=test, model=model, k=2, embedder="hash",
                                                  train_steps=2, out=str(tmp_path / "run")))
    rows = [json.loads(line) for line in (folder / "train_pool.jsonl").read_text().splitlines()]
    assert rows == [{"input": text, "output": label} for text, label in TRAIN]
    assert (folder / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("experiment", ["order", "labels", "select", "finetune"])
def test_k_zero_is_refused_before_the_model_loads(tmp_path, no_model_load, experiment):
    with pytest.raises(LabError, match=f"the {experiment} experiment needs k >= 1 demonstrations \\(k\\), got k=0"):
        run_experiment(experiment, config(tmp_path, "x", k=0))


def test_a_folder_given_as_a_pool_is_named_as_a_folder(tmp_path, no_model_load):
    with pytest.raises(LabError, match="is a folder; give a pool file"):
        run_experiment("labels", config(tmp_path, "x", train=str(tmp_path)))


def test_random_labels_of_a_generation_task_come_from_the_pool_not_the_test_answers(tmp_path, tiny, monkeypatch):
    import lab.experiments.labels

    shown = []
    real = lab.experiments.labels.Demo
    monkeypatch.setattr(lab.experiments.labels, "Demo", lambda text, output: shown.append(output) or real(text, output))
    train = write_pool(tmp_path / "qa.jsonl", [(f"question {i}", f"pool answer {i}") for i in range(6)])
    test = write_pool(tmp_path / "qa-test.jsonl", [(f"query {i}", f"test answer {i}") for i in range(3)])
    run_experiment("labels", config(tmp_path, "gen", train=train, test=test, task="generate", k=2, max_new_tokens=2),
                   loaded=tiny)
    assert shown and all(answer.startswith("pool answer") for answer in shown)


def test_finetune_report_lists_no_seeds_and_names_the_prompt_styles(tmp_path):
    from tiny import save_tiny

    folder = run_experiment("finetune", config(tmp_path, "ft", model=save_tiny(tmp_path / "model"), train_steps=1))
    report = (folder / "report.md").read_text()
    assert "seeds=" not in report and "k=2, train_steps=1, style=plain" in report
    assert "both adapter conditions use the chat style they were trained in" in report


def test_finetune_report_names_the_rows_too_long_to_train_on(tmp_path):
    """The trainer leaves out a row with no answer within its window; the report counted it as trained on."""
    from lab.experiments.finetune import TRAIN_MAX_LENGTH
    from tiny import save_tiny

    long_row = ("an endless review " * 20, "positive")  # past TRAIN_MAX_LENGTH byte-level tokens before its answer
    assert len(long_row[0]) > TRAIN_MAX_LENGTH
    train = write_pool(tmp_path / "long.jsonl", TRAIN + [long_row])
    folder = run_experiment("finetune", config(tmp_path, "ft", model=save_tiny(tmp_path / "model"), train=train,
                                               train_steps=1))
    result = json.loads((folder / "result.json").read_text())
    assert [(t["train_size"], t["examples"]) for t in result["trainings"]] == [(len(TRAIN) + 1, len(TRAIN))]
    assert f"Not trained on (of {len(TRAIN) + 1} rows, 1): no answer token was left within the trainer's " \
           f"{TRAIN_MAX_LENGTH} tokens" in (folder / "report.md").read_text()


@pytest.mark.parametrize("experiment", ["shots", "labels", "select", "order"])
def test_result_json_holds_each_items_prediction_behind_every_accuracy(tmp_path, tiny, experiment):
    result = run(tmp_path, tiny, experiment, permutations=2)
    gold = [item["output"] for item in result["test"]]
    assert len(gold) == result["n_test"] == len(TEST)
    rows = result["permutations"] if experiment == "order" else result["results"]
    assert rows
    for row in rows:
        assert len(row["predictions"]) == len(gold)
        assert row["accuracy"] == pytest.approx(sum(p == g for p, g in zip(row["predictions"], gold)) / len(gold))
    if experiment == "labels":  # and the demonstrations each condition showed, with the labels it showed
        random_rows = [row for row in rows if row["condition"] == "random"]
        gold_rows = [row for row in rows if row["condition"] == "gold"]
        for shown_random, shown_gold, row in zip(random_rows, gold_rows, random_rows):
            changed = sum(a["output"] != b["output"] for a, b in zip(shown_random["shown"], shown_gold["shown"]))
            assert changed == row["wrong_labels"]


def test_command_line_errors_name_the_flag_and_its_defaults_are_the_configs(tmp_path, capsys, no_model_load):
    from lab.__main__ import build_parser, config_from_args, main

    def cli(*flags) -> str:
        assert main(build_parser().parse_args(["shots", "--train", "a", "--test", "b", *flags])) == 2
        return capsys.readouterr().err.strip()

    assert cli("--n-test", "0") == "error: --n-test must be a whole number >= 1, got 0"
    assert cli("--seeds", "1", "-2") == "error: --seeds must be a whole number >= 0, got -2"
    assert cli("--diversity", "2") == "error: --diversity must be between 0 and 1, got 2.0"
    assert cli("--max-new-tokens", "0").startswith("error: --max-new-tokens must be")
    with pytest.raises(LabError, match="^n_test must be"):  # in-process callers (the UI) get the field name
        LabConfig(train="a", test="b", n_test=0)
    parsed = config_from_args(build_parser().parse_args(["shots", "--train", "a", "--test", "b"]))
    assert parsed == LabConfig(train="a", test="b")


@pytest.mark.parametrize("path, name, shown", [
    ("../shared/data/sst2/train.jsonl", "sst2", "../shared/data/sst2/train.jsonl"),  # as typed
    ("retrieval/pools/sentiment.jsonl", "sentiment", "retrieval/pools/sentiment.jsonl"),
    ("/tmp/gradio/a1b2c3/my reviews.csv", "my reviews", "my reviews.csv"),  # an upload: its folder means nothing
    ("/tmp/gradio/a1b2c3/train.jsonl", "train", "train.jsonl"),  # not named after the upload's random folder
    ("TEST.JSONL", "TEST", "TEST.JSONL"),  # a split name with no folder to name it by
    ("/srv/data/sst2/test.jsonl", "sst2", "/srv/data/sst2/test.jsonl"),  # typed whole: not an upload
])
def test_reports_name_the_data_and_show_paths_a_reader_can_use(path, name, shown, monkeypatch, tmp_path):
    from lab.runner import data_name, shown_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADIO_TEMP_DIR", "/tmp/gradio")  # where the page's uploads land
    assert data_name(path) == name and shown_path(path) == shown
