"""Gradio tabs of the web app, one module each. They wire components to the service and hold no
model, prompt or index logic."""
