"""Evaluation: fidelity of a quantized model to its float twin (``fidelity``) and sample quality on
the project's trained models (``quality``, ``features``)."""
