"""`soul`, the command-line client of the Soul service: asks the `api` function for images and selfies and
follows their tasks over HTTP with the Python client (`soul_client`, clients/python), and tails events and replays dead-lettered jobs on Pub/Sub
(`bus.py`, `dead_letters.py`). The typer app in `main.py` wires them; `python -m soul_cli` runs it."""

__version__ = "0.1.0"
