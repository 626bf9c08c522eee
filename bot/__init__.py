"""The chat bot: models, prompts and generation. The UI (app.py) is a thin shell over it."""
