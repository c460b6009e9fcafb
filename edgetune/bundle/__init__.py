"""Ship models safely: signed, versioned bundles, tensor-level deltas, and staged rollouts.

    from edgetune.bundle import BundleConfig, create_bundle, verify_bundle, load_private_key
    b = create_bundle("model.onnx", BundleConfig(version="1.2.0"),
                      key=load_private_key("fleet.key"), output="model.etb")
    verify_bundle("model.etb", keys=[load_public_key("fleet.pub")])

The over-the-air rollout server and device client live in :mod:`edgetune.bundle.ota`.
Every refusal raises :class:`BundleError` whose ``reason`` (a :class:`Reason`) says why.
"""

from __future__ import annotations

from edgetune.core.lazy import lazy_getattr

__all__ = [
    "BundleConfig",
    "BundleError",
    "BundleResult",
    "DeltaResult",
    "KeyAlgorithm",
    "Limits",
    "Manifest",
    "PatchResult",
    "Reason",
    "VerifiedBundle",
    "VerifyConfig",
    "create_bundle",
    "diff_bundles",
    "load_private_key",
    "load_public_key",
    "patch_bundle",
    "unpack_bundle",
    "verify_bundle",
    "verify_dir",
    "write_keypair",
]

_LAZY = {
    "BundleConfig": "edgetune.bundle.pack",
    "BundleError": "edgetune.bundle.errors",
    "BundleResult": "edgetune.bundle.pack",
    "DeltaResult": "edgetune.bundle.delta",
    "KeyAlgorithm": "edgetune.bundle.sign",
    "Limits": "edgetune.bundle.archive",
    "Manifest": "edgetune.bundle.manifest",
    "PatchResult": "edgetune.bundle.delta",
    "Reason": "edgetune.bundle.errors",
    "VerifiedBundle": "edgetune.bundle.pack",
    "VerifyConfig": "edgetune.bundle.pack",
    "create_bundle": "edgetune.bundle.pack",
    "diff_bundles": "edgetune.bundle.delta",
    "load_private_key": "edgetune.bundle.sign",
    "load_public_key": "edgetune.bundle.sign",
    "patch_bundle": "edgetune.bundle.delta",
    "unpack_bundle": "edgetune.bundle.pack",
    "verify_bundle": "edgetune.bundle.pack",
    "verify_dir": "edgetune.bundle.pack",
    "write_keypair": "edgetune.bundle.sign",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
