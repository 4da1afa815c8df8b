"""The paper's baselines, each an agent on the interfaces of :mod:`trmrl.agents` (registered
in ``trmrl/agents/__init__.py``, defaults in ``trmrl/configs/<name>.yaml``)."""
