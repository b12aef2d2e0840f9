"""Run recipes: one Python file per (model, dataset) with a ``get_config()`` (see :mod:`train.config`)."""
