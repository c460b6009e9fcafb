"""edgetune ota: the rollout server, the operator's commands, and the device client."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgetune.cli._common import echo_json, json_option

__all__ = ["ota"]

_file = click.Path(exists=True, dir_okay=False, path_type=Path)
_DEFAULT_SERVER = "http://127.0.0.1:8765"


def _operator_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
                           default=lambda: os.environ.get("EDGETUNE_OTA_TOKEN_FILE",
                                                          "ota-operator.token"),
                           show_default="ota-operator.token",
                           help="Operator token (written by the server on first start).")(command)
    return click.option("--server", default=lambda: os.environ.get("EDGETUNE_OTA_SERVER",
                                                                   _DEFAULT_SERVER),
                        show_default=_DEFAULT_SERVER, help="Rollout server URL.")(command)


def _operator(server: str, token_file: Path) -> Any:
    from edgetune.bundle.ota.auth import read_token
    from edgetune.bundle.ota.http import Http

    return Http(server, read_token(token_file))


@click.group()
def ota() -> None:
    """Staged over-the-air rollouts with canary comparison and automatic rollback."""


@ota.command()
@click.option("--db", "db_url", default="sqlite:///ota.db", show_default=True,
              help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB.")
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), default="ota-store",
              show_default=True, help="Folder for bundles and deltas.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              default="ota-operator.token", show_default=True,
              help="Operator token; created (owner-only) if missing.")
@click.option("--key", "keys", multiple=True, type=_file,
              help="Require uploads to be signed by this NAME.pub (repeatable).")
@click.option("--tick", type=float, default=1.0, show_default=True,
              help="Seconds between rollout evaluations.")
@click.option("--max-upload-mb", type=int, default=2048, show_default=True)
def server(db_url: str, port: int, host: str, store: Path, token_file: Path,
           keys: tuple[Path, ...], tick: float, max_upload_mb: int) -> None:
    """Run the rollout server (blocks; state survives a crash and the rollout resumes)."""
    from edgetune.bundle.ota.server import ServerConfig, serve

    config = ServerConfig(db_url=db_url, store=store, token_file=token_file, keys=keys,
                          host=host, port=port, tick_s=tick, max_upload_mb=max_upload_mb)
    click.echo(f"rollout server on http://{host}:{port} (operator token in {token_file})",
               err=True)
    serve(config)


@ota.command()
@click.argument("device_ids", nargs=-1, required=True)
@click.option("--tier", default="any", show_default=True)
@_operator_options
@json_option
def register(device_ids: tuple[str, ...], tier: str, server: str, token_file: Path,
             as_json: bool) -> None:
    """Register devices; prints each one's one-time enrollment code."""
    from edgetune.bundle.ota import operator

    codes = operator.register(_operator(server, token_file), device_ids, tier)
    if as_json:
        echo_json(codes)
        return
    for device_id, code in codes.items():
        click.echo(f"{device_id} {code}")


@ota.command()
@click.argument("bundle", type=_file)
@click.option("--stages", default="1,10,100", show_default=True,
              help="Percent of the fleet updated at each stage.")
@click.option("--soak", type=float, default=0.0, show_default=True,
              help="Seconds each stage runs before it may advance.")
@click.option("--stage-timeout", type=float, default=3600.0, show_default=True)
@click.option("--min-control", type=int, default=5, show_default=True)
@click.option("--max-latency-ratio", type=float, default=1.5, show_default=True)
@click.option("--max-error-increase", type=float, default=0.05, show_default=True)
@click.option("--max-failure-rate", type=float, default=0.0, show_default=True)
@_operator_options
@json_option
def release(bundle: Path, stages: str, soak: float, stage_timeout: float, min_control: int,
            max_latency_ratio: float, max_error_increase: float, max_failure_rate: float,
            server: str, token_file: Path, as_json: bool) -> None:
    """Upload BUNDLE and start its staged rollout."""
    from edgetune.bundle.ota import operator
    from edgetune.bundle.ota.rollout import RolloutPolicy, parse_stages

    plan = parse_stages(stages)
    policy = RolloutPolicy(soak_s=soak, stage_timeout_s=stage_timeout, min_control=min_control,
                           max_latency_ratio=max_latency_ratio,
                           max_error_increase=max_error_increase,
                           max_failure_rate=max_failure_rate).validate()
    status = operator.release(_operator(server, token_file), bundle, plan, policy.to_dict())
    if as_json:
        echo_json(status)
        return
    click.echo(f"rollout {status['id']} of {status['version']} started: stages {status['stages']}"
               f", {status['canaries']} canaries and {status['controls']} controls in stage 1")


