"""Run recipes: one Python file per (model, dataset) whose get_config() returns an ml_collections.ConfigDict (see jaxdepth.train.config)."""
