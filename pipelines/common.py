"""What every batch job shares: its options, the config, the output root and the Ray cluster.

A job runs the same stage functions as ``adaptor run`` (:mod:`adaptor.run`), so a job and
the local command write the same files. Inside ``ray job submit`` the job joins the
cluster it was submitted to (Ray sets ``RAY_ADDRESS`` for it); run by hand it joins
``--address`` or starts a local Ray. Everything that can be checked is checked before
any stage starts: the config, the cluster address, the output root and the source.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import Field

from adaptor.config import Options, RunConfig, load_config
from adaptor.config.cli import model_options
from adaptor.errors import AdaptorError, friendly_errors

CONFIGS = Path(__file__).parent / "configs"


class JobOptions(Options):
    """What every batch job takes on its command line (the rest is in the config)."""

    config: Path = Field(
        description="YAML run config (pipelines/configs/default.yaml: the embedded default flow)"
    )
    out: Path = Field(
        Path("data_shards"),
        description="output root, on storage every Ray node sees at the same path; absolute "
        "inside a Ray job (its working directory is a temporary copy)",
    )
    progress: bool = Field(True, description="show progress bars")


class ClusterJobOptions(JobOptions):
    """A job that runs on Ray, and where."""

    address: str | None = Field(
        None,
        description="HOST:PORT of a running Ray head; default: the config's pretrain.address, "
        "else the cluster a `ray job submit` job runs on, else a local Ray",
    )


class JobError(AdaptorError, ValueError):
    """A batch job that cannot start: the message names the option or path at fault."""


@dataclass
class Job:
    """One job's validated inputs: the config (with the cluster address filled in) and OUT."""

    cfg: RunConfig
    out: Path
    address: str | None

    def connect(self) -> None:
        """Join the job's Ray cluster (or start a local Ray); a bad address fails here."""
        from adaptor.ray_env import start_ray

        start_ray(self.address)


def open_job(options: JobOptions, *, after: Literal["embed", "pretrain"] | None = None) -> Job:
    """Load the config, check OUT and the job's inputs: the config's source and encoders, or
    what the job ``after`` names left under OUT for the same config (``embed``: the shards;
    ``pretrain``: the shards and the Adaptor). Nothing is written but OUT itself, and Ray is
    not started: every check fails before any work."""
    cfg = load_config(options.config)
    out = output_root(options.out)
    if after is None:
        _check_source(cfg)
        _check_encoders(cfg)
    else:
        _require_shards(cfg, out)
    if after == "pretrain":
        _require_adaptor(cfg, out)
    given = options.address if isinstance(options, ClusterJobOptions) else None
    address = given or cfg.pretrain.address or os.environ.get("RAY_ADDRESS") or None
    cfg = cfg.model_copy(
        update={
            "pretrain": cfg.pretrain.model_copy(update={"address": address}),
            "finetune": cfg.finetune.model_copy(update={"address": address}),
        }
    )
    return Job(cfg=cfg, out=out, address=address)


def _check_source(cfg: RunConfig) -> None:
    """Open the config's source (when it names one), so a missing one fails before any work."""
    if cfg.source is not None:
        from adaptor.data.sources import open_source

        open_source(cfg.source)


def _check_encoders(cfg: RunConfig) -> None:
    """Build the config's encoders once on CPU, so an unknown name fails before any work."""
    from adaptor.encoders import build_image_encoder, build_text_encoder

    build_image_encoder(cfg.embed.image_encoder)
    build_text_encoder(cfg.embed.text_encoder)


def _require_shards(cfg: RunConfig, out: Path) -> Path:
    """The shard folder of ``cfg`` under ``out``; raise JobError if the embed job has not run."""
    from adaptor.run import flow_paths
    from adaptor.shards.manifest import Manifest

    shards = flow_paths(cfg, out).shards
    if not Manifest.exists(shards) or not Manifest.load(shards).complete:
        raise JobError(
            f"no finished embedding shards in {shards}; run `python -m pipelines.embed` "
            "with the same --config and --out first"
        )
    return shards


def _require_adaptor(cfg: RunConfig, out: Path) -> Path:
    """The trained Adaptor of ``cfg`` under ``out``; raise JobError if pretraining has not run."""
    from adaptor.run import flow_paths

    adaptor = flow_paths(cfg, out).adaptor
    if not (adaptor / "config.json").is_file():
        raise JobError(
            f"no trained Adaptor in {adaptor}; run `python -m pipelines.pretrain` with the same "
            "--config and --out first"
        )
    return adaptor


def job_app(main: Callable[..., Any]) -> typer.Typer:
    """A one-command CLI around ``main``, its config-model parameters made options
    (:mod:`adaptor.config.cli`); expected failures print ``error: …`` and exit 2."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(friendly_errors(model_options(main)))
    return app


def run_job(main: Callable[..., Any]) -> None:
    """Run ``main`` as the job's command line (``python -m pipelines.<job> …``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    job_app(main)()


def output_root(out: Path) -> Path:
    from adaptor.embed.actors import check_writable

    in_ray_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # set by Ray for a job's driver
    if in_ray_job and not out.is_absolute():
        raise JobError(
            f"--out {out} is relative, but a Ray job runs in a temporary copy of the working "
            "directory; give an absolute path on storage every node sees (e.g. /data_shards)"
        )
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise JobError(f"--out {out} exists and is not a folder")
    check_writable(out)
    return out
