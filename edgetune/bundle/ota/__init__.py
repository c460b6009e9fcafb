"""Over-the-air rollouts: a server that stages releases with canary comparison and automatic
rollback, and a device client that installs them A/B and survives a power cut at any moment.

    edgetune ota server --db sqlite:///ota.db --port 8765
    edgetune ota release model.etb --stages 1,10,100
    edgetune ota client --server http://127.0.0.1:8765 --device-id cam-17 --dir /var/lib/model

Modules: ``rollout`` (the stage policy, pure), ``fleet`` (server logic over the database),
``db`` and ``store`` (state and files), ``auth`` (credentials), ``server`` (HTTP),
``client``, ``slots`` and ``health`` (the device), ``http`` and ``operator`` (callers),
``faults`` (a download-cutting proxy for tests).
"""

from __future__ import annotations

from edgetune.core.lazy import lazy_getattr

__all__ = ["ClientConfig", "DeviceClient", "RolloutPolicy", "ServerConfig"]

_LAZY = {
    "ClientConfig": "edgetune.bundle.ota.client",
    "DeviceClient": "edgetune.bundle.ota.client",
    "RolloutPolicy": "edgetune.bundle.ota.rollout",
    "ServerConfig": "edgetune.bundle.ota.server",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