@ota.command()
@click.argument("rollout_id", type=int, required=False)
@_operator_options
@json_option
def status(rollout_id: int | None, server: str, token_file: Path, as_json: bool) -> None:
    """The fleet's versions and a rollout's stage and decisions (default: the latest)."""
    from edgetune.bundle.ota import operator

    http = _operator(server, token_file)
    data = operator.fleet_summary(http)
    if rollout_id is not None:
        data["latest_rollout"] = operator.rollout(http, rollout_id)
    if as_json:
        echo_json(data)
        return
    click.echo(f"fleet version {data['fleet_version']}; {data['enrolled']} of "
               f"{data['registered']} devices enrolled; versions {data['versions']}")
    roll = data.get("latest_rollout")
    if roll:
        click.echo(f"rollout {roll['id']} ({roll['version']}): {roll['state']}, stage "
                   f"{roll['stage'] + 1} of {len(roll['stages'])}"
                   + (f", {roll['reason']}" if roll.get("reason") else ""))
        for d in roll["decisions"]:
            click.echo(f"  stage {d['stage'] + 1}: {d['action']} ({d['reason']})")


@ota.command()
@click.argument("rollout_id", type=int)
@click.option("--reason", default="operator request", show_default=True)
@_operator_options
@json_option
def halt(rollout_id: int, reason: str, server: str, token_file: Path, as_json: bool) -> None:
    """Halt a rollout: every updated device goes back to the previous version."""
    from edgetune.bundle.ota import operator

    data = operator.halt(_operator(server, token_file), rollout_id, reason)
    if as_json:
        echo_json(data)
        return
    click.echo(f"rollout {rollout_id} halted; updated devices revert to the previous version")


@ota.command()
@click.option("--server", required=True, help="Rollout server URL.")
@click.option("--device-id", required=True)
@click.option("--dir", "folder", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The device's model folder (slots, state, credentials).")
@click.option("--key", "keys", required=True, multiple=True, type=_file,
              help="Trusted public key NAME.pub (repeatable).")
@click.option("--enroll-code", help="One-time code from 'edgetune ota register' (first run).")
@click.option("--bootstrap", type=_file, help="Factory bundle installed if no model is there.")
@click.option("--probe", type=_file, help=".npz the health check and metrics run on.")
@click.option("--tier", default="any", show_default=True)
@click.option("--interval", type=float, default=30.0, show_default=True,
              help="Seconds between polls.")
@click.option("--once", is_flag=True, help="Poll once and exit.")
@json_option
def client(server: str, device_id: str, folder: Path, keys: tuple[Path, ...],
           enroll_code: str | None, bootstrap: Path | None, probe: Path | None, tier: str,
           interval: float, once: bool, as_json: bool) -> None:
    """Run a device: poll, download, verify, install A/B, health-check, report."""
    from edgetune.bundle.ota.client import ClientConfig, DeviceClient
    from edgetune.bundle.ota.health import load_probe

    config = ClientConfig(server=server, device_id=device_id, dir=folder, keys=keys, tier=tier,
                          poll_interval_s=interval)
    device = DeviceClient(config, probe=load_probe(probe) if probe else None)
    if not device.enrolled:
        if not enroll_code:
            raise click.UsageError("this device is not enrolled yet; pass --enroll-code")
        device.enroll(enroll_code)
    if bootstrap:
        device.bootstrap(bootstrap)
    device.recover()
    if once:
        outcome = device.poll_once()
        if as_json:
            echo_json({"outcome": outcome, **device.active()})
        else:
            click.echo(f"{outcome}: {device.active()}")
        return
    try:
        device.run()
    except KeyboardInterrupt:
        click.echo(f"stopped; active model {device.active()}", err=True)
