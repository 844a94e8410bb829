"""The web channel: customer contact form, ticket status page, and the JSON API.

`build_app(config, sink, ticket_view)` returns the FastAPI app; the wiring (paidan/web.py) adds
health and metrics endpoints. Imports only `models` of ours.
"""

from connectors.webform.app import build_app
from connectors.webform.config import WebFormConfig

__all__ = ["WebFormConfig", "build_app"]
