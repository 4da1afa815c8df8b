"""The paper's baselines, each an agent on the interfaces of :mod:`trmrl.agents` (registered
by the entry points ``trmrl.agents`` in pyproject.toml, defaults in
``trmrl/configs/<name>.yaml``)."""
