"""The one answer pipeline: prompt (prompt.py), decode (decode.py), modes (modes.py), route -> activate/merge ->
prompt -> decode over a bank or a prepared model (pipeline.py), and the bank's warm session (session.py)."""
