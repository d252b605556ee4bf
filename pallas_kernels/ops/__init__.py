"""One sub-package per op, all of one shape (the convention; ``pallas_kernels/NOTES.md`` has it too):

* ``reference.py`` — the plain-jnp reference that defines the semantics (``<op>_ref``) and the
  small helpers it needs; it doubles as the ``xla``/``reference`` backend;
* one file per kernel backend, named after it (``triton.py``: Pallas-Triton with a CPU
  ``interpret=True`` twin; ``mosaic.py``: Mosaic GPU, Hopper only; ``xla.py`` only where the XLA
  path is not the reference); entry points ``<backend>_<op>``; no dispatch logic;
* ``__init__.py`` — the public dispatch function(s) choosing the backend (``backend="auto"``,
  fallbacks logged once) and ``__all__``; no kernel code;
* optionally ``configs.json`` (shape-keyed tilings) and data-format helpers (``packing.py``).
"""
