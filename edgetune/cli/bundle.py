"""edgetune bundle (create, verify, diff, patch) and edgetune keygen: signed model bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetune.cli._common import echo_json, json_option

__all__ = ["bundle", "keygen"]

_path = click.Path(dir_okay=False, path_type=Path)
_existing = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.option("-o", "--output", "prefix", required=True, type=_path,
              help="Writes PREFIX.key (private, owner-only) and PREFIX.pub (public).")
@click.option("--algorithm", type=click.Choice(["ed25519", "ecdsa-p256"]), default="ed25519",
              show_default=True)
@click.option("--force", is_flag=True, help="Replace existing key files.")
@json_option
def keygen(prefix: Path, algorithm: str, force: bool, as_json: bool) -> None:
    """Write a signing key pair: NAME.key (keep it secret) and NAME.pub (give it to devices)."""
    from edgetune.bundle.sign import KeyAlgorithm, load_public_key, write_keypair

    key_path, pub_path = write_keypair(prefix, KeyAlgorithm(algorithm), overwrite=force)
    keyid = load_public_key(pub_path).keyid
    if as_json:
        echo_json({"private": key_path, "public": pub_path, "keyid": keyid})
        return
    click.echo(f"wrote {key_path} (private: keep it secret) and {pub_path} (public)")
    click.echo(f"key id {keyid}")


@click.group()
def bundle() -> None:
    """Signed, versioned model bundles and tensor-level deltas between them."""


@bundle.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--version", "version", required=True, help="Dotted integers, e.g. 1.2.0.")
@click.option("--sign", "key_path", required=True, type=_existing, help="Private key NAME.key.")
@click.option("-o", "--output", required=True, type=_path)
@click.option("--name", help="Bundle name (default: the source's name).")
@click.option("--tier", default="any", show_default=True, help="Device tier it is made for.")
@click.option("--expires-days", type=float, default=90.0, show_default=True)
@click.option("--min-onnxruntime", help="Oldest ONNX Runtime allowed (default: from the opset).")
@click.option("--report", "report_path", type=_existing, help="edgetune report.json whose "
              "metrics go into the manifest.")
@click.option("--plan", "plan_path", type=_existing, help="Precision plan JSON to record.")
@json_option
def create(source: Path, version: str, key_path: Path, output: Path, name: str | None, tier: str,
           expires_days: float, min_onnxruntime: str | None, report_path: Path | None,
           plan_path: Path | None, as_json: bool) -> None:
    """Bundle a model file or cascade folder SOURCE, signed with --sign."""
    from edgetune.bundle.pack import BundleConfig, create_bundle
    from edgetune.bundle.sign import load_private_key
    from edgetune.core.fileio import check_writable

    check_writable(output, "bundle")
    config = BundleConfig(version=version, name=name, tier=tier, expires_in_days=expires_days,
                          min_onnxruntime=min_onnxruntime, report=report_path, plan=plan_path)
    result = create_bundle(source, config, key=load_private_key(key_path), output=output)
    summary = _summary(result.manifest, result.sha256, result.size)
    if as_json:
        echo_json({"path": output, **summary})
        return
    click.echo(f"wrote {output}: {_line(summary)}")


@bundle.command()
@click.argument("path", type=_existing)
@click.option("--key", "keys", required=True, multiple=True, type=_existing,
              help="Trusted public key NAME.pub (repeatable).")
@click.option("--min-version", help="Refuse bundles older than this (the installed version).")
@click.option("--tier", help="Refuse bundles made for another device tier.")
@click.option("--check-runtime", is_flag=True, help="Refuse bundles that need a newer ONNX "
              "Runtime than the installed one.")
@json_option
def verify(path: Path, keys: tuple[Path, ...], min_version: str | None, tier: str | None,
           check_runtime: bool, as_json: bool) -> None:
    """Check a bundle's signature, expiry, version and every file's SHA-256 (exit 1 if refused)."""
    from edgetune.bundle.manifest import parse_version
    from edgetune.bundle.pack import VerifyConfig, verify_bundle
    from edgetune.bundle.sign import load_public_key

    if min_version:
        parse_version(min_version)
    config = VerifyConfig(min_version=min_version, tier=tier,
                          runtime_versions=_runtimes() if check_runtime else None)
    result = verify_bundle(path, config, keys=[load_public_key(k) for k in keys])
    summary = _summary(result.manifest, result.sha256, result.size)
    if as_json:
        echo_json({"ok": True, "path": path, **summary})
        return
    click.echo(f"OK {path}: {_line(summary)}")


def _runtimes() -> dict[str, str]:
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


@bundle.command()
@click.argument("old", type=_existing)
@click.argument("new", type=_existing)
@click.option("-o", "--output", required=True, type=_path)
@json_option
def diff(old: Path, new: Path, output: Path, as_json: bool) -> None:
    """Write a delta holding only the tensors and metadata that changed from OLD to NEW."""
    from edgetune.bundle.delta import diff_bundles
    from edgetune.core.fileio import check_writable

    check_writable(output, "delta")
    result = diff_bundles(old, new, output=output)
    if as_json:
        echo_json({"path": output, **result.stats})
        return
    s = result.stats
    click.echo(f"wrote {output}: {result.size} bytes vs {result.full_size} full "
               f"({100 * result.ratio:.1f}%); tensors changed {s['tensors_changed']} of "
               f"{s['tensors']}, added {s['tensors_added']}, removed {s['tensors_removed']}")


@bundle.command()
@click.argument("old", type=_existing)
@click.argument("delta", type=_existing)
@click.option("-o", "--output", type=_path, help="Rebuilt bundle (default: DELTA with .etb).")
@click.option("--key", "keys", multiple=True, type=_existing,
              help="Also check the rebuilt bundle's signature with this NAME.pub.")
@json_option
def patch(old: Path, delta: Path, output: Path | None, keys: tuple[Path, ...],
          as_json: bool) -> None:
    """Rebuild the new bundle from OLD and DELTA, byte-identical to the signed one."""
    from edgetune.bundle.delta import patch_bundle
    from edgetune.bundle.sign import load_public_key
    from edgetune.core.fileio import check_writable

    output = output or delta.with_suffix(".etb")
    check_writable(output, "patched bundle")
    result = patch_bundle(old, delta, output=output, keys=[load_public_key(k) for k in keys])
    summary = {"path": output, "sha256": result.sha256, "size": result.size,
               "version": result.manifest.version, "identical": True,
               "signature_checked": result.signature_checked}
    if as_json:
        echo_json(summary)
        return
    click.echo(f"wrote {output}: version {result.manifest.version}, identical to the signed "
               f"bundle (SHA-256 {result.sha256[:16]}...)")
    if not keys:
        click.echo("! signature not checked; pass --key NAME.pub to check it too", err=True)


def _summary(manifest: Any, sha256: str, size: int) -> dict[str, Any]:
    return {"name": manifest.name, "version": manifest.version, "sha256": sha256, "size": size,
            "files": len(manifest.files), "tier": manifest.tier, "expires": manifest.expires,
            "min_runtime": manifest.min_runtime, "entrypoint": manifest.entrypoint}


def _line(s: dict[str, Any]) -> str:
    return (f"{s['name']} {s['version']}, {s['files']} file(s), {s['size']} bytes, tier "
            f"{s['tier']}, expires {s['expires']}")
