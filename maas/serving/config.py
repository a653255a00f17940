"""Every serving setting, with its default, declared once: the application's ``args``
(:class:`AppArgs`), the ModelServer deployment's options (:class:`ModelServerOptions`: replicas,
autoscaling, CPUs) and its ``user_config`` (:class:`BatchConfig`).

The ``@serve.deployment`` decorator of ``ModelServer``, ``maas deploy`` and the committed
``deployments/serve_config.yaml`` all take their values from here (the YAML is generated from these
models by :mod:`maas.serving.serve_config`, and a test fails when it drifts), so that changing a
default is one edit. Each field's description is the comment above it in that YAML.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, NonNegativeInt, PositiveFloat, PositiveInt

from maas import settings
from maas.drift import DriftPolicy
from maas.serving.canary import CanaryPolicy
from maas.serving.capture import CapturePolicy
from maas.serving.protocol.explain import ExplainPolicy
from maas.serving.protocol.limits import RequestLimits
from maas.serving.shadow import ShadowPolicy

DEPLOYMENT_NAME = "ModelServer"


class AppArgs(BaseModel):
    """Arguments of :func:`maas.serving.app.build_app` (the ``args:`` block of a Serve config)."""

    model_config = {"extra": "forbid"}

    registry: str | None = Field(
        default=None, description="Registry URI (s3://bucket/registry, or a folder); null: $MAAS_HOME/registry "
                                  "(~/.maas/registry).")
    registry_refresh_s: PositiveFloat = Field(
        default=2.0, description="How long version, label and key look-ups are cached.")
    stale_while_unreachable_s: float = Field(
        default=120.0, ge=0, description="While the registry's storage is unreachable, what was last read of it "
                                         "is served this much longer (loaded versions keep answering); then 503.")
    request_timeout_s: PositiveFloat = Field(
        default=10.0, description="A prediction not answered by then gets HTTP 504, whatever the client's "
                                  "x-request-timeout-seconds.")
    max_models_per_replica: PositiveInt = Field(
        default=4, description="Model versions each ModelServer replica keeps loaded (LRU); a change restarts "
                               "the replicas.")
    max_buffered_bytes: PositiveInt = Field(
        default=256 * 1024 * 1024, description="Request bodies one replica holds at once; beyond, 503 + "
                                               "Retry-After.")
    limits: RequestLimits = Field(default_factory=RequestLimits,
                                  description="Per request; past each bound, a 4xx that names it.")
    explain: ExplainPolicy = Field(default_factory=ExplainPolicy,
                                   description="POST ...:explain: integrated gradients, bounded per request and "
                                               "per replica.")
    drift: DriftPolicy = Field(default_factory=DriftPolicy,
                               description="Served inputs against each version's training split, per feature "
                                           "(GET /maas/v1/status, maas_feature_drift).")
    capture: CapturePolicy = Field(
        default_factory=CapturePolicy, description="Request capture, off by default: a share of each listed model's "
                                                   "predictions written as Parquet under <registry>/_captures/.")
    shadow: ShadowPolicy = Field(default_factory=ShadowPolicy,
                                 description="Routed requests' shadow share (maas models label NAME shadow V "
                                             "--weight W), predicted after the answer and only compared.")
    canary: CanaryPolicy = Field(default_factory=CanaryPolicy,
                                 description="Routed traffic's canary share is retired when it breaches a bound.")
    auth: bool = Field(default=True, description="Require an API key (maas keys create) on every route but "
                                                 "health, server metadata and /openapi.json.")
    key_secret_file: str | None = Field(
        default=None, description="File holding the secret that signs API key records; null: derived from the "
                                  "Ray cluster's auth token. Never inside the registry's storage.")

    def registry_uri(self) -> str:
        return self.registry or settings.default_registry_uri()


class BatchConfig(BaseModel):
    """``user_config`` of the ModelServer deployment: changeable without restarting replicas."""

    max_batch_size: PositiveInt = Field(default=32, description="Most instances combined into one forward pass.")
    batch_wait_timeout_s: float = Field(
        default=0.0, ge=0, description="Longest wait for a batch to fill (0: a pass takes what arrived while the "
                                       "last one ran).")
    max_pending_predictions: PositiveInt = Field(
        default=512, description="Predictions waiting or running in one replica; beyond it requests get 503 + "
                                 "Retry-After.")


class Autoscaling(BaseModel):
    """The ModelServer's ``autoscaling_config`` (Serve's own fields; the fields not named here keep Serve's
    defaults)."""

    model_config = {"extra": "forbid"}

    min_replicas: NonNegativeInt = Field(
        default=2, description="One replica lost (killed, node gone): the other answers meanwhile.")
    max_replicas: PositiveInt = Field(default=4, description="4 x 0.5 CPU: all of a 2-core machine at peak.")
    target_ongoing_requests: PositiveFloat = Field(
        default=8.0, description="Requests in flight per replica that autoscaling aims at.")
    upscale_delay_s: PositiveFloat = Field(default=5.0, description="Load above target this long adds replicas.")
    downscale_delay_s: PositiveFloat = Field(
        default=30.0, description="Load below target this long removes replicas.")


class ActorOptions(BaseModel):
    """The ModelServer's ``ray_actor_options``: what one replica reserves on its node (Ray's own
    fields, those not named here keep Ray's defaults)."""

    model_config = {"extra": "forbid"}

    num_cpus: PositiveFloat = Field(default=0.5, description="CPUs per replica.")


class ModelServerOptions(BaseModel):
    """Options of the ModelServer deployment, as ``@serve.deployment`` and a Serve config's
    ``deployments:`` entry take them."""

    model_config = {"extra": "forbid"}

    max_ongoing_requests: PositiveInt = Field(
        default=2048, description="Per replica: connections being read, batched and answered (slow clients "
                                  "must not starve the others; the work is bounded by the limits).")
    health_check_period_s: PositiveFloat = Field(
        default=10.0, description="How often Serve checks each replica's health.")
    autoscaling_config: Autoscaling = Field(default_factory=Autoscaling,
                                            description="Serve adds and removes replicas within these bounds.")
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions, description="What one replica reserves.")


MODEL_SERVER = ModelServerOptions()
