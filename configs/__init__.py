"""The default YAML configs, shipped inside the package as ``gimefive.configs``.

A package (not a plain folder) so that :func:`gimefive.config.config_path` finds them
through ``importlib.resources`` wherever gimefive is installed, from a wheel included.
"""
