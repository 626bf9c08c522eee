"""One module per experiment, each with `run(ctx) -> dict`, `table(result) -> str` (markdown) and
`plot(result, path)`; `lab.runner` writes their output to a result folder."""
