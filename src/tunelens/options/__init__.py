"""The command line's building blocks: the typer apps and options made from config models.

Below the experiments and the commands (both register commands with them), above
the spec and the models whose fields the options come from. One mechanism turns
a pydantic model's fields into options (:mod:`~tunelens.options.config_options`);
the options that mirror no config are defined once (:mod:`~tunelens.options.common`).
"""
