"""An OpenAI-compatible HTTP server for registered models (`llmpipe serve-model`).

In: a model URI (`models:/NAME@champion`, `models:/NAME/3` or a model folder) and a tracking URI.
Out: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (with server-sent
events for `stream: true`), `/healthz`, `POST /admin/reload` and a try-it page at `/`.

  models.py      the served models; an alias is followed to the version it names
  generation.py  sampling with stop strings and streamed text deltas (GPT.generate underneath)
  protocol.py    the OpenAI request bodies, the chat template, OpenAI-shaped errors
  admission.py   a bounded queue in front of the generation threads (429 when full)
  app.py         the FastAPI application and `run_server`
  page.py        the try-it page (page.html) and its presets
"""
