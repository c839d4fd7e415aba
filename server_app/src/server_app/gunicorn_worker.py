"""Changes to gunicorn's workers, applied by ``gunicorn_conf`` in each worker.

Importing this module changes nothing, so tests can import it without the
side effects of ``gunicorn_conf``.
"""

from __future__ import annotations

from typing import Any


def resolve_settings_once(config: Any) -> None:
    """Make each setting of gunicorn's ``config`` an attribute of the object.

    gunicorn's Config looks up every setting in ``__getattr__``, which took
    about 0.45 us here, and a gevent worker of gunicorn 27 reads 21 settings
    per request. A worker's settings do not change: a reload forks new
    workers from the master, whose own Config keeps its lookups. Settings
    that Config computes in a property, such as ``address``, stay computed.
    """
    for name, setting in config.settings.items():
        # Config.__setattr__ rejects setting names, so the values go into
        # the instance dictionary, where attribute lookup finds them first.
        vars(config)[name] = setting.get()
